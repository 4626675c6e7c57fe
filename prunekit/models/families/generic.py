"""The generic adapter: unstructured and N:M pruning for any causal LM whose decoder blocks hold linear layers.

No family adapter knows Phi-3, Mixtral, Qwen2-MoE, GPT-NeoX, Falcon ...; unstructured and N:M pruning need only
three facts about them, all of which this module finds from the model itself:

* **the decoder blocks** -- :func:`find_blocks`: among the ``nn.ModuleList`` s whose children all have one type
  and hold ``nn.Linear`` / ``Conv1D`` layers, the outermost ones (an MoE block's expert list sits *inside* a
  block), preferring one of ``config.num_hidden_layers`` entries, else the longest (``model.layers``,
  ``transformer.h``, ``gpt_neox.layers``, ``model.decoder.layers`` ...);
* **the targets** -- every ``nn.Linear`` (subclasses such as ``FalconLinear`` included) and GPT-2 style
  ``Conv1D`` of a block, in module-tree order, *except* MoE routers (:func:`find_routers`: a linear module under
  an MoE block -- one that holds the experts -- outside its experts, whose name has a ``router`` / ``gate``
  component and whose output width is the number of experts or 1); norms are never linear modules;
* **the stages** -- the targets grouped by shared input, in execution order (``[[q, k, v], [o], [gate, up],
  [down]]``), which the sequential calibration modes follow (FISTAPruner's intra-layer error correction).  They
  come from :func:`trace_stages`: one forward of the block on captured calibration inputs, with a forward
  pre-hook on every linear module that records the input tensor it received; modules fed the *same* tensor
  (same object, or same ``data_ptr``, shape, stride and dtype: a re-made view of the same memory) share a stage,
  and stages are ordered by first call.

Why hooks and not ``torch.fx`` / ``torch.export``: fx symbolic tracing fails on many Hugging Face blocks
(data-dependent control flow such as MoE routing loops over the experts a batch hits, cache objects, ``**kwargs``
forwarding, attention-implementation dispatch), and export needs static shapes and specialises those branches
away; a pre-hook sees the *real* execution on the real inputs -- exactly the tensors the Gram statistics are later
collected from -- and needs nothing from the model code.

Modules the trace does not reach (an MoE expert to which no calibration token of the traced windows was routed)
still are targets: an untraced module is placed by analogy with a traced sibling (``experts.5.w1`` follows the
stages of a traced ``experts.*.w1``), after the traced stages of its parent, else in a stage of its own after
the last stage of its parent (module-tree order).  The stages of repeated siblings are then put in index order
(expert 0, 1, 2 ...), so they do not depend on which experts the traced windows happened to reach.  A module that
no calibration token reaches at all is reported, never a crash: :func:`unrouted_solution` leaves it dense
(``policy="dense"``, the default) or, only when the recipe asks (``policy="magnitude"``), prunes it by weight
magnitude, and its record says which and why.

Before a trace (or for a block layout never traced) :meth:`GenericAdapter.stages` gives one stage per target in
module-tree order: a valid order for every mode (each target solved once), only less error correction.

Mixture-of-experts weights stored as one 3-D parameter for all experts (transformers >= 5 ``MixtralExperts``,
``Qwen2MoeExperts``: ``gate_up_proj`` (E, 2I, H), ``down_proj`` (E, H, I)) are not linear modules: they are
listed by :meth:`GenericAdapter.skipped` (left dense, with the reason) so the run reports them.
:func:`unfuse_experts_` rewrites such a module in place as a :class:`LinearExperts` -- one ``gate_up_proj`` /
``down_proj`` linear pair per expert, the same forward (checked on a random routing before the swap), weights
shared with the fused tensors -- so every expert becomes a target; :func:`fuse_experts_` stacks the (pruned)
weights back into the original module, whose state-dict names stock ``from_pretrained`` loads.

Channel structures need coupled groups, which a module tree alone does not give: the runner calls
:meth:`GenericAdapter.derive_groups_` before it solves a block, which derives them from the block's computation
(``prunekit.models.coupling``: the dependency probe) and keeps the MLP and V/O channel groups
(:attr:`GenericAdapter.channel_kinds`) for :meth:`GenericAdapter.coupled_groups` (none before: unstructured and
N:M plans need none).  MoE blocks are pruned *inside each expert* once their fused experts are unfused (the
runner unfuses every block of a generic run): each expert and a shared expert is an MLP with its own channel
groups, routers and gates are untouched, every expert of a block keeps one width (checked by
:meth:`GenericAdapter.fix_block` on each pruned block), an expert no calibration token reached is pruned by
weight-norm channel scores to that width, and the experts are fused back smaller -- all in
:mod:`prunekit.models.families.expert_channels`.  Experts ``unfuse_experts_`` keeps fused (a non-standard
layout) refuse channels with one :class:`~prunekit.errors.ModelError`.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence

import torch
from torch import nn

from ...errors import ModelError
from ..adapters import FamilyAdapter
from ..linear_layers import linear_kind

CAUSAL_LM_SUFFIXES = ("ForCausalLM", "LMHeadModel")
ROUTER_WORDS = ("router",)
UNROUTED_POLICIES = ("dense", "magnitude")
"""What happens to a target no calibration token reached: left dense (default) or pruned by magnitude."""


# ---------------------------------------------------------------------------------------------- module kinds
def linear_modules(module: nn.Module) -> list[str]:
    """Relative names of the linear modules under ``module``, in module-tree order."""
    return [name for name, m in module.named_modules() if name and linear_kind(m) is not None]


def is_causal_lm(model: nn.Module) -> bool:
    """True for a causal LM: a ``...ForCausalLM`` / ``...LMHeadModel`` class, or a config naming one."""
    names = [type(model).__name__, *(getattr(getattr(model, "config", None), "architectures", None) or [])]
    return any(str(n).endswith(CAUSAL_LM_SUFFIXES) for n in names)


# ---------------------------------------------------------------------------------------------- blocks
def _num_layers(model: nn.Module) -> Optional[int]:
    config = getattr(model, "config", None)
    if config is None:
        return None
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    for key in ("num_hidden_layers", "n_layer", "num_layers", "n_layers"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _is_block_list(module: nn.Module) -> bool:
    children = list(module.children())
    if not isinstance(module, nn.ModuleList) or not children:
        return False
    if len({type(c) for c in children}) != 1 or linear_kind(children[0]) is not None:
        return False
    return all(linear_modules(c) for c in children)


def find_blocks(model: nn.Module) -> str:
    """Qualified name of the decoder-block list of ``model`` (see the module docstring).

    Raises ModelError when no ``nn.ModuleList`` of identical blocks holding linear layers exists.
    """
    candidates = [name for name, m in model.named_modules() if _is_block_list(m)]
    outer = [n for n in candidates if not any(n != o and n.startswith(f"{o}.") for o in candidates)]
    if not outer:
        raise ModelError(f"no decoder blocks found in {type(model).__name__}: prunekit looks for an nn.ModuleList of "
                         f"identical blocks holding nn.Linear (or Conv1D) layers, and this model has none. Fix: pass "
                         f"a causal LM loaded with transformers' AutoModelForCausalLM, or add a FamilyAdapter for it "
                         f"in prunekit/models/families/.")
    want = _num_layers(model)
    matching = [n for n in outer if len(model.get_submodule(n)) == want]
    pool = matching or outer
    return max(pool, key=lambda n: len(model.get_submodule(n)))  # max keeps the first (shallowest) of equals


# ---------------------------------------------------------------------------------------------- MoE structure
def _fused_expert_params(module: nn.Module) -> dict[str, tuple[int, ...]]:
    """Parameters of ``module`` itself with 3 or more dimensions (fused experts: one slice per expert)."""
    return {n: tuple(p.shape) for n, p in module.named_parameters(recurse=False) if p.dim() >= 3}


def _expert_containers(block: nn.Module) -> dict[str, int]:
    """``{relative name: number of experts}`` of the expert containers of a block: a ModuleList of >= 2 identical
    modules holding linear layers (per-expert modules), or a module with 3-D parameters (fused experts)."""
    found: dict[str, int] = {}
    for name, m in block.named_modules():
        if not name or any(name.startswith(f"{c}.") for c in found):
            continue
        fused = _fused_expert_params(m)
        if fused:
            found[name] = next(iter(fused.values()))[0]
        elif _is_block_list(m) and len(m) >= 2:
            found[name] = len(m)
    return found


def _parent(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else ""


def _router_word(part: str) -> bool:
    return any(w in part for w in ROUTER_WORDS) or part == "gate" or part.endswith("_gate")


def find_routers(block: nn.Module) -> dict[str, str]:
    """``{relative name: reason}`` of the MoE routers / gates among the block's linear modules (module docstring):
    under an MoE block (the parent of an expert container), outside the experts, with a ``router`` / ``gate``
    name component and ``out_features`` equal to the number of experts or 1 (a shared-expert gate)."""
    routers: dict[str, str] = {}
    for container, experts in _expert_containers(block).items():
        moe = _parent(container)
        for rel in linear_modules(block):
            if moe and not rel.startswith(f"{moe}."):
                continue
            if rel == container or rel.startswith(f"{container}."):
                continue
            inner = rel[len(moe) + 1:] if moe else rel
            width = int(getattr(block.get_submodule(rel), "out_features", -1))
            if any(_router_word(p) for p in inner.split(".")) and width in (experts, 1):
                what = f"router of {experts} experts" if width == experts else "gate (one output)"
                routers[rel] = f"MoE {what} of {moe or 'the block'}; left dense"
    return routers


# ---------------------------------------------------------------------------------------------- tracing
@dataclass(frozen=True)
class BlockTrace:
    """The stages of one block layout, from :func:`trace_stages`.

    stages : the modules grouped by shared input, in execution order (relative names; every requested module
        appears exactly once -- untraced ones placed by analogy, see the module docstring).
    traced : the modules a calibration token reached during the trace.
    untraced : the others, in module-tree order.
    windows : calibration windows run.
    """

    stages: tuple[tuple[str, ...], ...]
    traced: frozenset
    untraced: tuple[str, ...]
    windows: int

    def restricted(self, names: Iterable[str]) -> tuple[tuple[str, ...], ...]:
        """The stages restricted to ``names`` (empty stages dropped)."""
        keep = set(names)
        out = (tuple(n for n in stage if n in keep) for stage in self.stages)
        return tuple(s for s in out if s)


def _input_of(args: tuple, kwargs: dict) -> Optional[torch.Tensor]:
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    return next((v for v in kwargs.values() if isinstance(v, torch.Tensor)), None)


def _key(x: torch.Tensor) -> tuple:
    return (x.data_ptr(), tuple(x.shape), tuple(x.stride()), x.dtype, str(x.device))


class _UnionFind:
    def __init__(self):
        self.parent: dict[str, str] = {}

    def find(self, a: str) -> str:
        self.parent.setdefault(a, a)
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra


def _record_window(block: nn.Module, names: Sequence[str], run) -> list[tuple[str, tuple]]:
    """``[(module, input key)]`` in first-call order for one forward ``run()`` of ``block`` (inputs are kept
    alive until the forward ends, so equal keys mean the same memory)."""
    calls: list[tuple[str, tuple]] = []
    alive: list[torch.Tensor] = []
    seen: set[str] = set()

    def hook_for(name: str):
        def hook(module, args, kwargs):
            x = _input_of(args, kwargs)
            if name in seen or x is None or x.numel() == 0:  # an empty input: no token reached the module
                return None
            seen.add(name)
            alive.append(x)
            calls.append((name, _key(x)))
            return None
        return hook

    handles = [block.get_submodule(n).register_forward_pre_hook(hook_for(n), with_kwargs=True) for n in names]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return calls


def sibling_pattern(rel: str) -> tuple[str, str, str]:
    """``("mlp.experts.*", "mlp.experts.5", "w1")`` for ``mlp.experts.5.w1``: the sibling pattern, the instance
    (path through the last numeric component) and the rest; ``("", "", rel)`` without a numeric component."""
    parts = rel.split(".")
    last = max((i for i, p in enumerate(parts) if p.isdigit()), default=-1)
    if last < 0:
        return "", "", rel
    pattern = ".".join("*" if p.isdigit() else p for p in parts[:last + 1])
    return pattern, ".".join(parts[:last + 1]), ".".join(parts[last + 1:])


def _ordered_stages(windows: list[list[tuple[str, tuple]]]) -> list[list[str]]:
    """Merge the per-window call sequences: modules fed the same input in any window share a stage; stages are
    ordered by first call (a module first seen in a later window is placed after the stage of its predecessor)."""
    uf = _UnionFind()
    for calls in windows:
        first: dict[tuple, str] = {}
        for name, key in calls:
            uf.find(name)
            if key in first:
                uf.union(first[key], name)
            else:
                first[key] = name
    order: list[str] = []  # module names, merged first-call order
    for calls in windows:
        cursor = -1
        for name, _ in calls:
            if name in order:
                cursor = order.index(name)
            else:
                order.insert(cursor + 1, name)
                cursor += 1
    stages: dict[str, list[str]] = {}
    for name in order:
        stages.setdefault(uf.find(name), []).append(name)
    return sorted(stages.values(), key=lambda s: order.index(s[0]))


def _place_untraced(stages: list[list[str]], untraced: list[str]) -> list[list[str]]:
    """Insert stages for the untraced modules (by analogy with traced siblings, see the module docstring)."""
    traced = [n for s in stages for n in s]
    patterns = {n: sibling_pattern(n) for n in traced}
    after: dict[int, list[list[str]]] = {}  # stage index -> stages to insert after it (-1: at the end)
    by_instance: dict[str, list[str]] = {}
    for name in untraced:
        by_instance.setdefault(sibling_pattern(name)[1] or name, []).append(name)
    for instance, members in by_instance.items():
        pattern = sibling_pattern(members[0])[0]
        siblings = [n for n in traced if pattern and patterns[n][0] == pattern]
        new: list[list[str]] = []
        if siblings:
            template = patterns[siblings[-1]][1]  # one traced instance, e.g. "mlp.experts.2"
            for stage in stages:
                rests = [patterns[n][2] for n in stage if patterns[n][1] == template]
                mapped = [f"{instance}.{r}" for r in rests if f"{instance}.{r}" in members]
                if mapped:
                    new.append(mapped)
            anchor = max(i for i, s in enumerate(stages) if any(n in siblings for n in s))
        else:
            parent = _parent(members[0])
            near = [i for i, s in enumerate(stages) if any(parent and n.startswith(f"{parent}.") for n in s)]
            anchor = max(near) if near else -1
        covered = {n for s in new for n in s}
        new += [[n] for n in members if n not in covered]
        after.setdefault(anchor, []).extend(new)
    out: list[list[str]] = []
    for i, stage in enumerate(stages):
        out.append(stage)
        out.extend(after.get(i, []))
    out.extend(after.get(-1, []))
    return out


def _instance_order(stages: list[list[str]]) -> list[list[str]]:
    """Stages that belong to one instance of a repeated sibling (``mlp.experts.5``) put in instance-index order
    over the positions such stages hold (each instance keeps its own stage order): the result does not depend on
    which experts the traced windows reached, so every process of a distributed run gets the same stages."""
    owners = []
    for stage in stages:
        keys = {sibling_pattern(n)[:2] for n in stage}
        owners.append(next(iter(keys)) if len(keys) == 1 and next(iter(keys))[0] else None)
    out = list(stages)
    for pattern in dict.fromkeys(o[0] for o in owners if o):
        positions = [i for i, o in enumerate(owners) if o and o[0] == pattern]
        index = {i: tuple(int(p) for p in owners[i][1].split(".") if p.isdigit()) for i in positions}
        for slot, i in zip(positions, sorted(positions, key=lambda i: (index[i], i))):
            out[slot] = stages[i]
    return out


def trace_stages(block: nn.Module, calls: Iterable[tuple[torch.Tensor, tuple, dict]],
                 names: Optional[Sequence[str]] = None) -> BlockTrace:
    """Stages of ``block`` from forwards on ``calls`` (``(hidden, args, kwargs)`` per window, already on the
    block's device and dtype); ``names`` default to every linear module of the block.  The block is not changed.

    Windows are run until every module has been reached or ``calls`` is exhausted.
    """
    names = list(linear_modules(block) if names is None else names)
    windows: list[list[tuple[str, tuple]]] = []
    reached: set[str] = set()
    for hidden, args, kwargs in calls:
        windows.append(_record_window(block, names, lambda: block(hidden, *args, **kwargs)))
        reached.update(n for n, _ in windows[-1])
        if reached >= set(names):
            break
    stages = _ordered_stages(windows)
    untraced = [n for n in names if n not in reached]
    stages = _instance_order(_place_untraced(stages, untraced))
    return BlockTrace(tuple(tuple(s) for s in stages), frozenset(reached), tuple(untraced), len(windows))


def block_calls(inputs, *, device, dtype, windows: int) -> list[tuple[torch.Tensor, tuple, dict]]:
    """``(hidden, args, kwargs)`` of the first ``windows`` windows of a ``calibration.BlockInputs``, moved to
    ``device`` / ``dtype``."""
    from ..calibration import _to

    out = []
    for i, h in enumerate(inputs.hidden[:windows]):
        args, kwargs = inputs.call_arguments(i)
        out.append((h.to(device=device, dtype=dtype), _to(args, device, dtype), _to(kwargs, device, dtype)))
    return out


# ---------------------------------------------------------------------------------------------- the adapter
def _layout(block: nn.Module) -> tuple:
    """What identifies a block layout: its type and its linear modules (MoE and dense layers differ)."""
    return type(block).__qualname__, tuple(linear_modules(block))


class GenericAdapter(FamilyAdapter):
    """Unstructured / N:M pruning of any causal LM (module docstring); one instance per model
    (:func:`generic_adapter`), holding the traced stages of its block layouts."""

    name = "generic"
    model_types = ()  # never matched by type: adapter_for falls back to it
    groups_per_block = True
    structures = frozenset({"unstructured", "nm", "channels"})
    channel_kinds = ("glu_channel", "ffn_channel", "vo_channel")
    """Coupled groups the generic adapter prunes: MLP channels and V/O channels change only linear widths (no
    module attribute or config field the forward reads); whole heads need a family's head-count fix-up."""

    def __init__(self, model_type: Optional[str] = None):
        self.model_type = model_type
        self._paths: "weakref.WeakKeyDictionary[nn.Module, str]" = weakref.WeakKeyDictionary()
        self._traces: dict[tuple, BlockTrace] = {}
        self._groups: "weakref.WeakKeyDictionary[nn.Module, dict[int, list]]" = weakref.WeakKeyDictionary()
        # per model: block layout -> (index, {pattern: channels}) of the first pruned block holding experts
        self._widths: "weakref.WeakKeyDictionary[nn.Module, dict[tuple, tuple]]" = weakref.WeakKeyDictionary()

    # ------------------------------------------------------------------ layout
    def block_path(self, model: nn.Module) -> str:
        """Qualified name of the block list (``model.layers``, ``transformer.h``, ...)."""
        if model not in self._paths:
            self._paths[model] = find_blocks(model)
        return self._paths[model]

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        return model.get_submodule(self.block_path(model))

    def block_prefix(self, model: nn.Module, index: int) -> str:
        return f"{self.block_path(model)}.{index}"

    def targets(self, block: nn.Module) -> list[str]:
        """The block's linear modules but its MoE routers, in module-tree order."""
        routers = find_routers(block)
        return [n for n in linear_modules(block) if n not in routers]

    def skipped(self, block: nn.Module) -> dict[str, str]:
        """``{relative name: reason}`` of what this adapter leaves dense in a block: MoE routers and fused expert
        parameters (3-D tensors, not linear modules)."""
        out = dict(find_routers(block))
        for name, m in block.named_modules():
            for pname, shape in _fused_expert_params(m).items():
                rel = f"{name}.{pname}" if name else pname
                out[rel] = (f"fused expert weights {list(shape)} ({shape[0]} experts in one 3-D parameter, not "
                            f"nn.Linear modules); left dense unless unfuse_experts_ rewrites them")
        return out

    # ------------------------------------------------------------------ stages
    def trace(self, block: nn.Module, inputs, *, device=None, windows: int = 2) -> BlockTrace:
        """Trace ``block`` (on ``device``, in its own dtype) on the first ``windows`` windows of ``inputs`` (a
        ``calibration.BlockInputs``) and keep the stages for every block of the same layout; returns them."""
        param = next(block.parameters())
        calls = block_calls(inputs, device=device or param.device, dtype=param.dtype, windows=max(1, windows))
        result = trace_stages(block, calls)
        self._traces[_layout(block)] = result
        return result

    def traced(self, block: nn.Module) -> Optional[BlockTrace]:
        """The trace of this block's layout, or None before :meth:`trace`."""
        return self._traces.get(_layout(block))

    def stages(self, block: nn.Module) -> list[list[str]]:
        targets = self.targets(block)
        result = self.traced(block)
        if result is None:
            return [[n] for n in targets]
        return [list(s) for s in result.restricted(targets)]

    # ------------------------------------------------------------------ weights
    # ------------------------------------------------------------------ structures
    def structure_error(self, kind: str = "channels") -> ModelError:
        from ..adapters import supported_model_types

        mt = self.model_type or "this model"
        return ModelError(
            f"structure {kind!r} needs the coupled groups of {mt!r} blocks (which rows and columns of which modules "
            f"form one removable channel or head), and prunekit has no family adapter for {mt!r}; channel pruning "
            f"supports {', '.join(supported_model_types())}. Fix: prune {mt!r} with structure 'unstructured' or an "
            f"N:M pattern such as '2:4' (any causal LM), or add a FamilyAdapter for it in prunekit/models/families/ "
            f"registered with @register_family.")

    def check_structure(self, kind: str) -> None:
        """Raise the ModelError of :meth:`structure_error` unless ``kind`` is "unstructured" or "nm"."""
        if kind not in self.structures:
            raise self.structure_error(kind)

    def derive_groups_(self, model: nn.Module, index: int, sample_inputs=None) -> list:
        """Derive block ``index``'s coupled groups from its computation (``prunekit.models.derived_groups``: the
        dependency probe, once per block layout) and keep those of :attr:`channel_kinds` for
        :meth:`coupled_groups` -- the groups the block is pruned with, also after surgery changed its shapes (the
        expert-width checks and the stock config search read the original unit counts); returns them.

        MoE experts must be unfused first (``unfuse_experts_``; the runner does it): each expert then has its own
        channel groups (``expert_channels``: why the probe is sound through the router).  A new derivation of
        block ``index`` starts a new pass: the widths :meth:`fix_block` recorded for blocks ``>= index`` are
        forgotten.

        Raises ModelError for a block whose expert weights are still fused 3-D parameters (a layout
        ``unfuse_experts_`` keeps fused): their channels are not rows and columns of linear modules."""
        from ..derived_groups import block_coupling

        records = self._widths.get(model, {})
        for layout, (first, _) in list(records.items()):
            if first >= index:
                del records[layout]
        block = self.blocks(model)[index]
        fused = sorted(n for n, p in block.named_parameters() if p.dim() >= 3)
        if fused:
            raise ModelError(f"structure 'channels' on block {index}: its mixture-of-experts weights {fused[:2]} "
                             f"are still fused 3-D parameters (unfuse_experts_ keeps a non-standard layout fused), "
                             f"so their channels are not linear rows and columns. Fix: prune this model with "
                             f"structure 'unstructured' or an N:M pattern such as '2:4'.")
        groups = [g for g in block_coupling(model, self, index, sample_inputs).groups if g.kind in self.channel_kinds]
        self._groups.setdefault(model, {})[index] = groups
        return groups

    def fix_block(self, model: nn.Module, index: int) -> None:
        """Check a pruned block holding MoE experts (``surgery.pruned_block`` calls this before the block is
        committed): every expert of an expert set keeps the same width, and the widths equal those of the first
        pruned block of the same layout (``expert_channels.check_block_widths``).  Blocks without experts are
        not checked (their widths may differ across blocks).

        Raises ModelError when a rule is broken (the block is not committed)."""
        from .expert_channels import check_block_widths, expert_pattern

        block = self.blocks(model)[index]
        prefix = self.block_prefix(model, index)
        rels = [g.downstream[len(prefix) + 1:] for g in self.coupled_groups(model, index)
                if g.kind in ("glu_channel", "ffn_channel")]
        if not any(expert_pattern(r)[1] is not None for r in rels):
            return
        records = self._widths.setdefault(model, {})
        layout = _layout(block)
        widths = check_block_widths(block, rels, index, records.get(layout))
        records.setdefault(layout, (index, widths))

    def fix_config(self, model: nn.Module) -> None:
        """Set ``model.config``'s MLP width fields to the kept widths after channel surgery, where the stock class
        then describes every pruned shape -- the same search the saved output's config gets
        (:func:`prunekit.models.export.stock_layout`); a model without such a field keeps its config (its saved
        output says why).  No-op after unstructured / N:M pruning (no width changed)."""
        from ...errors import ModelError
        from ..export import STOCK, stock_layout

        try:
            layout = stock_layout(model)
        except ModelError:  # e.g. fused experts of different widths: saving says so, with the fix
            return
        if layout.format != STOCK:
            return
        current = model.config.to_dict()
        for key, value in layout.config.items():
            old = current.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and isinstance(old, int) \
                    and not isinstance(old, bool) and old != value:
                setattr(model.config, key, value)

    def coupled_groups(self, model: nn.Module, index: int) -> list:
        """The groups :meth:`derive_groups_` derived for block ``index`` (the runner derives them before a channel
        run solves the block), else ``[]`` (unstructured / N:M edits need no group)."""
        return list(self._groups.get(model, {}).get(index, []))


_ADAPTERS: "weakref.WeakKeyDictionary[nn.Module, GenericAdapter]" = weakref.WeakKeyDictionary()


def generic_adapter(model: nn.Module) -> GenericAdapter:
    """The GenericAdapter of ``model`` (one per model object, so traced stages are shared by every caller).

    Raises ModelError when the model has no decoder-block list."""
    adapter = _ADAPTERS.get(model)
    if adapter is None:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        adapter = GenericAdapter(model_type)
        adapter.block_path(model)  # fail now, with the clear error, when there are no blocks
        _ADAPTERS[model] = adapter
    return adapter


# ---------------------------------------------------------------------------------------------- unrouted modules
def unrouted_solution(weight: torch.Tensor, spec, policy: str, base: dict[str, Any]):
    """``(solution or None, LayerRecord)`` for a target no calibration token reached (e.g. an MoE expert the
    router never picked on the calibration windows).

    ``policy="dense"`` (default) leaves it dense: no solution, the record's status says why.  ``"magnitude"``
    prunes it to ``spec`` by weight magnitude (no calibration statistics exist for it).  A channel ``spec``
    (``Channels``: an MoE expert's channel group) is pruned by weight-norm channel scores under either policy,
    since a dense expert would leave experts of different widths
    (``expert_channels.unrouted_channels_solution``).  ``base`` holds the
    record's ``block``, ``module``, ``group``, ``shape`` and ``target_sparsity``, as in the runner.
    """
    from ..records import LayerRecord

    if policy not in UNROUTED_POLICIES:
        raise ModelError(f"unrouted={policy!r} is not a policy for modules no calibration token reaches. Fix: use "
                         f"one of {UNROUTED_POLICIES}.")
    from ...formulations import Channels

    if isinstance(spec, Channels):  # an expert keeps its siblings' width: weight-norm channels, never dense
        from .expert_channels import unrouted_channels_solution

        return unrouted_channels_solution(weight, spec, base)
    if policy == "dense" or spec is None:
        return None, LayerRecord(**base, status="dense: no calibration token reached this module (an MoE expert no "
                                               "window was routed to); more or longer calibration windows, or "
                                               "unrouted='magnitude', prune it")
    from ... import solve
    from ...formulations import MagnitudePruning
    from ...formulations.layer import LayerData

    w = weight.detach()
    layer = LayerData(weight=w, gram=torch.ones(w.shape[1], dtype=w.dtype, device=w.device), num_tokens=1,
                      check_psd=False)
    solution = solve(MagnitudePruning(layer, spec), backend="torch")
    record = LayerRecord(**base, formulation="MagnitudePruning", backend=solution.provenance.get("backend"),
                         status=f"{solution.status} (magnitude fallback: no calibration token reached this module)",
                         sparsity=float(solution.sparsity), objective=float(solution.objective),
                         mask_violations=float(solution.residuals.get("mask_violations", 0.0)),
                         time_s=float(solution.stats.get("time_s", 0.0)), statistics="none")
    return solution, record


from .experts import ExpertMLP, LinearExperts, fuse_experts_, unfuse_experts_  # noqa: E402  (re-exported)

__all__ = ["BlockTrace", "ExpertMLP", "GenericAdapter", "LinearExperts", "UNROUTED_POLICIES", "block_calls",
           "find_blocks", "find_routers", "fuse_experts_", "generic_adapter", "is_causal_lm", "linear_kind",
           "sibling_pattern", "linear_modules", "trace_stages", "unfuse_experts_", "unrouted_solution"]
