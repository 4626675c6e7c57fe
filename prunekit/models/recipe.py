"""Recipe: what to prune and how, as one frozen, versioned, serializable dataclass (design.md principle 14).

A recipe names

* the **method** -- a :class:`~prunekit.models.methods.Method`, i.e. a formulation class: a built-in name
  (``"wanda"``, ``"fasp"`` ...), ``"package.module:Class"`` for a formulation of your own, or the class itself;
* the **structure**, parsed once into a :class:`~prunekit.models.structure.Structure` (``unstructured``, ``2:4``
  or any ``N:M``, ``channels``), which the method must support;
* the target **sparsity** (N:M fixes it to n/m: another value is an error) and its **allocation** across layers
  (:mod:`prunekit.models.allocation_rules`; every rule meets the global weight budget): ``auto`` (default: the
  allocation measured best for the setting, resolved when the run starts -- OWL for unstructured >= 60%,
  uniform otherwise; :mod:`prunekit.models.allocation_default`); ``uniform``; ``softmax`` at
  ``temperature`` / ``global_threshold`` from dense importance scores (StructPrune, §7.3); ``owl`` (unstructured:
  outlier-weighted per block, ``owl_m`` = M, ``owl_lambda`` = lambda); ``adaptive`` (channels: FLAP's AL-AM, one
  threshold on per-target standardized unit scores); ``max_sparsity`` caps every target;
* for channel methods, whether attention is pruned too (``attention``: ``none`` = MLP channels only,
  ``heads`` = whole heads / GQA groups, ``vo_channels`` = FASP's W_V rows + W_O columns) and the width
  rounding ``round_to`` (kept widths become multiples of it, for fast kernels; the default ``"auto"`` rounds
  groups of >= 1024 units to multiples of 64 and leaves smaller ones alone -- measured in benchmarks/ROUND_TO.md);
* ``options``: values for the method's formulation fields (checked against that class's fields), the solver
  **backend** and typed solver options (:class:`prunekit.solvers.options.SolverOptions` fields), ``damping``;
* the :class:`CalibrationSettings` (source, nsamples, seqlen, seed, input mode) and the compute ``dtype``;
* which linear modules are pruned: ``targets`` / ``ignore`` patterns (llm-compressor style, see
  :mod:`prunekit.models.targets`: ``"lm_head"`` matches a dotted-name suffix, ``"re:<regex>"`` the whole name,
  ``"Linear"`` / ``"Conv1D"`` a module kind; default: every linear layer of the decoder blocks but MoE routers and
  gates), and ``unrouted``: what happens to a module no calibration token reaches (an MoE expert never routed
  to): ``"dense"`` (default, kept and reported) or ``"magnitude"``.  For ``structure="channels"`` both policies
  prune such an expert to its siblings' width by weight-norm channel scores (every expert of a block must keep
  one width; :mod:`prunekit.models.families.expert_channels`), and its record says so;
* ``block_refit``: after a block's layer problems are solved, fit the kept weights of the whole block to the
  dense block's outputs, masks fixed (:mod:`prunekit.models.block_refit`, [derived]): ``"auto"`` (default: the
  method's own default, resolved when the run starts and recorded), ``false`` / None (off), ``true`` (on, default
  settings) or a mapping of :class:`~prunekit.models.block_refit.BlockRefit` fields (``epochs``, ``lr``, ``seed``,
  ``schedule``, ``retries``, ``scope``, ``targets``).

Recipes are plain data: explicit keyword fields, no ``**kwargs``, no aliases.  Contradictory settings are
errors.  They round-trip through ``to_dict``/``from_dict``, JSON and YAML (an unquoted ``2:4`` stays a structure,
not YAML 1.1's base-60 number 124), carry :data:`VERSION`, and reject unknown keys with an error that lists the
valid ones.  :meth:`Recipe.coerce` accepts a Recipe, a dict or a recipe file path.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from ..errors import DataError, FormulationError
from .methods import Method, resolve_method
from .structure import Structure

VERSION = 2

ALLOCATIONS = ("auto", "uniform", "softmax", "global_threshold", "owl", "adaptive")  # models.allocation_rules
ATTENTION = ("none", "heads", "vo_channels")
MODES = ("auto", "propagated", "sequential", "dense", "dense_sequential")
DTYPES = ("float32", "float64", "bfloat16", "float16")


@dataclass(frozen=True)
class CalibrationSettings:
    """Calibration data and the way inputs reach each block.

    Attributes
    ----------
    source : str
        ``"wikitext2"`` (local files in the data folder first, else ``datasets``), ``"c4"`` (the papers' C4 shard
        and sampling; ``"c4:PATH"`` for a local copy), ``"hf:NAME[:CONFIG][:SPLIT]"`` (any hub dataset, e.g.
        ``hf:wikitext:wikitext-2-raw-v1:train[:2000]``; ``hf:NAME::SPLIT`` without a config), a text / json /
        jsonl (``.gz``) file path, or ``"self"`` (text sampled from the model; offline default).  In Python,
        ``prunekit.prune`` also takes tensors, tokenized batches, datasets, DataLoaders and lists
        (:mod:`prunekit.calibration_sources`).
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
    text_column : str
        The column (datasets) or field (json / jsonl records) holding the text; ``"text"`` by default.  Without
        it, an ``input_ids`` column is used as pre-tokenized rows.
    """

    source: str = "wikitext2"
    nsamples: int = 128
    seqlen: int = 2048
    seed: int = 0
    mode: str = "auto"
    text_column: str = "text"

    def __post_init__(self) -> None:
        if not isinstance(self.source, str) or not self.source.strip():
            raise DataError(f"calibration.source must be a non-empty string, got {self.source!r}. Fix: 'wikitext2', "
                            f"'c4', 'hf:NAME[:CONFIG][:SPLIT]', 'self' or a text / json / jsonl file path.")
        if self.source.startswith("hf:"):
            from ..corpora import HubSource

            HubSource.parse(self.source)  # the syntax, before anything is loaded
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise DataError(f"calibration.seed must be an int, got {self.seed!r}. Fix: e.g. seed: 0.")
        if not isinstance(self.text_column, str) or not self.text_column:
            raise DataError(f"calibration.text_column must be a column name, got {self.text_column!r}. "
                            f"Fix: e.g. text_column: text.")
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
    allocation: str = "auto"
    temperature: float = 1.0
    max_sparsity: float = 0.95
    owl_m: float = 5.0
    owl_lambda: float = 0.08
    attention: str = "none"
    backend: str = "auto"
    solver_options: Mapping[str, Any] = field(default_factory=dict)
    calibration: CalibrationSettings = field(default_factory=CalibrationSettings)
    round_to: Union[int, str] = "auto"
    damping: float = 0.01
    dtype: str = "float32"
    targets: Any = None
    ignore: Any = None
    unrouted: str = "dense"
    block_refit: Any = "auto"
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
                raise FormulationError(f"{name} must be a mapping of field -> value, got {type(value).__name__}. "
                                       f"Fix: e.g. {name}: {{}} (or leave it out).")
            set_(self, name, dict(value))
        from .targets import TargetFilter

        chosen = TargetFilter.parse(self.targets, self.ignore)  # FormulationError on a bad pattern
        set_(self, "targets", tuple(p.text for p in chosen.targets))
        set_(self, "ignore", tuple(p.text for p in chosen.ignore))
        if not (isinstance(self.block_refit, str) and self.block_refit == "auto"):
            from .block_refit import BlockRefit

            set_(self, "block_refit", BlockRefit.coerce(self.block_refit))
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
        """Check every field (types, ranges, combinations) before anything is loaded or solved.

        Raises FormulationError (or DataError for the version, OptionsError for ``solver_options``,
        BackendUnavailable / NoSolverError for a backend that cannot solve the method) with one message naming the
        field, the value and the fix.
        """
        if isinstance(self.version, bool) or self.version != VERSION:
            raise DataError(
                f"recipe version {self.version!r} is not supported (this prunekit reads version {VERSION}). "
                f"Fix: re-create the recipe with this prunekit version (version 2 renamed method_options to options)."
            )
        if not isinstance(self.calibration, CalibrationSettings):
            raise FormulationError(f"calibration must be a mapping of calibration settings, got "
                                   f"{type(self.calibration).__name__}. Fix: e.g. calibration: {{source: wikitext2, "
                                   f"nsamples: 128, seqlen: 2048}}.")
        kind = self.structure.kind
        for name, value in (("solver_options", self.solver_options), ("options", self.options)):
            if not all(isinstance(k, str) for k in value):
                raise FormulationError(f"{name} keys must be strings (field names), got {sorted(map(repr, value))}. "
                                       f"Fix: write each key as a field name.")
        self.method.check_structure(self.structure)
        self.method.check_options(self.options)
        _check_option_types(self.method, self.options)
        if not _number(self.sparsity) or not 0 <= self.sparsity < 1:
            raise FormulationError(f"sparsity must be a number in [0, 1), got {self.sparsity!r}. "
                                   f"Fix: the fraction of weights to prune, e.g. 0.5.")
        from .allocation_rules import check_allocation

        check_allocation(self.allocation, kind, self.owl_m, self.owl_lambda)
        _choice("attention", self.attention, ATTENTION)
        if self.attention != "none" and kind != "channels":
            raise FormulationError(f"attention={self.attention!r} applies to structure='channels' only. "
                                   f"Fix: drop attention, or use structure='channels'.")
        if not _number(self.temperature) or not 0 < self.temperature < math.inf:
            raise FormulationError(f"temperature must be a finite number > 0, got {self.temperature!r}. "
                                   f"Fix: e.g. temperature=1.0 (lower = more uneven sparsities).")
        if not _number(self.max_sparsity) or not self.sparsity <= self.max_sparsity < 1:
            raise FormulationError(f"max_sparsity must lie in [sparsity, 1) = [{self.sparsity:g}, 1), got "
                                   f"{self.max_sparsity!r}. Fix: e.g. max_sparsity=0.95.")
        if self.round_to != "auto" and (isinstance(self.round_to, bool) or not isinstance(self.round_to, int)
                                         or self.round_to < 1):
            raise FormulationError(f"round_to must be 'auto' or a positive int, got {self.round_to!r}. "
                                   f"Fix: 'auto' (64 for groups of >= 1024 units, else 1), 1 (no rounding), or a "
                                   f"kernel-friendly multiple such as 8, 64, 128.")
        if self.round_to != "auto" and self.round_to > 1 and kind != "channels":
            raise FormulationError(f"round_to={self.round_to} rounds kept channel widths; structure "
                                   f"{str(self.structure)!r} removes no channels. Fix: drop round_to.")
        if not _number(self.damping) or not 0 <= self.damping < math.inf:
            raise FormulationError(f"damping must be a finite number >= 0, got {self.damping!r}. "
                                   f"Fix: e.g. damping=0.01 (a fraction of the Gram's mean diagonal).")
        _choice("dtype", self.dtype, DTYPES)
        from .families.generic import UNROUTED_POLICIES

        _choice("unrouted", self.unrouted, UNROUTED_POLICIES)
        self._check_backend()
        from ..solvers.options import check_solver_options

        check_solver_options(self.solver_options)

    def _check_backend(self) -> None:
        from ..errors import BackendUnavailable, NoSolverError
        from ..solvers.registry import solvers_for

        if not isinstance(self.backend, str):
            raise FormulationError(f"backend must be a name such as 'auto' or 'torch', got {self.backend!r}. "
                                   f"Fix: use backend='auto'.")
        if self.backend == "auto":
            return
        from ..solvers.registry import BACKENDS, registered

        known = sorted(set(BACKENDS) | {c.backend for c in registered()})
        if self.backend not in known:
            raise NoSolverError(f"unknown backend {self.backend!r}; known backends: {['auto', *known]}. "
                                f"Fix: use backend='auto' (the first solver that accepts each problem).")
        solvers = solvers_for(self.method.formulation)
        here = [c for c in solvers if c.backend == self.backend]
        if not here:
            raise NoSolverError(
                f"backend {self.backend!r} has no solver for method {self.method.name!r} "
                f"({self.method.formulation.__name__}); backends that do: {sorted({c.backend for c in solvers})}. "
                f"Fix: use backend='auto' or one of those.")
        if all(c.missing_requirements() for c in here):
            missing = sorted({m for c in here for m in c.missing_requirements()})
            raise BackendUnavailable(
                f"backend {self.backend!r} needs {missing}, which is not installed. "
                f"Fix: pip install 'prunekit[reference]', or use backend='auto'.")

    @property
    def target_filter(self):
        """The :class:`~prunekit.models.targets.TargetFilter` of ``targets`` / ``ignore``: which linear modules of
        the decoder blocks are pruned (default: every Linear / Conv1D but ``lm_head``, MoE routers and gates)."""
        from .targets import TargetFilter

        return TargetFilter.parse(self.targets, self.ignore)

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
        out["targets"], out["ignore"] = list(self.targets), list(self.ignore)
        out["block_refit"] = self.block_refit if isinstance(self.block_refit, (str, type(None))) \
            else self.block_refit.to_dict()
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
            raise DataError(f"recipe is not valid JSON: {exc}. Fix: repair the file (or write it as YAML with a "
                            f".yaml suffix).") from exc

    def to_yaml(self) -> str:
        yaml = _yaml()
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> "Recipe":
        yaml = _yaml()
        try:
            return cls.from_dict(yaml.load(text, Loader=_loader()) or {})
        except yaml.YAMLError as exc:
            where = " ".join(str(exc).split())
            raise DataError(f"recipe is not valid YAML: {where}. Fix: repair the file (quote values such as "
                            f"'2:4').") from exc

    def save(self, path: str | Path) -> Path:
        """Write JSON (``.json``) or YAML (``.yaml``/``.yml``), chosen by the suffix."""
        path = Path(path)
        text = self.to_yaml() if path.suffix in (".yaml", ".yml") else self.to_json()
        path.write_text(text)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Recipe":
        path = Path(path)
        if path.is_dir():
            raise DataError(f"recipe path {path} is a folder, not a file. Fix: pass the path of a .json or .yaml "
                            f"recipe file.")
        if not path.is_file():
            raise DataError(f"recipe file {path} does not exist. Fix: pass the path of a .json or .yaml recipe.")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"cannot read recipe file {path}: {exc}. Fix: save it as UTF-8 text, readable by "
                            f"you.") from exc
        return cls.from_yaml(text) if path.suffix in (".yaml", ".yml") else cls.from_json(text)


def prunable_widths(config: Mapping[str, Any], attention: str = "heads") -> dict[str, int]:
    """Unit counts of the coupled groups a channel recipe prunes, read from an HF ``config.json`` dict:
    ``{"MLP channels": intermediate size}`` plus ``"KV heads"`` (attention="heads") or ``"V/O channels"``
    (attention="vo_channels").  Families whose config names none of these give ``{}``."""
    cfg = dict(config.get("text_config") or {}) or dict(config)
    hidden = cfg.get("hidden_size") or cfg.get("n_embd") or cfg.get("d_model")
    mlp = cfg.get("intermediate_size") or cfg.get("ffn_dim") or cfg.get("n_inner")
    if mlp is None and cfg.get("model_type") == "gpt2" and hidden:
        mlp = 4 * hidden
    heads = cfg.get("num_attention_heads") or cfg.get("n_head")
    kv = cfg.get("num_key_value_heads") or heads
    head_dim = cfg.get("head_dim") or (hidden // heads if hidden and heads else None)
    out: dict[str, int] = {}
    if isinstance(mlp, int) and mlp > 0:
        out["MLP channels"] = mlp
    if attention == "heads" and isinstance(kv, int) and kv > 0:
        out["KV heads"] = kv
    if attention == "vo_channels" and isinstance(kv, int) and isinstance(head_dim, int) and kv > 0 and head_dim > 0:
        out["V/O channels"] = kv * head_dim
    return out


def check_recipe_fits(recipe: "Recipe", config: Mapping[str, Any]) -> None:
    """Refuse a channel recipe that cannot prune anything from a model with this ``config.json`` (cheap: no
    weights are read): every width, with its kept count rounded up to a multiple of ``round_to``, keeps all of
    its units (e.g. ``round_to=1000`` on a model whose widths are all below 1000).

    Raises
    ------
    FormulationError
        Naming the widths, the largest ``round_to`` that still prunes, and the fix.
    """
    from .methods import units_pruned

    if recipe.structure.kind != "channels" or recipe.round_to == "auto" or recipe.round_to <= 1 \
            or recipe.sparsity <= 0:
        return
    widths = prunable_widths(config, recipe.attention)
    if not widths:
        return
    ratio = recipe.sparsity if recipe.allocation == "uniform" else recipe.max_sparsity
    if any(units_pruned(n, ratio, recipe.round_to) > 0 for n in widths.values()):
        return
    best = max((r for r in range(1, max(widths.values()) + 1)
                if any(units_pruned(n, ratio, r) > 0 for n in widths.values())), default=None)
    shown = ", ".join(f"{k} {v}" for k, v in widths.items())
    fix = f"use round_to <= {best} (the largest value that still prunes here)" if best else "raise the sparsity"
    raise FormulationError(
        f"round_to={recipe.round_to} prunes nothing from this model: rounding the kept width up to a multiple of "
        f"{recipe.round_to} keeps every unit of each prunable width ({shown}) at sparsity {ratio:g}. Fix: {fix}, "
        f"or drop round_to.")


def _number(value) -> bool:
    """A real number (not a bool) that is not NaN."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def _choice(name: str, value, choices) -> None:
    if not isinstance(value, str) or value not in choices:
        raise FormulationError(f"{name} must be one of {list(choices)}, got {value!r}. Fix: use one of those.")


