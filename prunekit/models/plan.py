"""PruningPlan: what to do to a model, apart from doing it (design.md principle 14).

A plan holds, per coupled group, the units (channels, heads) that are kept, the typed per-layer records and the
provenance; a plan made by ``prunekit.plan`` (which leaves the model alone) also holds, in memory, per linear
module the new dense weight (and bias) found by the solvers -- zeros where pruned, full original shape -- so
``apply_`` can replay it: first the module edits, then the physical removal of every group edit's pruned units.

On disk a plan is ``plan.json`` (versioned metadata, kept units, records, provenance).  The weights are not
copied there by default -- a pruned checkpoint already holds each weight once; ``save(..., include_weights=True)``
adds ``plan.safetensors`` for a plan that must replay on another machine.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from ..errors import DataError

VERSION = 1


@dataclass
class ModuleEdit:
    """New parameters for one linear module (PyTorch layout out x in, even for GPT-2's Conv1D)."""

    module: str
    weight: Optional[torch.Tensor] = None
    bias: Optional[torch.Tensor] = None
    sparsity_kind: str = "dense"  # "unstructured" | "n:m" | "channels" | "dense"
    note: str = ""


@dataclass
class GroupEdit:
    """Units kept in one coupled group (``CoupledGroup.name``)."""

    group: str
    kind: str
    kept_units: tuple[int, ...]
    num_units: int


@dataclass
class PruningPlan:
    """Module edits + group edits + provenance; replayable with ``prunekit.apply_``."""

    module_edits: dict[str, ModuleEdit] = field(default_factory=dict)
    group_edits: dict[str, GroupEdit] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    records: list = field(default_factory=list)  # LayerRecord per layer problem
    version: int = VERSION
    refits: list = field(default_factory=list)  # block_refit.RefitRecord per refitted block

    def block_edits(self, index: int, prefix: str) -> "PruningPlan":
        """The sub-plan of one block (edits whose module/downstream name starts with ``prefix + '.'``)."""
        head = prefix + "."
        return PruningPlan(
            {k: e for k, e in self.module_edits.items() if (e.module or k).startswith(head)},
            {k: g for k, g in self.group_edits.items() if k.startswith(head)},
            dict(self.provenance), [r for r in self.records if r.block == index], self.version,
            [r for r in self.refits if r.block == index])

    def merge_(self, other: "PruningPlan", keep_weights: bool = True) -> None:
        """Add another (block) plan's edits and records; ``keep_weights=False`` drops its module weights."""
        for k, e in other.module_edits.items():
            self.module_edits[k] = e if keep_weights else ModuleEdit(e.module, None, None, e.sparsity_kind, e.note)
        self.group_edits.update(other.group_edits)
        self.records.extend(other.records)
        self.refits.extend(other.refits)

    # ------------------------------------------------------------------ serialization
    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly metadata (tensors are referenced by key, stored by ``save``)."""
        return {
            "version": self.version,
            "module_edits": {
                k: {"module": e.module, "sparsity_kind": e.sparsity_kind, "note": e.note,
                    "has_weight": e.weight is not None, "has_bias": e.bias is not None}
                for k, e in self.module_edits.items()
            },
            "group_edits": {k: {**asdict(g), "kept_units": list(g.kept_units)} for k, g in self.group_edits.items()},
            "provenance": self.provenance,
            "records": [r.to_dict() for r in self.records],
            **({"refits": [r.to_dict() for r in self.refits]} if self.refits else {}),
        }

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {}
        for k, e in self.module_edits.items():
            if e.weight is not None:
                out[f"{k}.weight"] = e.weight.detach().cpu().contiguous()
            if e.bias is not None:
                out[f"{k}.bias"] = e.bias.detach().cpu().contiguous()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], tensors: Optional[dict[str, torch.Tensor]] = None) -> "PruningPlan":
        from .records import LayerRecord

        version = int(data.get("version", -1))
        if version != VERSION:
            raise DataError(f"plan version {version} is not supported (this prunekit reads version {VERSION}).")
        tensors = tensors or {}
        edits = {}
        for k, e in data.get("module_edits", {}).items():
            edits[k] = ModuleEdit(
                module=e["module"],
                weight=tensors.get(f"{k}.weight") if e.get("has_weight") else None,
                bias=tensors.get(f"{k}.bias") if e.get("has_bias") else None,
                sparsity_kind=e.get("sparsity_kind", "dense"),
                note=e.get("note", ""),
            )
            if e.get("has_weight") and edits[k].weight is None and tensors:
                raise DataError(f"plan tensors are missing {k}.weight; the plan folder is incomplete.")
        groups = {
            k: GroupEdit(group=g["group"], kind=g["kind"], kept_units=tuple(g["kept_units"]), num_units=g["num_units"])
            for k, g in data.get("group_edits", {}).items()
        }
        from .block_refit import RefitRecord

        records = [LayerRecord.from_dict(r) for r in data.get("records", [])]
        refits = [RefitRecord.from_dict(r) for r in data.get("refits", [])]
        return cls(edits, groups, dict(data.get("provenance", {})), records, version, refits)

    def save(self, path: str | os.PathLike, include_weights: bool = False) -> Path:
        """Write ``plan.json`` (and, with ``include_weights``, ``plan.safetensors``) into folder ``path``
        atomically (temp files + rename)."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=folder, suffix=".tmp", delete=False) as fh:
            json.dump(self.to_dict(), fh, indent=2, default=str)
            tmp_json = fh.name
        if include_weights:
            from safetensors.torch import save_file

            tmp_st = str(folder / ".plan.safetensors.tmp")
            save_file(self.tensors(), tmp_st)
            os.replace(tmp_st, folder / "plan.safetensors")
        os.chmod(tmp_json, 0o644)
        os.replace(tmp_json, folder / "plan.json")
        return folder

    @classmethod
    def load(cls, path: str | os.PathLike) -> "PruningPlan":
        from safetensors.torch import load_file

        folder = Path(path)
        if not (folder / "plan.json").exists():
            raise DataError(f"no plan.json in {folder}. Fix: pass the folder written by PruningPlan.save.")
        data = json.loads((folder / "plan.json").read_text())
        st = folder / "plan.safetensors"
        return cls.from_dict(data, load_file(str(st)) if st.exists() else {})
