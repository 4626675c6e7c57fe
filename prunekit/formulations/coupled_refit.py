"""``fasp_refit``: FASP's channel removal with prunekit's quality-first model-level defaults [derived].

The layer problem, its guarantee and its solvers are FASP's (:class:`~prunekit.formulations.coupled.
CoupledStructuredRemoval`, arXiv 2501.09412): score columns ``S_j = ||W_:,j||_1 ||Z_j||_2``, keep the best groups,
restore the kept columns by damped least squares.  What differs is what a whole-model run does around it by default
(:mod:`~prunekit.formulations.channel_quality`: adaptive allocation, a refit of every linear module of each block);
``fasp`` keeps FASP as published (uniform per-layer ratio, no block refit).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .channel_quality import AdaptiveRefitDefaults
from .coupled import CoupledStructuredRemoval


@dataclass(frozen=True, eq=False)
class RefitCoupledRemoval(AdaptiveRefitDefaults, CoupledStructuredRemoval):
    """FASP (same fields, problem and solvers as :class:`CoupledStructuredRemoval`) with the [derived] model-level
    defaults of :class:`~prunekit.formulations.channel_quality.AdaptiveRefitDefaults` -- method ``fasp_refit``.
    Measured: :data:`MEASURED`."""

    paper: ClassVar[str] = "FASP arXiv 2501.09412 with adaptive allocation and a block refit [derived]"
    method_name: ClassVar[str] = "fasp_refit"


MEASURED = ("fasp 45.26 (uniform), 44.05 (adaptive); fasp_refit 41.79 (16 epochs: 41.78, at twice the cost; "
            "FLAP's reference code, AL-AM: 50.82)")
"""Perplexities behind the defaults (standard protocol, 30% MLP channels)."""

__all__ = ["MEASURED", "RefitCoupledRemoval"]
