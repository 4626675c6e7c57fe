"""Model-level defaults shared by prunekit's quality-first channel variants (``fasp_refit``, ``spap_refit``) [derived].

A mixin of two ClassVars, no fields and no layer math: the variant's layer problem, guarantee and solvers are its
base method's.  Not in FASP's or SPAP's papers; measured on the standard protocol (smollm2-135m, 30% of the MLP
channels; benchmarks/ALLOCATION.md, RESULTS.md "Quality targets").

* ``allocation_defaults = {"channels": "adaptive"}``: ``allocation="auto"`` means FLAP's adaptive structure (AL-AM;
  one global threshold over standardized unit scores, ``prunekit.models.allocation_rules``) instead of one ratio per
  layer.  Per-layer widths then differ, and a stock checkpoint (one ``intermediate_size`` per model) is zero-padded
  to its widest layer: the saved model keeps the dense parameter count; the compute savings need a runtime that
  reads per-layer widths.  Pass ``allocation="uniform"`` for a smaller checkpoint.
* ``block_refit_default = {"scope": "block", "epochs": 8}``: ``block_refit="auto"`` fits every linear module of each
  block (attention included) to the dense model's own block outputs, masks fixed, over 8 passes of the calibration
  windows (``prunekit.models.block_refit``, problem (2)); the certificate keeps a block's refit only when its
  calibration error dropped.  16 epochs measured no better (FASP: 41.78 against 41.79) at twice the cost.
"""

from __future__ import annotations

from typing import ClassVar, Mapping


class AdaptiveRefitDefaults:
    """The two model-level defaults of the module docstring; put it first among a variant's bases."""

    allocation_defaults: ClassVar[Mapping[str, str]] = {"channels": "adaptive"}
    block_refit_default: ClassVar[Mapping[str, object]] = {"scope": "block", "epochs": 8}


__all__ = ["AdaptiveRefitDefaults"]
