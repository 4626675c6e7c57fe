"""Recipe: what to prune and how, as one frozen, versioned, serializable dataclass (design.md principle 14).

A recipe names

* the **method** (a row of :mod:`prunekit.models.methods`: magnitude, wanda, sparsegpt, mrp, fista, spap,
  fasp, flap, admm) and the **structure** (``unstructured``, ``2:4``, ``4:8`` or any ``N:M``, ``channels``);
* the target **sparsity** and its **allocation** across layers (``uniform``, or ``softmax`` at
  ``temperature`` / ``global_threshold`` from dense importance scores, methods.md §7.3);
* for channel methods, whether attention is pruned too (``attention``: ``none`` = MLP channels only,
  ``heads`` = whole heads / GQA groups, ``vo_channels`` = FASP's W_V rows + W_O columns) and the width
  rounding ``round_to`` (kept widths become multiples of it, for fast kernels);
* the solver **backend** and typed solver options (:class:`prunekit.solvers.options.SolverOptions` fields),
  the formulation hyperparameters (``method_options``: fields of the formulation dataclass), ``damping``;
* the :class:`CalibrationSettings` (source, nsamples, seqlen, seed, input mode) and the compute ``dtype``.

Recipes are plain data: explicit keyword fields, no ``**kwargs``, no aliases.  They round-trip through
``to_dict``/``from_dict``, JSON and YAML, carry :data:`VERSION`, and reject unknown keys with an error that
lists the valid ones.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..errors import DataError, FormulationError

VERSION = 1

ALLOCATIONS = ("uniform", "softmax", "global_threshold")
ATTENTION = ("none", "heads", "vo_channels")
MODES = ("auto", "propagated", "sequential", "dense", "dense_sequential")
DTYPES = ("float32", "float64", "bfloat16", "float16")
_NM = re.compile(r"^(\d+):(\d+)$")


def parse_structure(structure: str) -> tuple[str, tuple[int, int] | None]:
    """``"unstructured"`` -> ("unstructured", None); ``"2:4"`` -> ("nm", (2, 4)); ``"channels"`` -> ("channels", None)."""
    if structure in ("unstructured", "channels"):
        return structure, None
    match = _NM.match(str(structure))
    if match:
        n, m = int(match.group(1)), int(match.group(2))
        if 0 < n < m:
            return "nm", (n, m)
    raise FormulationError(
        f"structure {structure!r} is not understood. Fix: use 'unstructured', 'channels' or 'N:M' with 0 < N < M "
        f"(e.g. '2:4', '4:8')."
    )


@dataclass(frozen=True)
class CalibrationSettings:
    """Calibration data and the way inputs reach each block.

    Attributes
    ----------
    source : str
        ``"wikitext2"``, a text-file path, or ``"self"`` (text sampled from the model; offline default).
    nsamples, seqlen : int
        ``nsamples`` random windows of ``seqlen`` tokens (methods.md §2).
    seed : int
        Seed of the window sampler (``random.seed(seed)``, 0 as in SparseGPT/Wanda).
    mode : str
        ``propagated`` -- block inputs come through the already pruned blocks, all sublayer inputs of a block
        are collected in one pass (SparseGPT/Wanda, methods.md §2);
        ``sequential`` -- as propagated, but inside a block stages are pruned in order with intra-layer error
        correction X* (targets from the dense block);
        ``dense`` -- every block gets the dense model's inputs (independent blocks);
        ``dense_sequential`` -- FISTAPruner: dense inputs across blocks + intra-layer X* (methods.md §5.4);
        ``auto`` -- ``dense_sequential`` for fista, ``propagated`` otherwise.
    """

    source: str = "wikitext2"
    nsamples: int = 128
    seqlen: int = 2048
    seed: int = 0
    mode: str = "auto"

    def __post_init__(self) -> None:
        for name in ("nsamples", "seqlen"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise FormulationError(f"calibration.{name} must be a positive int, got {value!r}.")
        if self.mode not in MODES:
            raise FormulationError(f"calibration.mode must be one of {MODES}, got {self.mode!r}.")

    def resolved_mode(self, method: str) -> str:
        if self.mode != "auto":
            return self.mode
        return "dense_sequential" if method == "fista" else "propagated"


@dataclass(frozen=True)
class Recipe:
    """A complete, replayable description of one pruning run (see the module docstring for each field)."""

    method: str = "wanda"
    structure: str = "unstructured"
    sparsity: float = 0.5
    allocation: str = "uniform"
    temperature: float = 1.0
    max_sparsity: float = 0.95
    attention: str = "none"
    backend: str = "auto"
    solver_options: Mapping[str, Any] = field(default_factory=dict)
    method_options: Mapping[str, Any] = field(default_factory=dict)
    calibration: CalibrationSettings = field(default_factory=CalibrationSettings)
    round_to: int = 1
    damping: float = 0.01
    dtype: str = "float32"
    version: int = VERSION

    def __post_init__(self) -> None:
        if isinstance(self.calibration, Mapping):
            object.__setattr__(self, "calibration", _build(CalibrationSettings, dict(self.calibration), "calibration"))
        object.__setattr__(self, "solver_options", dict(self.solver_options))
        object.__setattr__(self, "method_options", dict(self.method_options))
        self.validate()

    # ------------------------------------------------------------------ rules
    def validate(self) -> None:
        from .methods import method_spec

        if self.version != VERSION:
            raise DataError(
                f"recipe version {self.version} is not supported (this prunekit reads version {VERSION}). "
                f"Fix: re-create the recipe with this prunekit version."
            )
        kind, _ = parse_structure(self.structure)
        method_spec(self.method).check_structure(kind, self.structure)
        if isinstance(self.sparsity, bool) or not isinstance(self.sparsity, (int, float)) or not 0 <= self.sparsity < 1:
            raise FormulationError(f"sparsity must be a number in [0, 1), got {self.sparsity!r}.")
        if self.allocation not in ALLOCATIONS:
            raise FormulationError(f"allocation must be one of {ALLOCATIONS}, got {self.allocation!r}.")
        if self.attention not in ATTENTION:
            raise FormulationError(f"attention must be one of {ATTENTION}, got {self.attention!r}.")
        if self.attention != "none" and kind != "channels":
            raise FormulationError(f"attention={self.attention!r} applies to structure='channels' only.")
        if not (isinstance(self.temperature, (int, float)) and self.temperature > 0):
            raise FormulationError(f"temperature must be > 0, got {self.temperature!r}.")
        if not (isinstance(self.max_sparsity, (int, float)) and self.sparsity <= self.max_sparsity < 1):
            raise FormulationError(f"max_sparsity must lie in [sparsity, 1), got {self.max_sparsity!r}.")
        if isinstance(self.round_to, bool) or not isinstance(self.round_to, int) or self.round_to < 1:
            raise FormulationError(f"round_to must be a positive int, got {self.round_to!r}.")
        if not (isinstance(self.damping, (int, float)) and self.damping >= 0):
            raise FormulationError(f"damping must be >= 0, got {self.damping!r}.")
        if self.dtype not in DTYPES:
            raise FormulationError(f"dtype must be one of {DTYPES}, got {self.dtype!r}.")
        for name, value in (("solver_options", self.solver_options), ("method_options", self.method_options)):
            if not all(isinstance(k, str) for k in value):
                raise FormulationError(f"{name} keys must be strings (field names), got {sorted(map(repr, value))}.")

    @property
    def structure_kind(self) -> str:
        return parse_structure(self.structure)[0]

    @property
    def nm(self) -> tuple[int, int] | None:
        return parse_structure(self.structure)[1]

    def replace(self, **changes: Any) -> "Recipe":
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ serialization
    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["solver_options"] = dict(self.solver_options)
        out["method_options"] = dict(self.method_options)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Recipe":
        if not isinstance(data, Mapping):
            raise DataError(f"a recipe must be a mapping of field -> value, got {type(data).__name__}.")
        data = dict(data)
        data.setdefault("version", VERSION)
        return _build(cls, data, "recipe")

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False)

    @classmethod
    def from_json(cls, text: str) -> "Recipe":
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise DataError(f"recipe is not valid JSON: {exc}") from exc

    def to_yaml(self) -> str:
        yaml = _yaml()
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> "Recipe":
        yaml = _yaml()
        try:
            return cls.from_dict(yaml.safe_load(text) or {})
        except yaml.YAMLError as exc:
            raise DataError(f"recipe is not valid YAML: {exc}") from exc

    def save(self, path: str | Path) -> Path:
        """Write JSON (``.json``) or YAML (``.yaml``/``.yml``), chosen by the suffix."""
        path = Path(path)
        text = self.to_yaml() if path.suffix in (".yaml", ".yml") else self.to_json()
        path.write_text(text)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Recipe":
        path = Path(path)
        if not path.exists():
            raise DataError(f"recipe file {path} does not exist.")
        text = path.read_text()
        return cls.from_yaml(text) if path.suffix in (".yaml", ".yml") else cls.from_json(text)


def _build(cls, data: dict[str, Any], what: str):
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(valid))
    if unknown:
        raise DataError(f"unknown {what} key(s) {unknown}; valid keys: {valid}.")
    return cls(**data)


def _yaml():
    try:
        import yaml
    except ImportError as exc:  # pragma: no cover - pyyaml is in the [hf] extra
        from ..errors import BackendUnavailable

        raise BackendUnavailable("YAML recipes need pyyaml: pip install 'prunekit[hf]' (or pyyaml).") from exc
    return yaml
