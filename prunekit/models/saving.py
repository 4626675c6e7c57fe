"""Saving and loading pruned models: safetensors shards + a config stock loaders read, published atomically.

Layout of a folder written by :func:`save_pruned` (and by ``prunekit prune``, block by block)::

    config.json                       the config after ``fix_config`` and the stock layout (``export.py``)
    model-block-00000.safetensors ... one shard per decoder block, model-rest.safetensors for the rest
    model.safetensors.index.json      the shard index (stock ``from_pretrained`` reads it)
    tokenizer files                   when a tokenizer is given
    plan/plan.json                    kept units, per-layer records, provenance (no second copy of the weights)
    report.json                       the run report, when given
    prunekit_output.json              prunekit's output marker (only it lets ``--overwrite`` replace the folder)

Formats (``export.stock_layout`` decides, exact transforms only):

* ``"stock"`` -- ``AutoModelForCausalLM.from_pretrained(path)`` loads it with outputs equal to the pruned model's
  (uniform widths as they are; biases kept through a config flag the modeling code reads; heterogeneous widths and
  V/O channels zero-padded, which costs parameters and is said in the report);
* ``"rebuild"`` -- no exact stock form (a bias the stock class cannot hold): ``config.json["prunekit"]`` holds
  ``base_config`` and ``linear_shapes`` and :func:`load_pruned` rebuilds the model (a stock loader would drop
  such a tensor silently, which is why this format exists at all).

Unstructured and N:M results are dense tensors with zeros: labelled ``sparsity_kind`` = ``"unstructured"`` /
``"n:m"`` with ``speedup_claimed = false`` in the output marker.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from ..errors import ModelError
from .adapters import adapter_for

FORMAT_VERSION = 2
REBUILD_MODEL_TYPE = "prunekit-rebuild"
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


def output_config(model: nn.Module, layout, base_config: Optional[dict] = None) -> dict[str, Any]:
    """The ``config.json`` of a pruned model under ``layout``; the rebuild format adds ``"prunekit"`` metadata."""
    from .export import REBUILD

    config = dict(layout.config)
    config.pop("prunekit", None)
    if layout.format == REBUILD:
        base = dict(base_config or getattr(model, "_prunekit_base_config", None) or model.config.to_dict())
        base.pop("prunekit", None)
        # A model_type no stock loader knows: from_pretrained fails loudly instead of dropping tensors silently.
        config = {"model_type": REBUILD_MODEL_TYPE, "architectures": ["PrunekitRebuild"],
                  "note": "prunekit rebuild format: load with prunekit.load_pruned(path)",
                  "prunekit": {"version": FORMAT_VERSION, "format": REBUILD, "family": adapter_for(model).name,
                               "base_config": base, "linear_shapes": linear_shapes(model),
                               "notes": list(layout.notes)}}
    return config


def write_model_shards(model: nn.Module, writer, layout) -> None:
    """The model's tensors, one shard per block plus one for the rest, through ``layout.transform``
    (tied duplicates such as a tied ``lm_head.weight`` are written once)."""
    from .checkpoint import expected_tensors
    from .sinks import block_shard

    adapter = adapter_for(model)
    _, optional = expected_tensors(model)
    state = {k: v for k, v in model.state_dict().items() if k not in optional or not _tied_duplicate(model, k)}
    taken: set[str] = set()
    for i in range(len(adapter.blocks(model))):
        head = adapter.block_prefix(model, i) + "."
        part = {k: v for k, v in state.items() if k.startswith(head)}
        taken.update(part)
        writer.write(block_shard(i), layout.transform(part))
    writer.write("model-rest.safetensors", layout.transform({k: v for k, v in state.items() if k not in taken}))


def _tied_duplicate(model: nn.Module, name: str) -> bool:
    tied = getattr(model, "all_tied_weights_keys", None) or {}
    return name in tied or (name == "lm_head.weight" and getattr(model.config, "tie_word_embeddings", False))


def save_pruned(model: nn.Module, tokenizer, out_dir, *, plan=None, report: Optional[dict] = None,
                sparsity_kind: Optional[str] = None, base_config: Optional[dict] = None,
                overwrite: bool = False) -> Path:
    """Save a (pruned) model in memory as a folder stock loaders read, atomically and safely
    (``prunekit.models.output.OutputFolder``: nothing at ``out_dir`` until complete; ``overwrite`` replaces only
    an earlier prunekit output).

    Parameters
    ----------
    sparsity_kind : str, optional
        ``"structured"`` (units removed), ``"unstructured"``, ``"n:m"``, ``"channels"``, ``"dense"``, or a
        ``+``-joined mix; inferred from ``plan``.  Only ``"structured"`` claims a speedup.
    base_config : dict, optional
        Config of the unpruned architecture (for the rebuild format); defaults to the one ``apply_`` recorded.
    """
    from .checkpoint import ShardWriter
    from .export import stock_layout
    from .output import OutputFolder

    kind = sparsity_kind or _infer_sparsity_kind(plan)
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    output = OutputFolder.open(out_dir, overwrite=overwrite, fingerprint={"save_pruned": str(out_dir)},
                               needed_bytes=int(nbytes * 1.1) + (16 << 20))
    try:
        layout = stock_layout(model)
        writer = ShardWriter(output.partial)
        write_model_shards(model, writer, layout)
        writer.finalize()
        output.write_json("config.json", output_config(model, layout, base_config))
        generation = getattr(model, "generation_config", None)
        if generation is not None:
            with contextlib.suppress(Exception):  # a model without a usable generation config still saves
                output.write_file("generation_config.json", generation.to_json_string())
        if tokenizer is not None:
            tokenizer.save_pretrained(output.partial)
        if plan is not None:
            plan.save(output.path("plan"))
        if report is not None:
            output.write_json("report.json", report)
        return output.finish(output_marker(layout, kind))
    except BaseException:
        output.discard()  # not resumable: nothing of a failed save is kept
        raise
    finally:
        output.close()


def output_marker(layout, sparsity_kind: str, **extra) -> dict[str, Any]:
    """The fields of ``prunekit_output.json``: format, what kind of sparsity, whether a speedup is claimed."""
    return {"format": layout.format, "format_version": FORMAT_VERSION, "sparsity_kind": sparsity_kind,
            "speedup_claimed": _speedup_claimed(sparsity_kind),
            "note": ("pruned units physically removed" if _speedup_claimed(sparsity_kind) else
                     "dense weights with zeros: no speedup claimed" if sparsity_kind != "dense" else "dense"),
            "added_parameters": layout.added_parameters, **extra}


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
    """A folder written by prunekit (its output marker)."""
    from .output import is_prunekit_output

    return is_prunekit_output(path)


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
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{folder / 'config.json'} is not readable JSON ({exc}). Fix: pass an intact model folder.")
    meta = cfg.get("prunekit", {})
    if meta and meta.get("version") != FORMAT_VERSION:
        raise ModelError(f"{folder} was written in prunekit format version {meta.get('version')}; this prunekit "
                         f"reads version {FORMAT_VERSION}. Fix: re-run the prune with this prunekit version.")
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


__all__ = ["save_pruned", "load_pruned", "is_prunekit_folder", "linear_shapes", "output_config", "write_model_shards",
           "FORMAT_VERSION", "output_marker"]
