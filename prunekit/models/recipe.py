"""Recipe: what to prune and how, as one frozen, versioned, serializable dataclass (design.md principle 14).

A recipe names

* the **method** -- a :class:`~prunekit.models.methods.Method`, i.e. a formulation class: a built-in name
  (``"wanda"``, ``"fasp"`` ...), ``"package.module:Class"`` for a formulation of your own, or the class itself;
* the **structure**, parsed once into a :class:`~prunekit.models.structure.Structure` (``unstructured``, ``2:4``
  or any ``N:M``, ``channels``), which the method must support;
* the target **sparsity** (N:M fixes it to n/m: another value is an error) and its **allocation** across layers
  (``uniform``, or ``softmax`` at ``temperature`` / ``global_threshold`` from dense importance scores, §7.3);
* for channel methods, whether attention is pruned too (``attention``: ``none`` = MLP channels only,
  ``heads`` = whole heads / GQA groups, ``vo_channels`` = FASP's W_V rows + W_O columns) and the width
  rounding ``round_to`` (kept widths become multiples of it, for fast kernels);
* ``options``: values for the method's formulation fields (checked against that class's fields), the solver
  **backend** and typed solver options (:class:`prunekit.solvers.options.SolverOptions` fields), ``damping``;
* the :class:`CalibrationSettings` (source, nsamples, seqlen, seed, input mode) and the compute ``dtype``.

Recipes are plain data: explicit keyword fields, no ``**kwargs``, no aliases.  Contradictory settings are
errors.  They round-trip through ``to_dict``/``from_dict``, JSON and YAML (an unquoted ``2:4`` stays a structure,
not YAML 1.1's base-60 number 124), carry :data:`VERSION`, and reject unknown keys with an error that lists the
valid ones.  :meth:`Recipe.coerce` accepts a Recipe, a dict or a recipe file path.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from ..errors import DataError, FormulationError
from .methods import Method, resolve_method
from .structure import Structure

VERSION = 2

ALLOCATIONS = ("uniform", "softmax", "global_threshold")
ATTENTION = ("none", "heads", "vo_channels")
MODES = ("auto", "propagated", "sequential", "dense", "dense_sequential")
DTYPES = ("float32", "float64", "bfloat16", "float16")


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

    def resolved_mode(self, method: Method) -> str:
        """``mode``, with "auto" resolved to the method's declared ``calibration_mode``."""
        return method.calibration_mode if self.mode == "auto" else self.mode


