"""prunekit: post-training pruning of large language models as optimization.

Pruning problems are declared as immutable formulation objects (``prunekit.formulations``) and solved by
registered backends (``prunekit.solve``); reference solvers verify the torch solvers on toy layers
(``prunekit.verification``); ``prunekit.models`` prunes Hugging Face causal LMs through the same API.

Importing prunekit imports torch, numpy and networkx-free core modules only; optional backends (cvxpy,
transformers) are imported when used.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

from .errors import (  # noqa: E402
    BackendUnavailable,
    DataError,
    FormulationError,
    GramError,
    ModelError,
    NoSolverError,
    NonFiniteError,
    NumericalError,
    PrunekitError,
    ShapeError,
    SparsityError,
    VerificationError,
)
from .formulations import (  # noqa: E402
    NM,
    Channels,
    Formulation,
    GramAccumulator,
    Guarantee,
    LayerData,
    SparsitySpec,
    Unstructured,
)
from .solvers import Solution, SolverOptions, register_solver, solve  # noqa: E402

_LAZY = {
    # formulations (lazy, see prunekit.formulations)
    **{name: "prunekit.formulations" for name in (
        "FixedMaskRestoration", "MultipleRemoval", "MagnitudePruning", "WandaPruning", "SparseGPTPruning",
        "MaskedReconstructionMIP", "SPAPRelaxation", "CoupledStructuredRemoval", "FLAPRemoval",
        "PenaltyRelaxation", "L1Relaxation", "ADMMSplit", "SparseLLMSplit", "LayerAllocation",
    )},
    # model-level API (needs the [hf] extra for Hugging Face models)
    "prune": "prunekit.api",
    "plan": "prunekit.api",
    "apply_": "prunekit.api",
    "PruneResult": "prunekit.api",
    "Recipe": "prunekit.models.recipe",
    "PruningPlan": "prunekit.models.plan",
    "load_pruned": "prunekit.models.saving",
    "load_model": "prunekit.models.sources",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'prunekit' has no attribute {name!r}")


__all__ = [
    "BackendUnavailable", "Channels", "DataError", "Formulation", "FormulationError", "GramAccumulator",
    "GramError", "Guarantee", "LayerData", "ModelError", "NM", "NoSolverError", "NonFiniteError",
    "NumericalError", "PrunekitError", "ShapeError", "Solution", "SolverOptions", "SparsityError",
    "SparsitySpec", "Unstructured", "VerificationError", "register_solver", "solve", *_LAZY,
]
