"""Saving and loading pruned models: safetensors weights + ``config.json``, written atomically.

Layout of a folder written by :func:`save_pruned`::

    config.json              the model config after ``fix_config``, plus a ``"prunekit"`` entry (below)
    model.safetensors        the weights (never pickle)
    tokenizer files          when a tokenizer is given
    plan/                    the PruningPlan (plan.json + plan.safetensors), when given
    prunekit_report.json     the run report, when given

``config.json["prunekit"]`` holds ``format``, ``sparsity_kind``, ``speedup_claimed`` and, for ``format ==
"rebuild"``, ``base_config`` (the config of the unpruned architecture), ``linear_shapes`` ({module: [out, in,
has_bias]} of every linear module of the blocks) and ``family``.

* ``format == "stock"`` -- the stock config describes every tensor (uniform widths, LLaMA-like heads with an
  explicit ``head_dim``): ``AutoModelForCausalLM.from_pretrained(path)`` loads it.  Transformers 5.23 has a
  ``per_layer_config`` mechanism, but the LLaMA/Qwen/Gemma/OPT/GPT-2 model code does not read it (building a
  LLaMA with a per-layer ``intermediate_size`` raises ``AmbiguousGlobalPerLayerAttributeError``), so
* ``format == "rebuild"`` -- heterogeneous widths, OPT/GPT-2 heads (their ``head_dim`` is derived from the
  head count) or biases added by pruning (FLAP): :func:`load_pruned` builds the base architecture, resizes
  every module to the stored shape, lets the family adapter fix per-module attributes, and loads the tensors
  with ``safetensors.torch.load_file``.

Unstructured and N:M results are dense tensors with zeros: they are labelled ``sparsity_kind`` =
``"unstructured"`` / ``"n:m"`` with ``speedup_claimed = false``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from ..errors import ModelError
from .adapters import adapter_for

FORMAT_VERSION = 1
SPEEDUP_KINDS = frozenset({"structured"})


def _infer_sparsity_kind(plan) -> str:
    """``"structured"`` when units were physically removed (group edits), the module edits' kinds otherwise
    (``"unstructured"``, ``"n:m"``, ``"channels"`` = zeroed columns left in place); joined with ``+`` when mixed."""
    if plan is None:
        return "dense"
    kinds = sorted({e.sparsity_kind for e in plan.module_edits.values()} - {"dense"})
    if plan.group_edits:
        kinds = ["structured"] + [k for k in kinds if k not in {"channels", "structured"}]
    return "+".join(kinds) or "dense"


def _speedup_claimed(kind: str) -> bool:
    """Only physically removed units make a model faster; zeros in dense tensors do not."""
    return set(kind.split("+")) <= SPEEDUP_KINDS


def linear_shapes(model: nn.Module) -> dict[str, list]:
    """``{module: [out, in, has_bias(, [full_out, full_in])]}`` for every linear module of the decoder blocks
    ((out, in) layout; the last entry only for a ``CompactLinear``)."""
    adapter = adapter_for(model)
    shapes = {}
    for i, block in enumerate(adapter.blocks(model)):
        prefix = adapter.block_prefix(model, i)
        for rel in adapter.linear_names(block):
            mod = block.get_submodule(rel)
            out_f, in_f = adapter.get_weight(mod).shape
            entry = [int(out_f), int(in_f), mod.bias is not None]
            if hasattr(mod, "full_out"):  # CompactLinear (compacted V/O channels)
                entry.append([int(mod.full_out), int(mod.full_in)])
            shapes[f"{prefix}.{rel}"] = entry
    return shapes


def _stock_loadable(model: nn.Module) -> bool:
    """True when ``from_config(model.config)`` builds exactly the model's parameter names and shapes."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.for_model(**model.config.to_dict())
        with torch.device("meta"):
            ref = AutoModelForCausalLM.from_config(config)
    except Exception:  # noqa: BLE001 -- an inconsistent stock config means "not stock-loadable"
        return False
    mine = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    return mine == theirs


