"""prunekit.models: pruning Hugging Face causal LMs through the layer formulations.

Import-light: this package imports nothing heavy at import time; names load on first use.

* sources -- :func:`load_model` (hub id, local folder, GGUF file, built-in ``smollm2-135m``), :func:`resolve_source`;
* graph -- :func:`build_graph` (``nx.DiGraph`` of the linear modules), :func:`coupled_groups`;
* groups / adapters -- :class:`CoupledGroup`, :class:`FamilyAdapter`, :func:`adapter_for`;
* plan / surgery -- :class:`PruningPlan`, :func:`apply_` (the only code that mutates modules), :func:`mask_model_`,
  :func:`round_kept_count`;
* saving -- :func:`save_pruned`, :func:`load_pruned`.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "load_model": "sources", "resolve_source": "sources", "BUILTINS": "sources",
    "build_graph": "graph", "coupled_groups": "graph", "NodeRecord": "graph", "EdgeRecord": "graph",
    "CoupledGroup": "groups",
    "FamilyAdapter": "adapters", "adapter_for": "adapters", "register_family": "adapters",
    "supported_model_types": "adapters",
    "PruningPlan": "plan", "ModuleEdit": "plan", "GroupEdit": "plan",
    "apply_": "surgery", "mask_model_": "surgery", "round_kept_count": "surgery", "count_parameters": "surgery",
    "save_pruned": "saving", "load_pruned": "saving",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY)
