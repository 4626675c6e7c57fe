"""Dependency probes of one decoder block: which output rows of its linear modules reach which input columns.

A :class:`BlockProbe` runs a float64 copy of one decoder block on one sample window and answers two questions
about the block's *computation* (never its module names):

* :meth:`BlockProbe.run` -- perturb chosen output rows of chosen linear modules (a forward hook adds a fixed
  random perturbation ``sign * delta`` to those rows), optionally clamp one module's input to its baseline
  value, and record every linear module's input and the block output; :meth:`BlockProbe.affected` then says
  which input columns of a module changed.  A finite perturbation, not a derivative: it sees every structural
  path, also through a ReLU that is off at the base point.
* :meth:`BlockProbe.reached_rows` -- the reverse question by autograd: for seeded input columns of downstream
  modules, which output rows of the upstream modules have a nonzero vector-Jacobian product (one forward with the
  upstream outputs as leaves, one backward per seed set).

:func:`relation` combines them into the exact relation "row r of upstream u reaches input column c of
downstream d" with a number of probes that does not grow with the number of rows:

1. *row bit tests* -- for each bit b of the row index, perturb the rows with bit b = 0, then those with bit b = 1
   (in every upstream module at once): a row can reach column c only if every test holding it changed c
   (``2 log2(rows)`` forwards);
2. *column bit tests* -- the same over column indices with VJPs (one forward, ``2 log2(columns)`` backwards); the
   intersection of 1 and 2 is a superset of the relation, exact for aligned head layouts;
3. *colouring* -- a greedy distance-2 colouring of that superset (Curtis-Powell-Reid: no two rows of one colour
   share a candidate column), then one ``+delta`` and one ``-delta`` probe per colour: each column sees at most
   one perturbed candidate row per probe, so the change says exactly whether that row reaches it, and
   ``f(+) + f(-) = 2 f(0)`` whether the dependency is affine (v_proj and up_proj rows are; q, k and gate rows
   are not).  Colours ~ the most rows reaching one column: ``2 head_dim + 1`` for attention, 2 for a GLU.

A column (or row) the VJPs miss entirely -- a ReLU off on every token -- falls back to the row tests' candidates.

**The base point.**  Every hooked module's output ``y`` is replaced by ``y - mean_tokens(y) + xi`` (``xi`` a fixed
Gaussian of ``y``'s scale): an affine map of each output row on its own, so it keeps every row -> column
dependency of the block and adds none, and it puts each pre-activation near zero, where a ReLU is on for about
half the tokens (a real model's dead ReLU channel would otherwise hide its coupling).  The perturbations and the
VJP are taken at that point; structurally unreachable entries are bitwise unchanged (exact zeros), so the
relative tolerance ``TOL`` only guards against kernel noise.  Fused MoE experts are switched to their eager loop
in the copy (transformers' grouped_mm has no float64 kernel).

Why hooks on module calls and not ``torch.fx`` / ``torch.export`` or the autograd graph alone: Hugging Face blocks
do not trace reliably (data-dependent MoE loops, cache objects, attention dispatch), and a traced graph names tensor
operations, not the rows of the projections it fuses (Phi-3's ``qkv_proj``, GPT-NeoX's per-head interleaving); a
probe of the real forward answers in the coordinates groups are stated in (output rows, input columns) and needs
nothing from the model code.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Iterable, Mapping, Optional, Sequence

import torch
from torch import nn

from ..errors import ModelError

TOL = 1e-10
"""Relative size (float64) above which a change of a column (or a VJP entry) counts as a dependency."""
LINEAR_TOL = 1e-6
"""Relative size of ``f(y + d) + f(y - d) - 2 f(y)`` below which a row -> column dependency counts as affine."""


def _first_tensor(value) -> Optional[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        return next((v for v in value if isinstance(v, torch.Tensor)), None)
    return None


def _to64(value, device):
    if isinstance(value, torch.Tensor):
        return value.to(device=device, dtype=torch.float64) if value.is_floating_point() else value.to(device)
    if isinstance(value, (tuple, list)):
        return type(value)(_to64(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _to64(v, device) for k, v in value.items()}
    return value


@dataclass
class Run:
    """One probe forward: ``inputs[name]`` = the module's (first-call) input, ``output`` = the block output,
    ``order`` = modules in first-call order, ``widths[name]`` = output width, ``leaves[name]`` = autograd leaves
    (VJP runs only)."""

    inputs: dict
    output: torch.Tensor
    order: list
    widths: dict
    leaves: dict


class BlockProbe:
    """A float64 copy of ``block`` with hooks on the linear modules ``names`` (relative names), run on one window
    ``(hidden, args, kwargs)``; the copy is private, the block itself is never changed.

    Attributes: ``baseline`` (the unperturbed :class:`Run`), ``called`` (modules the window reaches, in call
    order), ``out_width`` / ``in_width`` per called module, ``forwards`` / ``backwards`` (probe cost so far).
    """

    def __init__(self, block: nn.Module, hidden: torch.Tensor, args: tuple, kwargs: dict, names: Sequence[str],
                 *, device=None, seed: int = 0):
        param = next(block.parameters(), None)
        if param is not None and param.device.type == "meta":
            raise ModelError("cannot probe a block whose weights are on the meta device (offloaded). Fix: load the "
                             "block's weights (e.g. on CPU) before deriving its coupled groups.")
        device = torch.device(device or (param.device if param is not None else "cpu"))
        self.block = copy.deepcopy(block).to(device=device, dtype=torch.float64).eval()
        self.block.requires_grad_(False)
        for module in self.block.modules():  # fused MoE experts: the eager loop runs in float64 (grouped_mm does not)
            config = getattr(module, "config", None)
            if getattr(config, "_experts_implementation", None) not in (None, "eager"):
                config._experts_implementation = "eager"
        self.hidden = _to64(hidden, device)
        self.args, self.kwargs = _to64(tuple(args), device), _to64(dict(kwargs), device)
        self.names = list(names)
        self.seed = seed
        self.forwards = self.backwards = 0
        self._noise: dict = {}
        self._scale: dict[str, float] = {}
        self.baseline = self.run()
        self.called = list(self.baseline.order)
        self.in_width = {n: int(self.baseline.inputs[n].shape[-1]) for n in self.called}
        self.out_width = {n: int(self.baseline.widths[n]) for n in self.called}

    # ------------------------------------------------------------------ forwards
    def _fixed(self, name: str, kind: int, shape: torch.Size, like: torch.Tensor) -> torch.Tensor:
        key = (name, kind, tuple(shape))
        if key not in self._noise:
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.names.index(name) * 7 + kind) % (2 ** 31))
            self._noise[key] = torch.randn(tuple(shape), generator=g, dtype=torch.float64).to(like.device)
        return self._noise[key]

    def run(self, perturb: Optional[Mapping[str, tuple[torch.Tensor, float]]] = None, clamp: Optional[str] = None,
            leaves: Iterable[str] = ()) -> Run:
        """One forward: rows ``perturb[name] = (rows, sign)`` get ``+ sign * delta``; ``clamp``'s input is set to
        its baseline value (when the shape matches); ``leaves`` become autograd leaves (grad mode on)."""
        perturb, leaves = dict(perturb or {}), set(leaves)
        inputs, order, made = {}, [], {}
        widths: dict[str, int] = {}
        handles = []

        def pre_hook(name):
            def hook(module, args, kwargs):
                x = _first_tensor(args) if args else _first_tensor(list(kwargs.values()))
                if x is None or x.numel() == 0:
                    return None
                if name == clamp:
                    base = self.baseline.inputs.get(name)
                    if base is not None and base.shape == x.shape and args and args[0] is x:
                        x = base
                        args = (base, *args[1:])
                if name not in inputs:
                    inputs[name] = x if leaves else x.detach().clone()
                    order.append(name)
                return args, kwargs
            return hook

        def post_hook(name):
            def hook(module, args, out):
                if not isinstance(out, torch.Tensor) or out.numel() == 0:
                    return None
                flat = out.reshape(-1, out.shape[-1])
                centred = out - flat.mean(0)
                if name not in self._scale:
                    self._scale[name] = float(centred.std()) if centred.numel() > 1 else 1.0
                    self._scale[name] = self._scale[name] if self._scale[name] > 0 else 1.0
                s = self._scale[name]
                y = centred + s * self._fixed(name, 0, out.shape, out)
                if name in perturb:
                    rows, sign = perturb[name]
                    delta = torch.zeros_like(y)
                    delta[..., rows] = (sign * s) * self._fixed(name, 1, out.shape, out)[..., rows]
                    y = y + delta
                if name in leaves:
                    y = y.detach().requires_grad_(True)
                    made.setdefault(name, y)
                widths[name] = out.shape[-1]
                return y
            return hook

        for name in self.names:
            module = self.block.get_submodule(name)
            handles.append(module.register_forward_pre_hook(pre_hook(name), with_kwargs=True))
            handles.append(module.register_forward_hook(post_hook(name)))
        try:
            with torch.set_grad_enabled(bool(leaves)):
                out = _first_tensor(self.block(self.hidden, *self.args, **self.kwargs))
        finally:
            for h in handles:
                h.remove()
        self.forwards += 1
        return Run(inputs, out, order, widths, made)

    # ------------------------------------------------------------------ answers
    def affected(self, run: Run, name: str) -> torch.Tensor:
        """Bool (in_width,) of the input columns of ``name`` (a module the baseline calls) that differ from the
        baseline: all when the module's input changed shape or the module was not called at all -- another MoE
        routing sent its tokens elsewhere, so the perturbation reaches it (through the router)."""
        base, x = self.baseline.inputs[name], run.inputs.get(name)
        if x is None:
            return torch.ones(self.in_width[name], dtype=torch.bool)
        if x.shape != base.shape:
            return torch.ones(self.in_width[name], dtype=torch.bool)
        diff = (x.detach() - base).abs().reshape(-1, base.shape[-1]).amax(0)
        return (diff > TOL * (float(base.abs().max()) + 1e-300)).cpu()

    def output_changed(self, run: Run) -> bool:
        base = self.baseline.output
        if run.output.shape != base.shape:
            return True
        return bool((run.output.detach() - base).abs().max() > TOL * (float(base.abs().max()) + 1e-300))

    def delta(self, run: Run, name: str) -> Optional[torch.Tensor]:
        """``input(run) - input(baseline)`` of ``name`` as (tokens, in_width), or None when shapes differ."""
        base, x = self.baseline.inputs[name], run.inputs.get(name)
        if x is None or x.shape != base.shape:
            return None
        return (x.detach() - base).reshape(-1, base.shape[-1])

    def reached_rows(self, seeds: Sequence[Mapping[str, torch.Tensor]], leaves: Sequence[str]) -> list[dict]:
        """For each seed ``{downstream: bool column mask}``: ``{leaf: bool row mask}`` of the leaves' output rows
        with a nonzero VJP of the seeded columns (random weights, so no cancellation); one forward in total."""
        run = self.run(leaves=leaves)
        made = [n for n in leaves if n in run.leaves]
        seeded = {d for seed in seeds for d in seed}
        weights = {d: self._fixed(d, 2, x.shape, x) for d, x in run.inputs.items() if d in seeded}
        answers = []
        for seed in seeds:
            answer = {n: torch.zeros(self.out_width[n], dtype=torch.bool) for n in leaves}
            terms = [(run.inputs[d] * weights[d])[..., mask.to(run.inputs[d].device)].sum()
                     for d, mask in seed.items() if d in run.inputs and bool(mask.any())]
            terms = [t for t in terms if t.requires_grad]  # a downstream no leaf reaches has no VJP
            if terms and made:
                grads = torch.autograd.grad(sum(terms), [run.leaves[n] for n in made], retain_graph=True,
                                            allow_unused=True)
                self.backwards += 1
                mags = {n: g.abs().reshape(-1, g.shape[-1]).amax(0) for n, g in zip(made, grads) if g is not None}
                top = max((float(m.max()) for m in mags.values()), default=0.0)
                answer.update({n: (m > TOL * top).cpu() for n, m in mags.items() if top > 0})
            answers.append(answer)
        return answers


# ---------------------------------------------------------------------------------------------- relation
def _bits(n: int) -> int:
    return max(1, (n - 1).bit_length())


def _codes(n: int, bits: int) -> torch.Tensor:
    return ((torch.arange(n)[:, None] >> torch.arange(bits)) & 1).bool()


def _row_tests(probe: BlockProbe, pack) -> dict:
    """Rows consistent with every row bit test: ``{d: {u: bool (R, C)}}``."""
    width = probe.out_width
    bits = _bits(max(width[u] for _, ups in pack for u in ups))
    seen = {d: torch.ones(bits, 2, probe.in_width[d], dtype=torch.bool) for d, _ in pack}
    for b in range(bits):
        for x in (0, 1):
            perturb = {}
            for _, ups in pack:
                for u in ups:
                    rows = _codes(width[u], bits)[:, b].eq(bool(x)).nonzero().flatten()
                    if rows.numel():
                        perturb[u] = (rows, 1.0)
            run = probe.run(perturb)
            for d, _ in pack:
                seen[d][b, x] = probe.affected(run, d)
    out = {}
    for d, ups in pack:
        out[d] = {}
        for u in ups:
            codes = _codes(width[u], bits).long()
            m = torch.ones(width[u], probe.in_width[d], dtype=torch.bool)
            for b in range(bits):
                m &= seen[d][b][codes[:, b]]
            out[d][u] = m
    return out


def _column_tests(probe: BlockProbe, pack) -> dict:
    """Columns consistent with every column bit test (VJPs): ``{d: {u: bool (R, C)}}``."""
    bits = _bits(max(probe.in_width[d] for d, _ in pack))
    seeds = [{d: _codes(probe.in_width[d], bits)[:, b].eq(bool(x)) for d, _ in pack}
             for b in range(bits) for x in (0, 1)]
    leaves = [u for _, ups in pack for u in ups]
    answers = probe.reached_rows(seeds, leaves)
    out = {}
    for d, ups in pack:
        codes = _codes(probe.in_width[d], bits).long()
        out[d] = {}
        for u in ups:
            m = torch.ones(probe.out_width[u], probe.in_width[d], dtype=torch.bool)
            for b in range(bits):
                pair = torch.stack([answers[2 * b][u], answers[2 * b + 1][u]])  # (2, R)
                m &= pair[codes[:, b]].t()
            out[d][u] = m
    return out


def _colour(cand: torch.Tensor) -> torch.Tensor:
    """Greedy distance-2 colouring of the rows of ``cand`` (R, C): rows sharing a candidate column differ."""
    colours = torch.full((cand.shape[0],), -1, dtype=torch.long)
    used = torch.zeros(cand.shape[1], 0, dtype=torch.bool)
    for r in sorted(range(cand.shape[0]), key=lambda r: -int(cand[r].sum())):
        cols = cand[r].nonzero().flatten()
        free = (~used[cols].any(0)).nonzero().flatten() if cols.numel() else torch.arange(used.shape[1])
        k = int(free[0]) if free.numel() else used.shape[1]
        if k == used.shape[1]:
            used = torch.cat([used, torch.zeros(used.shape[0], 1, dtype=torch.bool)], 1)
        used[cols, k] = True
        colours[r] = k
    return colours


def relation(probe: BlockProbe, pack) -> dict:
    """The exact row -> column relation of a *pack* ``[(d, [u, ...]), ...]`` (downstream modules with their
    upstream modules; no ``u`` of one entry may reach another entry's ``d``): ``{d: (B, L)}`` with B, L bool
    (rows of d's upstream modules stacked in order, columns of d): B = row r reaches column c, L = and the
    dependency is affine.  From row bit tests, column bit tests (VJPs) and one +/- probe pair per colour (see the
    module docstring)."""
    rows_side, cols_side = _row_tests(probe, pack), _column_tests(probe, pack)
    found, colours, offsets = {}, {}, {}
    for d, ups in pack:
        r_cand = torch.cat([rows_side[d][u] for u in ups])
        cand = r_cand & torch.cat([cols_side[d][u] for u in ups])
        cand[:, ~cand.any(0)] |= r_cand[:, ~cand.any(0)]  # a VJP missed a whole column or row: trust the row side
        cand[~cand.any(1)] |= r_cand[~cand.any(1)]
        colours[d] = _colour(cand)
        found[d] = (cand, torch.zeros_like(cand), torch.zeros_like(cand))
        offsets[d] = [0]
        for u in ups:
            offsets[d].append(offsets[d][-1] + probe.out_width[u])
    for k in range(max(int(c.max()) + 1 if c.numel() else 0 for c in colours.values())):
        deltas = []
        for sign in (1.0, -1.0):
            perturb = {}
            for d, ups in pack:
                picked = (colours[d] == k).nonzero().flatten()
                for i, u in enumerate(ups):
                    rows = picked[(picked >= offsets[d][i]) & (picked < offsets[d][i + 1])] - offsets[d][i]
                    if rows.numel():
                        perturb[u] = (rows, sign)
            run = probe.run(perturb)
            deltas.append({d: probe.delta(run, d) for d, _ in pack})
        for d, _ in pack:
            cand, rel, lin = found[d]
            plus, minus = deltas[0][d], deltas[1][d]
            rows = (colours[d] == k).nonzero().flatten()
            if plus is None or minus is None or not rows.numel():
                continue
            base = float(probe.baseline.inputs[d].abs().max()) + 1e-300
            hit = plus.abs().amax(0).cpu() > TOL * base
            affine = ((plus + minus).abs().amax(0) <= LINEAR_TOL * (plus.abs() + minus.abs()).amax(0)).cpu()
            for r in rows.tolist():
                rel[r] = cand[r] & hit
                lin[r] = cand[r] & hit & affine
    return {d: (found[d][1], found[d][2]) for d in found}


__all__ = ["BlockProbe", "LINEAR_TOL", "Run", "TOL", "relation"]
