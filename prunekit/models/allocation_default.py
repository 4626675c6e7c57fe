"""``allocation="auto"`` (the recipe default): each setting gets the allocation that measured best for it [derived].

This is prunekit's own policy, not a rule from a paper: the measured rows behind it are in
``benchmarks/ALLOCATION.md`` (standard protocol, smollm2-135m, ppl on the first 64 x 512 windows of wiki.test.raw).
It is resolved once per run, when the model is known (:func:`resolve_allocation`); the run's recorded recipe holds
the concrete rule, so a replay does not depend on this table.  Pass any explicit rule (``"uniform"`` included) to
opt out.

* **N:M** -- ``uniform``: an N:M pattern fixes every group's ratio.
* **unstructured at sparsity >= 0.6** -- ``owl`` (Yin et al., ICML 2024; M = 5, lambda = 0.08): SparseGPT 70%
  173.82 against 186.70 uniform; the OWL paper reports its gains from 60% up.  Below 0.6 -- ``uniform`` (OWL is
  not measured better there).
* **channels with FASP or FLAP on a model whose coupled groups are known before the run** (a family adapter) --
  ``adaptive`` (FLAP's AL-AM): FASP 30% MLP channels 44.05 against 45.26 uniform; AL-AM is FLAP's own default
  (the reference code: 50.82 against UL-UM's 53.66).  A model pruned through the generic adapter derives its
  groups block by block during the run, too late for a global threshold, and MoE experts must keep one width per
  expert set: those runs stay ``uniform``.  Other channel methods -- ``uniform`` (adaptive not measured better).
"""

from __future__ import annotations

import dataclasses

AUTO = "auto"
OWL_FROM_SPARSITY = 0.6
"""Unstructured sparsities from which ``auto`` means OWL."""
ADAPTIVE_CHANNEL_METHODS = frozenset({"fasp", "flap"})
"""Channel methods for which ``auto`` means FLAP's adaptive structure (where the groups are known up front)."""


def auto_allocation(method: str, kind: str, sparsity: float, *, groups_known_before_run: bool = True) -> str:
    """The concrete allocation rule ``auto`` stands for (module docstring).

    Parameters
    ----------
    method : the recipe method's name (``recipe.method.name``).
    kind : the structure kind, ``"unstructured"``, ``"nm"`` or ``"channels"``.
    sparsity : the global target sparsity.
    groups_known_before_run : False when the channel groups are derived during the run (generic adapter).
    """
    if kind == "unstructured":
        return "owl" if sparsity >= OWL_FROM_SPARSITY else "uniform"
    if kind == "channels" and method in ADAPTIVE_CHANNEL_METHODS and groups_known_before_run:
        return "adaptive"
    return "uniform"


def resolve_allocation(recipe, adapter=None):
    """``recipe`` with ``allocation="auto"`` replaced by :func:`auto_allocation`'s rule for this model (``adapter``:
    the model's family adapter; ``None`` or the generic adapter = groups derived during the run); any other
    recipe is returned unchanged."""
    if recipe.allocation != AUTO:
        return recipe
    known = adapter is not None and getattr(adapter, "name", "generic") != "generic"
    rule = auto_allocation(recipe.method.name, recipe.structure.kind, float(recipe.sparsity),
                           groups_known_before_run=known)
    return dataclasses.replace(recipe, allocation=rule)


__all__ = ["ADAPTIVE_CHANNEL_METHODS", "AUTO", "OWL_FROM_SPARSITY", "auto_allocation", "resolve_allocation"]
