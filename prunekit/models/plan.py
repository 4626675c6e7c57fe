"""PruningPlan: what to do to a model, apart from doing it (design.md principle 14).

A plan holds, per linear module, the new dense weight (and bias) found by the solvers -- zeros where pruned,
full original shape -- and, per coupled group, the units (channels, heads) that are kept.  ``apply_`` first
writes the module edits, then physically removes the pruned units of every group edit.  Plans serialize to a
folder: ``plan.json`` (versioned metadata, kept indices, provenance, per-layer report) and
``plan.safetensors`` (the tensors), so a plan made on one machine replays on another.
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
    layers: list[dict[str, Any]] = field(default_factory=list)  # per-module report rows
    version: int = VERSION

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
            "layers": self.layers,
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
            if e.get("has_weight") and edits[k].weight is None:
                raise DataError(f"plan tensors are missing {k}.weight; the plan folder is incomplete.")
        groups = {
            k: GroupEdit(group=g["group"], kind=g["kind"], kept_units=tuple(g["kept_units"]), num_units=g["num_units"])
            for k, g in data.get("group_edits", {}).items()
        }
        return cls(edits, groups, dict(data.get("provenance", {})), list(data.get("layers", [])), version)

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``plan.json`` and ``plan.safetensors`` into folder ``path`` atomically (temp files + rename)."""
        from safetensors.torch import save_file

        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=folder, suffix=".tmp", delete=False) as fh:
            json.dump(self.to_dict(), fh, indent=2, default=str)
            tmp_json = fh.name
        tmp_st = str(folder / ".plan.safetensors.tmp")
        save_file(self.tensors(), tmp_st)
        os.replace(tmp_st, folder / "plan.safetensors")
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
