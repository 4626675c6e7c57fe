"""Per-expert MoE checkpoints read as transformers >= 5's fused expert parameters (streamed, block by block).

transformers >= 5 builds the experts of an MoE block as one 3-D parameter per projection (``mlp.experts.
gate_up_proj`` (E, 2I, H) = [gate; up] of each expert, ``mlp.experts.down_proj`` (E, H, I)), but checkpoints on
the hub -- and what ``save_pretrained`` writes -- keep one tensor per expert, converted at load time.  The
streaming pipeline reads tensors by name against the model skeleton, so :class:`FusedExpertsView` presents a
:class:`~prunekit.models.checkpoint.CheckpointReader` under the fused names: it reads the per-expert tensors of
one block and stacks them (nothing is converted on disk; the output is written with the fused names, which stock
``from_pretrained`` loads as they are).

Layouts (the two transformers maps its MoE families to):

* Mixtral: ``{p}.block_sparse_moe.experts.{e}.w1 / w3 / w2.weight`` -> ``{p}.mlp.experts.gate_up_proj`` =
  stack_e([w1_e; w3_e]), ``{p}.mlp.experts.down_proj`` = stack_e(w2_e); ``{p}.block_sparse_moe.gate.weight`` ->
  ``{p}.mlp.gate.weight``;
* Qwen2-MoE and relatives: ``{p}.mlp.experts.{e}.gate_proj / up_proj / down_proj.weight`` -> the same fused names.

Plain renames transformers applies at load time (its ``WeightRenaming`` entries, e.g. GPT-NeoX's ``embed_out.``
-> ``lm_head.``) are served the same way, read from transformers' own conversion mapping.

A fused or renamed name is served only when the skeleton expects it and the checkpoint lacks it; everything else
passes through unchanged, so checkpoints already in the model's naming read as they are.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Optional, Union

import torch

from ..errors import ModelError

_LAYOUTS = (
    # (regex on a per-expert source name, fused parent suffix, {projection: part}) -- part: (fused leaf, order)
    (re.compile(r"(?P<p>.*)\.block_sparse_moe\.experts\.(?P<e>\d+)\.(?P<w>w1|w2|w3)\.weight"),
     {"w1": ("gate_up_proj", 0), "w3": ("gate_up_proj", 1), "w2": ("down_proj", 0)}),
    (re.compile(r"(?P<p>.*)\.mlp\.experts\.(?P<e>\d+)\.(?P<w>gate_proj|up_proj|down_proj)\.weight"),
     {"gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1), "down_proj": ("down_proj", 0)}),
)
_RENAMES = ((re.compile(r"(?P<p>.*)\.block_sparse_moe\.gate\.weight"), "{p}.mlp.gate.weight"),)


@dataclass(frozen=True)
class _Fused:
    """How one fused tensor is made: ``parts[e]`` = the source names concatenated (dim 0) for expert e."""

    parts: tuple[tuple[str, ...], ...]


class FusedExpertsView:
    """A reader with the fused expert names of ``expected`` built from ``reader``'s per-expert tensors (module
    docstring).  Same interface as CheckpointReader for what the pipeline uses: ``names``, ``shape``,
    ``dtype_of``, ``load``, ``load_prefix``, ``names_under``, ``dtype``, ``total_bytes``, ``folder``."""

    def __init__(self, reader, fused: Mapping[str, Union[_Fused, str]]):
        self.reader = reader
        self._fused = dict(fused)  # virtual name -> _Fused | renamed source name
        consumed = {s for f in self._fused.values() for s in _sources(f)}
        self._names = sorted((set(reader.names) - consumed) | set(self._fused))

    # -- the CheckpointReader interface ------------------------------------------------------------------------
    def __getattr__(self, name):  # folder, files, dtype, total_bytes, shard_of ... of the underlying reader
        return getattr(self.reader, name)

    @property
    def names(self) -> list[str]:
        return list(self._names)

    def __contains__(self, name: object) -> bool:
        return name in self._fused or (name in self.reader and name in self._names)

    def shape(self, name: str) -> tuple[int, ...]:
        f = self._fused.get(name)
        if f is None:
            return self.reader.shape(name)
        if isinstance(f, str):
            return self.reader.shape(f)
        first = [self.reader.shape(s) for s in f.parts[0]]
        return (len(f.parts), sum(s[0] for s in first), *first[0][1:])

    def dtype_of(self, name: str) -> torch.dtype:
        f = self._fused.get(name)
        if f is None:
            return self.reader.dtype_of(name)
        return self.reader.dtype_of(f if isinstance(f, str) else f.parts[0][0])

    def load(self, names: Iterable[str], device="cpu") -> dict[str, torch.Tensor]:
        names = list(dict.fromkeys(names))
        plain = [n for n in names if n not in self._fused]
        wanted = plain + [s for n in names if n in self._fused for s in _sources(self._fused[n])]
        raw = self.reader.load(wanted, device=device)
        out = {}
        for n in names:
            f = self._fused.get(n)
            if f is None:
                out[n] = raw[n]
            elif isinstance(f, str):
                out[n] = raw[f]
            else:
                out[n] = torch.stack([torch.cat([raw[s] for s in part]) for part in f.parts])
        return out

    def names_under(self, prefix: str) -> list[str]:
        p = prefix.rstrip(".") + "."
        return [n for n in self._names if n.startswith(p)]

    def load_prefix(self, prefix: str, device="cpu") -> dict[str, torch.Tensor]:
        names = self.names_under(prefix)
        if not names:
            raise ModelError(f"no tensor named {prefix}.* in the checkpoint {self.reader.folder}. Fix: check the "
                             f"prefix (a block is e.g. 'model.layers.0').")
        return self.load(names, device=device)

    def __repr__(self) -> str:
        return f"FusedExpertsView({self.reader!r}, {len(self._fused)} fused tensor(s))"


def _sources(f: Union[_Fused, str]) -> tuple[str, ...]:
    return (f,) if isinstance(f, str) else tuple(s for part in f.parts for s in part)


def _transformers_renames(model) -> Optional[Callable[[str], str]]:
    """transformers' own checkpoint key renamings for ``model`` (``WeightRenaming`` entries of its conversion
    mapping, e.g. GPT-NeoX ``embed_out.`` -> ``lm_head.``), as a function; None when there are none or this
    transformers has no conversion mapping."""
    if model is None:
        return None
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightRenaming, apply_renamings
    except ImportError:  # transformers < 5: checkpoints load under their own names
        return None
    try:
        renamings = [t for t in get_model_conversion_mapping(model) if type(t) is WeightRenaming]
    except Exception:  # noqa: BLE001 -- an unusual model: no renames rather than a crash
        return None
    return (lambda key: apply_renamings(key, renamings)) if renamings else None


def fused_expert_view(reader, expected: Iterable[str], model=None):
    """``reader`` itself when it already has every expected name, else a :class:`FusedExpertsView` serving the
    expected names it can build: fused expert tensors from per-expert ones, and names transformers renames at
    load time (its ``WeightRenaming`` entries for ``model``).  Other missing names stay missing, so
    ``check_tensors`` still reports them."""
    expected = set(expected)
    have = set(reader.names)
    if expected <= have:
        return reader
    groups: dict[str, dict[int, dict[int, str]]] = {}
    fused: dict[str, Union[_Fused, str]] = {}
    rename = _transformers_renames(model)
    for name in reader.names:
        if rename is not None and name not in expected:
            target = rename(name)
            if target != name and target in expected and target not in have:
                fused[target] = name
                continue
        for pattern, parts in _LAYOUTS:
            hit = pattern.fullmatch(name)
            if hit is None:
                continue
            leaf, order = parts[hit["w"]]
            target = f"{hit['p']}.mlp.experts.{leaf}"
            if target in expected and target not in have:
                groups.setdefault(target, {}).setdefault(int(hit["e"]), {})[order] = name
            break
        for pattern, template in _RENAMES:
            hit = pattern.fullmatch(name)
            if hit is not None:
                target = template.format(p=hit["p"])
                if target in expected and target not in have:
                    fused[target] = name
    for target, experts in groups.items():
        if sorted(experts) != list(range(len(experts))):
            raise ModelError(f"the checkpoint holds experts {sorted(experts)} for {target}, not 0..{len(experts) - 1}"
                             f". Fix: use the complete checkpoint (every expert's tensors).")
        fused[target] = _Fused(tuple(tuple(experts[e][k] for k in sorted(experts[e])) for e in sorted(experts)))
    return FusedExpertsView(reader, fused) if fused else reader


__all__ = ["FusedExpertsView", "fused_expert_view"]