def save_pruned(model: nn.Module, tokenizer, out_dir, *, plan=None, report: Optional[dict] = None,
                sparsity_kind: Optional[str] = None, base_config: Optional[dict] = None,
                overwrite: bool = False) -> Path:
    """Save a (pruned) model atomically: everything is written to a temporary sibling folder that is renamed
    to ``out_dir`` at the end, so a failure leaves no half-written ``out_dir``.

    Parameters
    ----------
    sparsity_kind : str, optional
        ``"structured"`` (units removed), ``"unstructured"``, ``"n:m"``, ``"channels"`` (zeroed columns kept in
        place), ``"dense"``, or a ``+``-joined mix; inferred from ``plan``.  Only ``"structured"`` claims a speedup.
    base_config : dict, optional
        Config of the unpruned architecture (needed to rebuild heterogeneous models); defaults to
        ``model._prunekit_base_config`` (recorded by ``apply_`` before its first change) or the current config.
    overwrite : bool
        Replace an existing ``out_dir`` (the old folder is removed only after the new one is complete).
    """
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and not overwrite:
        raise ModelError(f"{out} already exists. Fix: choose another folder or pass overwrite=True.")
    out.parent.mkdir(parents=True, exist_ok=True)
    kind = sparsity_kind or _infer_sparsity_kind(plan)
    adapter = adapter_for(model)
    stock = _stock_loadable(model)
    meta: dict[str, Any] = {
        "version": FORMAT_VERSION,
        "family": adapter.name,
        "format": "stock" if stock else "rebuild",
        "sparsity_kind": kind,
        "speedup_claimed": _speedup_claimed(kind),
        "note": ("pruned units physically removed" if _speedup_claimed(kind) else
                 "dense weights with zeros: no speedup claimed" if kind != "dense" else "dense"),
    }
    if not stock:
        meta["linear_shapes"] = linear_shapes(model)
        meta["base_config"] = base_config or getattr(model, "_prunekit_base_config", None) \
            or _base_config_from(model)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    _chmod_like_mkdir(tmp)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        cfg_path = tmp / "config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["prunekit"] = meta
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True, default=str))
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if plan is not None:
            plan.save(tmp / "plan")
        if report is not None:
            (tmp / "prunekit_report.json").write_text(json.dumps(report, indent=2, default=str))
        pickles = [p.name for p in tmp.rglob("*") if p.suffix in {".bin", ".pt", ".pth", ".pkl"}]
        if pickles:
            raise ModelError(f"refusing to save pickle files {pickles}; prunekit writes safetensors only.")
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _chmod_like_mkdir(path: Path) -> None:
    """``mkdtemp`` creates 0700 folders; give the final folder the permissions ``mkdir`` would."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o777 & ~umask)


def _base_config_from(model: nn.Module) -> dict:
    """The current config as a dict; its global widths are the per-layer maxima (``fix_config``), which the
    rebuild only uses as a starting point before resizing each module."""
    return model.config.to_dict()


def is_prunekit_folder(path) -> bool:
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return False
    try:
        return "prunekit" in json.loads(cfg.read_text())
    except (OSError, json.JSONDecodeError):
        return False


def _load_tokenizer(path: Path):
    names = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
    if not any((path / n).exists() for n in names):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ModelError(f"no *.safetensors weights in {path}; prunekit folders store safetensors only.")
    state = {}
    for f in files:
        state.update(load_file(str(f)))
    return state


def load_pruned(path, dtype: torch.dtype = torch.float32, device="cpu"):
    """Load a folder written by :func:`save_pruned` (or any HF folder); returns ``(model, tokenizer)``."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from .surgery import resize_module_

    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise ModelError(f"no config.json in {folder}. Fix: pass a folder written by prunekit.save_pruned.")
    cfg = json.loads((folder / "config.json").read_text())
    meta = cfg.get("prunekit", {})
    if meta.get("format", "stock") == "stock":
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
        return model.to(device).eval(), _load_tokenizer(folder)
    base = dict(meta["base_config"])
    base.pop("prunekit", None)
    config = AutoConfig.for_model(**base)
    try:  # every tensor is loaded below (checked), so skip the random initialization
        from transformers.initialization import no_init_weights
    except ImportError:  # pragma: no cover - older transformers
        no_init_weights = contextlib.nullcontext
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        for name, (out_f, in_f, has_bias, *full) in meta["linear_shapes"].items():
            resize_module_(model, name, int(out_f), int(in_f), bool(has_bias), full[0] if full else None)
    adapter = adapter_for(model)
    adapter.fix_config(model)
    model._prunekit_base_config = base
    state = _state_dict(folder)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    missing = [k for k in missing if k not in tied and not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise ModelError(f"{folder}: tensors do not match the rebuilt model (missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}). The folder is damaged or was not written by prunekit.")
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    return model.to(device=device).eval(), _load_tokenizer(folder)


__all__ = ["save_pruned", "load_pruned", "is_prunekit_folder", "linear_shapes", "FORMAT_VERSION"]
