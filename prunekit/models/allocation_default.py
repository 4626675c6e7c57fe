"""``allocation="auto"`` (the recipe default): each setting gets the allocation that measured best for it [derived].

This is prunekit's own policy, not a rule from a paper: the measured rows behind it are in
``benchmarks/ALLOCATION.md`` (standard protocol, smollm2-135m, ppl on the first 64 x 512 windows of wiki.test.raw).
It is resolved once per run, when the run starts (:func:`resolve_allocation`); the run's recorded recipe holds
the concrete rule, so a replay does not depend on this table.  Pass any explicit rule (``"uniform"`` included) to
opt out.

* **N:M** -- ``uniform``: an N:M pattern fixes every group's ratio.
* **unstructured at sparsity >= 0.6** -- ``owl`` (Yin et al., ICML 2024; M = 5, lambda = 0.08): SparseGPT 70%
  173.82 against 186.70 uniform; the OWL paper reports its gains from 60% up.  Below 0.6 -- ``uniform`` (OWL is
  not measured better there).
* **channels** -- ``uniform``, although ``adaptive`` (FLAP's AL-AM) measured better in perplexity (FASP 30% MLP
  channels 44.05 against 45.26 uniform; the FLAP reference code: 50.82 against UL-UM's 53.66): per-layer widths
  differ under ``adaptive``, and a stock checkpoint has one width per model (transformers reads no per-layer
  width), so the saved model is zero-padded to its widest layer -- measured on the README's main job (FASP 30%,
  smollm2-135m): 134,515,008 parameters before and after, i.e. the physical savings that channel pruning is
  for would be gone from the output.  Pass ``allocation="adaptive"`` when quality matters more than size.

A method may state its own rule per structure kind (the formulation's ``allocation_defaults`` ClassVar,
``Method.allocation_default``); where it does, ``auto`` means that rule with that method.  ``fasp_refit`` and
``spap_refit`` (:mod:`prunekit.formulations.channel_quality`) state ``adaptive`` for channels: they are the
quality-first variants.
"""

from __future__ import annotations

import dataclasses

AUTO = "auto"
OWL_FROM_SPARSITY = 0.6
"""Unstructured sparsities from which ``auto`` means OWL."""


def auto_allocation(kind: str, sparsity: float, method=None) -> str:
    """The concrete allocation rule ``auto`` stands for (module docstring).

    Parameters
    ----------
    kind : the structure kind, ``"unstructured"``, ``"nm"`` or ``"channels"``.
    sparsity : the global target sparsity.
    method : the run's :class:`~prunekit.models.methods.Method`, or None; a rule it states for ``kind``
        (``Method.allocation_default``) takes precedence over the table.
    """
    stated = method.allocation_default(kind) if method is not None else None
    if stated is not None:
        return stated
    if kind == "unstructured":
        return "owl" if sparsity >= OWL_FROM_SPARSITY else "uniform"
    return "uniform"


def resolve_allocation(recipe):
    """``recipe`` with ``allocation="auto"`` replaced by :func:`auto_allocation`'s rule for its structure, sparsity
    and method; any other recipe is returned unchanged.  The method's stated rule is checked against the structure
    like a recipe's own (``allocation_rules.check_allocation``)."""
    if recipe.allocation != AUTO:
        return recipe
    rule = auto_allocation(recipe.structure.kind, float(recipe.sparsity), recipe.method)
    return dataclasses.replace(recipe, allocation=rule)


__all__ = ["AUTO", "OWL_FROM_SPARSITY", "auto_allocation", "resolve_allocation"]