@dataclass(frozen=True)
class Recipe:
    """A complete, replayable description of one pruning run (see the module docstring for each field).

    ``method`` and ``structure`` accept text (or a class) and are stored parsed: ``recipe.method`` is a
    :class:`Method`, ``recipe.structure`` a :class:`Structure`.  ``sparsity`` defaults to 0.5 for unstructured and
    channels and to n/m for N:M.
    """

    method: Any = "wanda"
    structure: Any = "unstructured"
    sparsity: Optional[float] = None
    options: Mapping[str, Any] = field(default_factory=dict)
    allocation: str = "uniform"
    temperature: float = 1.0
    max_sparsity: float = 0.95
    attention: str = "none"
    backend: str = "auto"
    solver_options: Mapping[str, Any] = field(default_factory=dict)
    calibration: CalibrationSettings = field(default_factory=CalibrationSettings)
    round_to: int = 1
    damping: float = 0.01
    dtype: str = "float32"
    version: int = VERSION

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "method", resolve_method(self.method))
        set_(self, "structure", Structure.parse(self.structure))
        if isinstance(self.calibration, Mapping):
            set_(self, "calibration", _build(CalibrationSettings, dict(self.calibration), "calibration"))
        for name in ("options", "solver_options"):
            value = getattr(self, name)
            if not isinstance(value, Mapping):
                raise FormulationError(f"{name} must be a mapping of field -> value, got {type(value).__name__}.")
            set_(self, name, dict(value))
        fixed = self.structure.fixed_ratio
        if fixed is not None:
            if self.sparsity is not None and not _same_ratio(self.sparsity, fixed):
                raise FormulationError(
                    f"sparsity={self.sparsity!r} contradicts structure {self.structure} (it prunes exactly {fixed:g}). "
                    f"Fix: leave sparsity out with an N:M structure.")
            set_(self, "sparsity", fixed)
        elif self.sparsity is None:
            set_(self, "sparsity", 0.5)
        self.validate()

    # ------------------------------------------------------------------ rules
    def validate(self) -> None:
        if self.version != VERSION:
            raise DataError(
                f"recipe version {self.version} is not supported (this prunekit reads version {VERSION}). "
                f"Fix: re-create the recipe with this prunekit version (version 2 renamed method_options to options)."
            )
        kind = self.structure.kind
        self.method.check_structure(self.structure)
        self.method.check_options(self.options)
        if isinstance(self.sparsity, bool) or not isinstance(self.sparsity, (int, float)) or not 0 <= self.sparsity < 1:
            raise FormulationError(f"sparsity must be a number in [0, 1), got {self.sparsity!r}.")
        if self.allocation not in ALLOCATIONS:
            raise FormulationError(f"allocation must be one of {ALLOCATIONS}, got {self.allocation!r}.")
        if self.allocation != "uniform" and kind == "nm":
            raise FormulationError(f"allocation={self.allocation!r} cannot change an N:M ratio. "
                                   f"Fix: use allocation='uniform' with structure={str(self.structure)!r}.")
        if self.attention not in ATTENTION:
            raise FormulationError(f"attention must be one of {ATTENTION}, got {self.attention!r}.")
        if self.attention != "none" and kind != "channels":
            raise FormulationError(f"attention={self.attention!r} applies to structure='channels' only.")
        if isinstance(self.temperature, bool) or not (isinstance(self.temperature, (int, float)) and self.temperature > 0):
            raise FormulationError(f"temperature must be > 0, got {self.temperature!r}.")
        if not (isinstance(self.max_sparsity, (int, float)) and self.sparsity <= self.max_sparsity < 1):
            raise FormulationError(f"max_sparsity must lie in [sparsity, 1), got {self.max_sparsity!r}.")
        if isinstance(self.round_to, bool) or not isinstance(self.round_to, int) or self.round_to < 1:
            raise FormulationError(f"round_to must be a positive int, got {self.round_to!r}.")
        if self.round_to > 1 and kind != "channels":
            raise FormulationError(f"round_to={self.round_to} rounds kept channel widths; structure "
                                   f"{str(self.structure)!r} removes no channels. Fix: drop round_to.")
        if isinstance(self.damping, bool) or not (isinstance(self.damping, (int, float)) and self.damping >= 0):
            raise FormulationError(f"damping must be >= 0, got {self.damping!r}.")
        if self.dtype not in DTYPES:
            raise FormulationError(f"dtype must be one of {DTYPES}, got {self.dtype!r}.")
        for name, value in (("solver_options", self.solver_options), ("options", self.options)):
            if not all(isinstance(k, str) for k in value):
                raise FormulationError(f"{name} keys must be strings (field names), got {sorted(map(repr, value))}.")

    @property
    def mode(self) -> str:
        """The calibration mode in force (``calibration.mode`` with "auto" resolved for this method)."""
        return self.calibration.resolved_mode(self.method)

    def replace(self, **changes: Any) -> "Recipe":
        """A copy with ``changes``; switching to or from N:M re-derives the sparsity unless one is given."""
        if "structure" in changes and "sparsity" not in changes and \
                "nm" in (self.structure.kind, Structure.parse(changes["structure"]).kind):
            changes["sparsity"] = None
        return dataclasses.replace(self, **changes)

    @classmethod
    def coerce(cls, value: Union["Recipe", Mapping[str, Any], str, os.PathLike]) -> "Recipe":
        """A Recipe from a Recipe, a dict of fields, or a recipe file path (JSON, or YAML by suffix)."""
        if isinstance(value, Recipe):
            return value
        if isinstance(value, Mapping):
            return cls.from_dict(value)
        if isinstance(value, (str, os.PathLike)):
            return cls.load(value)
        raise DataError(f"a recipe must be a Recipe, a dict or a recipe file path, got {type(value).__name__}.")

    # ------------------------------------------------------------------ serialization
    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["method"] = self.method.name
        out["structure"] = str(self.structure)
        out["options"] = dict(self.options)
        out["solver_options"] = dict(self.solver_options)
        out["calibration"] = dataclasses.asdict(self.calibration)
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
            return cls.from_dict(yaml.load(text, Loader=_loader()) or {})
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
        if not path.is_file():
            raise DataError(f"recipe file {path} does not exist. Fix: pass the path of a .json or .yaml recipe.")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"cannot read recipe file {path}: {exc}") from exc
        return cls.from_yaml(text) if path.suffix in (".yaml", ".yml") else cls.from_json(text)


def _same_ratio(a, b) -> bool:
    return isinstance(a, (int, float)) and not isinstance(a, bool) and abs(float(a) - b) < 1e-9


def _build(cls, data: dict[str, Any], what: str):
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(valid))
    if unknown:
        raise DataError(f"unknown {what} key(s) {unknown}; valid keys: {valid}.")
    return cls(**data)


def _loader():
    """A YAML SafeLoader without YAML 1.1's base-60 integers (``2:4`` stays the string "2:4")."""
    yaml = _yaml()

    class RecipeLoader(yaml.SafeLoader):
        pass

    RecipeLoader.yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:int"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    decimal = re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$")
    RecipeLoader.add_implicit_resolver("tag:yaml.org,2002:int", decimal, list("-+0123456789"))
    return RecipeLoader


def _yaml():
    try:
        import yaml
    except ImportError as exc:  # pragma: no cover - pyyaml is in the [hf] extra
        from ..errors import BackendUnavailable

        raise BackendUnavailable("YAML recipes need pyyaml: pip install 'prunekit[hf]' (or pyyaml).") from exc
    return yaml
