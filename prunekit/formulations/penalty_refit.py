"""``spap_refit``: SPAP's penalty method with prunekit's quality-first model-level defaults [derived].

The layer problem (the chain MIP -> relaxation -> penalty), its guarantee and its solvers are SPAP's
(:class:`~prunekit.formulations.penalty.PenaltyRelaxation`, arXiv 2505.03373).  What differs is what a whole-model
run does around it by default (:mod:`~prunekit.formulations.channel_quality`: adaptive allocation, a refit of every
linear module of each block); ``spap`` keeps SPAP's own (uniform per-layer ratio, no block refit).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .channel_quality import AdaptiveRefitDefaults
from .penalty import PenaltyRelaxation


@dataclass(frozen=True, eq=False)
class RefitPenaltyRelaxation(AdaptiveRefitDefaults, PenaltyRelaxation):
    """SPAP (same fields, problem, chain and solvers as :class:`PenaltyRelaxation`) with the [derived] model-level
    defaults of :class:`~prunekit.formulations.channel_quality.AdaptiveRefitDefaults` -- method ``spap_refit``.
    Measured: :data:`MEASURED`."""

    paper: ClassVar[str] = "SPAP (Hu & Yuan, arXiv 2505.03373) with adaptive allocation and a block refit [derived]"
    method_name: ClassVar[str] = "spap_refit"


MEASURED = ("spap 45.23 (uniform); spap_refit 41.67 (fasp_refit 41.79; FLAP's reference code, AL-AM: 50.82)")
"""Perplexities behind the defaults (standard protocol, 30% MLP channels)."""

__all__ = ["MEASURED", "RefitPenaltyRelaxation"]