def _check_option_types(method: Method, options: Mapping[str, Any]) -> None:
    """Each option's value against the type annotation of its formulation field (``variant: bool`` ...)."""
    import typing

    from ..solvers.options import matches_type, type_name

    try:
        hints = typing.get_type_hints(method.formulation)
    except Exception:  # noqa: BLE001 -- a user's formulation with unresolvable annotations: not checked here
        return
    for name, value in options.items():
        if name in hints and not matches_type(hints[name], value):
            fields = ", ".join(f"{n} ({type_name(hints[n])})" for n in method.options if n in hints)
            raise FormulationError(
                f"option {name}={value!r} of method {method.name!r} has type {type(value).__name__}, expected "
                f"{type_name(hints[name])}. Fix: the options of {method.formulation.__name__} are: {fields}.")


def _same_ratio(a, b) -> bool:
    return isinstance(a, (int, float)) and not isinstance(a, bool) and abs(float(a) - b) < 1e-9


def _build(cls, data: dict[str, Any], what: str):
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(valid), key=str)
    if unknown:
        import difflib

        close = {u: difflib.get_close_matches(str(u), valid, n=1) for u in unknown}
        hint = ", ".join(f"{u!r} -> {m[0]!r}" for u, m in close.items() if m)
        raise DataError(f"unknown {what} key(s) {unknown}; valid keys: {valid}. "
                        f"Fix: {'rename ' + hint if hint else 'remove or rename them'}.")
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
