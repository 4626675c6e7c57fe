"""Target / ignore patterns: which linear modules of the decoder blocks a recipe prunes (llm-compressor style).

A :class:`TargetFilter` holds two lists of patterns over *qualified* module names (``model.layers.3.mlp.gate``):

* a **plain name** matches a dotted suffix of the name: ``"lm_head"`` matches ``lm_head``, ``"down_proj"`` matches
  ``model.layers.0.mlp.down_proj`` and ``"mlp.down_proj"`` does too, but ``"proj"`` does not match ``down_proj``
  (suffixes are whole dotted components, so ``"gate"`` never matches ``gate_proj``);
* ``"re:<regex>"`` full-matches the qualified name (``re.fullmatch``): ``"re:.*router.*"``;
* a **module type** -- ``"Linear"`` or ``"Conv1D"`` -- matches every candidate module of that kind (``"Linear"``
  is llm-compressor's ``targets: Linear``; it never matches a name, since module names are lower case).

A module is selected when some target matches it and no ignore pattern does.  The defaults prune every linear
module of the blocks (:data:`DEFAULT_TARGETS`) and leave alone the output head and MoE routers
(:data:`DEFAULT_IGNORE`: ``lm_head``, any name containing ``router``, a module whose last component is exactly
``gate`` -- the router of Mixtral / Qwen-MoE / OLMoE / DeepSeek, never a GLU ``gate_proj`` -- and Qwen-MoE's
``shared_expert_gate``).  An explicit ``ignore`` list *replaces* the defaults (write them again to keep them);
``describe()`` shows the lists in effect.  Patterns are validated when the filter is built: a regex that does not
compile, an empty pattern or a non-string raises :class:`~prunekit.errors.FormulationError` naming the pattern
and the fix.  :meth:`TargetFilter.unmatched` finds patterns that match none of a model's modules (typos).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Optional, Union

from ..errors import FormulationError

DEFAULT_TARGETS: tuple[str, ...] = ("Linear", "Conv1D")
"""Every linear module (``nn.Linear`` and GPT-2's ``Conv1D`` alike) of the decoder blocks."""

DEFAULT_IGNORE: tuple[str, ...] = ("lm_head", "re:.*router.*", "gate", "shared_expert_gate")
"""The output head and MoE routers / gates (a router's few outputs pick experts; pruning it re-routes tokens)."""

MODULE_TYPES: tuple[str, ...] = ("Linear", "Conv1D")
"""Type patterns; every module that prunekit prunes as a linear layer is one of these kinds."""

REGEX_PREFIX = "re:"

Patterns = Union[None, str, Iterable[str]]


@dataclass(frozen=True)
class Pattern:
    """One parsed pattern: ``kind`` in {"name", "regex", "type"}, the ``text`` as written and, for a regex, the
    compiled expression."""

    text: str
    kind: str
    regex: Optional[re.Pattern] = field(default=None, compare=False, repr=False)

    @classmethod
    def parse(cls, value, role: str) -> "Pattern":
        if not isinstance(value, str):
            raise FormulationError(f"{role} patterns must be strings, got {value!r} ({type(value).__name__}). "
                                   f"Fix: write module names such as 'lm_head', or 're:<regex>'.")
        text = value.strip()
        if text.startswith(REGEX_PREFIX):
            body = text[len(REGEX_PREFIX):]
            if not body:
                raise FormulationError(f"{role} pattern {value!r} has an empty regex. Fix: write 're:<regex>', "
                                       f"e.g. 're:.*router.*'.")
            try:
                compiled = re.compile(body)
            except re.error as exc:
                raise FormulationError(f"{role} pattern {value!r} is not a valid regular expression ({exc}). Fix: "
                                       f"correct the regex after 're:' (Python re syntax, matched against the whole "
                                       f"qualified module name), e.g. 're:.*mlp\\.experts\\..*'.") from None
            return cls(text, "regex", compiled)
        if not text or any(c.isspace() for c in text) or text.startswith(".") or text.endswith(".") or ".." in text:
            raise FormulationError(f"{role} pattern {value!r} is not a module name. Fix: write a dotted module name "
                                   f"(suffix match, e.g. 'lm_head' or 'mlp.down_proj'), a type ({', '.join(MODULE_TYPES)}) "
                                   f"or 're:<regex>'.")
        return cls(text, "type" if text in MODULE_TYPES else "name")

    def matches(self, name: str, kind: str) -> bool:
        if self.kind == "regex":
            return self.regex.fullmatch(name) is not None
        if self.kind == "type":
            return kind == self.text
        return name == self.text or name.endswith("." + self.text)


def _patterns(value: Patterns, default: tuple[str, ...], role: str) -> tuple[Pattern, ...]:
    if value is None:
        value = default
    elif isinstance(value, str):
        value = split_patterns(value)
    elif not isinstance(value, Iterable) or isinstance(value, (bytes, dict)):
        raise FormulationError(f"{role} must be a list of patterns, got {type(value).__name__}. Fix: e.g. "
                               f"{role}: ['lm_head', 're:.*router.*'].")
    return tuple(Pattern.parse(v, role) for v in value)


def split_patterns(text: str) -> list[str]:
    """Split a comma-separated pattern list (command line) at the commas outside brackets and braces, so a regex
    such as ``re:.*\\.(q|k)_proj`` or ``re:a{1,3}`` stays one pattern; a backslash escapes the next character.
    Empty items are dropped (``"a,,b"`` -> ``["a", "b"]``)."""
    items, current, depth, escaped = [], [], 0, False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
            continue
        if char == "\\":
            escaped = True
            current.append(char)
        elif char in "([{":
            depth += 1
            current.append(char)
        elif char in ")]}":
            depth = max(0, depth - 1)
            current.append(char)
        elif char == "," and depth == 0:
            items.append("".join(current))
            current = []
        else:
            current.append(char)
    items.append("".join(current))
    return [item.strip() for item in items if item.strip()]


@dataclass(frozen=True)
class TargetFilter:
    """Which candidate modules are pruned: matched by a target and by no ignore pattern (module docstring).

    Build it with :meth:`parse` (``None`` = the defaults, a list, or a comma-separated string); it is immutable,
    hashable and round-trips through :meth:`to_dict`.
    """

    targets: tuple[Pattern, ...] = ()
    ignore: tuple[Pattern, ...] = ()

    @classmethod
    def parse(cls, targets: Patterns = None, ignore: Patterns = None) -> "TargetFilter":
        """Parse and validate both lists (raises FormulationError on a bad pattern; ``targets=[]`` too, since it
        would prune nothing)."""
        parsed = cls(_patterns(targets, DEFAULT_TARGETS, "targets"), _patterns(ignore, DEFAULT_IGNORE, "ignore"))
        if not parsed.targets:
            raise FormulationError("targets is empty, so nothing would be pruned. Fix: leave targets out (every "
                                   "linear module of the decoder blocks) or list module names / 're:<regex>'.")
        return parsed

    @classmethod
    def default(cls) -> "TargetFilter":
        return cls.parse()

    @classmethod
    def coerce(cls, value) -> "TargetFilter":
        """A TargetFilter, ``None`` (defaults) or a mapping ``{"targets": ..., "ignore": ...}``."""
        if isinstance(value, TargetFilter):
            return value
        if value is None:
            return cls.default()
        if isinstance(value, dict):
            unknown = set(value) - {"targets", "ignore"}
            if unknown:
                raise FormulationError(f"unknown target filter keys {sorted(unknown)}. Fix: use 'targets' and "
                                       f"'ignore'.")
            return cls.parse(value.get("targets"), value.get("ignore"))
        raise FormulationError(f"a target filter must be a mapping with 'targets' / 'ignore', got "
                               f"{type(value).__name__}.")

    def selects(self, qualified_name: str, kind: str = "Linear") -> bool:
        """True when the module ``qualified_name`` (of kind ``"Linear"`` or ``"Conv1D"``) is pruned."""
        return (any(p.matches(qualified_name, kind) for p in self.targets)
                and not any(p.matches(qualified_name, kind) for p in self.ignore))

    def reason(self, qualified_name: str, kind: str = "Linear") -> Optional[str]:
        """Why a module is *not* selected (``"ignored by 'gate'"``, ``"matched by no target"``), None if it is."""
        hit = next((p for p in self.ignore if p.matches(qualified_name, kind)), None)
        if hit is not None:
            return f"ignored by {hit.text!r}"
        if not any(p.matches(qualified_name, kind) for p in self.targets):
            return "matched by no target"
        return None

    def unmatched(self, names: Iterable[str], kind: str = "Linear") -> list[str]:
        """The name / regex patterns (targets and ignore) that match none of ``names`` -- likely typos.  Type
        patterns and the default ignore patterns are never reported (a dense model has no router)."""
        names = list(names)
        found = []
        for role, patterns in (("targets", self.targets), ("ignore", self.ignore)):
            for p in patterns:
                if p.kind == "type" or (role == "ignore" and p.text in DEFAULT_IGNORE):
                    continue
                if not any(p.matches(n, kind) for n in names):
                    found.append(p.text)
        return found

    @property
    def is_default(self) -> bool:
        return self == TargetFilter.default()

    def describe(self) -> str:
        """One line, e.g. ``targets: Linear; ignore: lm_head, re:.*router.*, gate, shared_expert_gate``."""
        return (f"targets: {', '.join(p.text for p in self.targets)}; "
                f"ignore: {', '.join(p.text for p in self.ignore) or '(none)'}")

    def to_dict(self) -> dict[str, list[str]]:
        return {"targets": [p.text for p in self.targets], "ignore": [p.text for p in self.ignore]}


__all__ = ["DEFAULT_IGNORE", "DEFAULT_TARGETS", "MODULE_TYPES", "Pattern", "TargetFilter", "split_patterns"]
