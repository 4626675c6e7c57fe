"""ProblemForm: structural facts about a formulation, computed once and read by dispatch.

Solvers and reduction chains consult these facts instead of ``isinstance`` ladders
(cvxpy's ``ProblemForm`` is the model).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ProblemForm:
    """Cached structural facts of a formulation.

    Attributes
    ----------
    is_mixed_integer : bool
        The problem has binary (mask) variables.
    has_bilinear : bool
        A bilinear constraint such as W diag(s) = 0 couples continuous and binary variables.
    is_convex : bool
        The continuous problem is convex (for a fixed mask, or as stated).
    row_separable : bool
        The objective splits into independent per-row problems sharing G (methods.md §1, fact 1).
    structured : bool
        All rows share one kept set (channels/heads): physical removal is possible.
    num_weights : int
        m * n, the size dispatch compares against a solver's ``max_weights``.
    in_features : int
        n, compared against a solver's ``max_in_features`` (brute force enumerates columns).
    """

    is_mixed_integer: bool
    has_bilinear: bool
    is_convex: bool
    row_separable: bool
    structured: bool
    num_weights: int
    in_features: int
