"""C21 -- (sanity report) OPT per-layer parameters grow like about N^0.80, not N^0.5.

Statement: across the published OPT configurations (125M ... 175B) the least-squares exponent of
per-layer parameters against total parameters N is about 0.80; 125M has ~7.1M parameters per layer and
175B ~1.81B.  StructPrune's O(sqrt N) memory claim therefore needs L ∝ per-layer parameters, which OPT
does not follow.  Assumptions: configs as published (hidden size, layers, FFN = 4d, vocabulary 50272).
Citation: Zhang et al. 2022 (OPT), Table 1; StructPrune arXiv 2510.03246 (the O(sqrt N) claim).
Claim id: C21 (methods.md §11), registered as the report ``c21_opt_layer_scaling``.
"""

import itertools

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from prunekit.verification.claims import all_reports
from prunekit.verification.claims.c21_opt_layer_scaling import (
    OPT_CONFIGS,
    per_layer_params,
    scaling_exponent,
    total_params,
)

DECADE_PAIRS = [(a, b) for a, b in itertools.combinations(OPT_CONFIGS, 2)
                if total_params(*b) / total_params(*a) >= 10]


def test_report_registered_and_exponent():
    """Property: the report is registered and the fitted exponent is 0.80 +- 0.02 (far from 0.5)."""
    assert "c21_opt_layer_scaling" in [r.id for r in all_reports()]
    assert abs(scaling_exponent() - 0.80) < 0.02


def test_anchor_sizes():
    """Property: per-layer counts match methods.md (125M: 7.1M, 175B: 1.81B) and totals the model names."""
    assert abs(per_layer_params(768) / 1e6 - 7.1) < 0.05
    assert abs(per_layer_params(12288) / 1e9 - 1.81) < 0.01
    assert abs(total_params("opt-175b", 12288, 96) / 1e9 - 175) < 1.0
    assert abs(total_params("opt-125m", 768, 12) / 1e6 - 125) < 1.0


@given(seed=st.integers(0, 2**32 - 1))
def test_every_decade_wide_subrange_rejects_sqrt(seed):
    """Property: for any two OPT models a decade or more apart in N, the pairwise exponent lies in (0.6, 1.0)."""
    a, b = DECADE_PAIRS[np.random.default_rng(seed).integers(len(DECADE_PAIRS))]
    slope = (np.log(per_layer_params(b[1])) - np.log(per_layer_params(a[1]))) / (
        np.log(total_params(*b)) - np.log(total_params(*a)))
    assert 0.6 < slope < 1.0
