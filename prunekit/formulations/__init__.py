"""Public formulation, data and reduction names.

Names resolve lazily (PEP 562) so that importing one formulation does not import them all.
"""

from __future__ import annotations

import importlib
from typing import Any

from .base import Formulation, Guarantee, restoration_stationarity
from .form import ProblemForm
from .layer import LayerData
from .reductions import Chain, Reduction
from .sparsity import NM, Channels, SparsitySpec, Unstructured
from .statistics import GramAccumulator

# name -> module (relative to this package) for the formulation classes.
_LAZY = {
    "FixedMaskRestoration": "restoration",
    "MultipleRemoval": "mrp",
    "MagnitudePruning": "magnitude",
    "WandaPruning": "wanda",
    "SparseGPTPruning": "sparsegpt",
    "MaskedReconstructionMIP": "mip",
    "SPAPRelaxation": "reductions_spap",
    "CoupledStructuredRemoval": "coupled",
    "RefitCoupledRemoval": "coupled_refit",
    "FLAPRemoval": "flap",
    "PenaltyRelaxation": "penalty",
    "RefitPenaltyRelaxation": "penalty_refit",
    "L1Relaxation": "l1",
    "RefitL1Relaxation": "l1_refit",
    "ADMMSplit": "admm",
    "SparseLLMSplit": "sparsellm",
    "LayerAllocation": "allocation",
    "GLURecovery": "glu_recovery",
    "MIPToPenalty": "penalty",
    "RelaxedChannelMIP": "reductions_spap",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "Chain",
    "Channels",
    "Formulation",
    "GramAccumulator",
    "Guarantee",
    "LayerData",
    "NM",
    "ProblemForm",
    "Reduction",
    "SparsitySpec",
    "Unstructured",
    "restoration_stationarity",
    *_LAZY,
]
