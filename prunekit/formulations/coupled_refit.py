"""``fasp_refit``: FASP's channel removal with prunekit's quality-first model-level defaults [derived].

The layer problem, its guarantee and its solvers are FASP's (:class:`~prunekit.formulations.coupled.
CoupledStructuredRemoval`, arXiv 2501.09412): score columns ``S_j = ||W_:,j||_1 ||Z_j||_2``, keep the best groups,
restore the kept columns by damped least squares.  What differs is what a whole-model run does around it by
default; ``fasp`` keeps FASP as published (uniform per-layer ratio, no block refit).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Mapping

from .coupled import CoupledStructuredRemoval


@dataclass(frozen=True, eq=False)
class RefitCoupledRemoval(CoupledStructuredRemoval):
    """FASP (same fields, problem and solvers as :class:`CoupledStructuredRemoval`) with two [derived] model-level
    defaults, not in FASP's paper -- method ``fasp_refit``:

    * ``allocation_defaults = {"channels": "adaptive"}``: ``allocation="auto"`` means FLAP's adaptive structure
      (AL-AM; one global threshold over standardized unit scores, ``prunekit.models.allocation_rules``) instead of
      one ratio per layer.  Per-layer widths then differ, and a stock checkpoint (one ``intermediate_size`` per
      model) is zero-padded to its widest layer: the saved model keeps the dense parameter count, the compute
      savings need a runtime that reads per-layer widths.  Pass ``allocation="uniform"`` for a smaller checkpoint.
    * ``block_refit_default``: ``block_refit="auto"`` fits every linear module of each block (``scope="block"``,
      attention included) to the dense model's own block outputs, masks fixed, over ``epochs`` passes of the
      calibration windows (``prunekit.models.block_refit``, problem (2)); the certificate keeps a block's refit
      only when its calibration error dropped.

    Measured on the standard protocol (smollm2-135m, 30% of the MLP channels; benchmarks/ALLOCATION.md and
    RESULTS.md, "Quality targets"): see :data:`MEASURED`.
    """

    paper: ClassVar[str] = "FASP arXiv 2501.09412 with adaptive allocation and a block refit [derived]"
    method_name: ClassVar[str] = "fasp_refit"
    allocation_defaults: ClassVar[Mapping[str, str]] = {"channels": "adaptive"}
    block_refit_default: ClassVar[Mapping[str, object]] = {"scope": "block", "epochs": 8}


MEASURED = ("fasp 45.26 (uniform), 44.05 (adaptive); fasp_refit 41.79 (16 epochs: 41.78, at twice the cost; "
            "FLAP's reference code, AL-AM: 50.82)")
"""Perplexities behind the defaults (standard protocol, 30% MLP channels)."""

__all__ = ["MEASURED", "RefitCoupledRemoval"]
