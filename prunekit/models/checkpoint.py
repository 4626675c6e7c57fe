"""Stream a Hugging Face safetensors checkpoint block by block, and write pruned blocks to output shards.

The model pipeline keeps O(one decoder block) of weights in memory:

* :func:`open_skeleton` builds the model from ``config.json`` with every *parameter* on the meta device (no
  memory) and every *buffer* real on the CPU (rotary ``inv_freq`` etc. are computed exactly as usual);
* :class:`CheckpointReader` reads only the safetensors headers when opened; :meth:`CheckpointReader.load` then
  reads exactly the named tensors (``safe_open`` + ``get_tensor`` per name, memory-mapped: other tensors' bytes are
  never copied into memory);
* :func:`check_tensors` / :func:`expected_tensors` check, before any work, that the checkpoint holds what the
  config describes;
* :func:`materialize_` puts loaded tensors into the skeleton, :func:`release_` sends a finished block's parameters
  back to the meta device;
* :class:`ShardWriter` writes each finished block to its own shard atomically, and :meth:`ShardWriter.finalize`
  writes the Hugging Face index (``model.safetensors.index.json``) that stock ``from_pretrained`` reads.

prunekit never unpickles: pickle checkpoints (``*.bin``, ``*.pt``, ...) are refused with the way to convert them.
"""

from __future__ import annotations

import copy
import json
import os
import uuid
from pathlib import Path
from typing import Iterable, Mapping, Optional, Union

import torch
from torch import nn

from ..errors import ModelError

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
WRITER = "prunekit"  # safetensors metadata / index metadata marker: "prunekit wrote this file"

_ST_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
              "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "U16": "uint16", "U32": "uint32",
              "U64": "uint64", "BOOL": "bool", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
              "C64": "complex64", "C128": "complex128"}
_PICKLE_FIX = ("pickle-only checkpoint: prunekit never unpickles (it can run code). Fix: convert it once with a "
               "trusted tool to safetensors (e.g. load it yourself and save_pretrained(..., safe_serialization=True))")


def _safe_open(path: Union[str, Path], device: str = "cpu"):
    """``safetensors.safe_open`` (torch framework); one place, so tests can watch which tensors are read."""
    from safetensors import safe_open

    return safe_open(str(path), framework="pt", device=device)


def _torch_dtype(st_dtype: str, where: Path) -> torch.dtype:
    dt = getattr(torch, _ST_DTYPES.get(st_dtype, ""), None)
    if not isinstance(dt, torch.dtype):
        raise ModelError(f"{where}: unsupported safetensors dtype {st_dtype!r}. Fix: convert the checkpoint to "
                         f"float32/float16/bfloat16 safetensors.")
    return dt


def _nbytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n * dtype.itemsize


def _read_header(path: Path) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """``{tensor: (shape, dtype)}`` of one shard, from its header only (no tensor data is read)."""
    try:
        with _safe_open(path) as f:
            raw = {}
            for k in f.keys():
                sl = f.get_slice(k)
                raw[k] = (tuple(int(s) for s in sl.get_shape()), sl.get_dtype())
    except Exception as e:  # safetensors raises its own SafetensorError, or OSError
        raise ModelError(f"corrupt or truncated safetensors shard {path}: {type(e).__name__}: {e}. Fix: re-download "
                         f"or re-convert this file (its header cannot be read).") from e
    return {k: (shape, _torch_dtype(dt, path)) for k, (shape, dt) in raw.items()}


class CheckpointReader:
    """The tensors of a safetensors checkpoint folder, opened by headers only.

    The folder holds ``model.safetensors`` (preferred, as ``from_pretrained`` does), else
    ``model.safetensors.index.json`` and the shards it names, else any other ``*.safetensors`` files.
    Construction reads every shard's header and no tensor data; it raises :class:`~prunekit.errors.ModelError` for a
    pickle-only folder, a folder without weights, a shard whose header cannot be read, an index that names a
    missing shard (or a tensor its shard does not hold), and a tensor present in two shards.

    Parameters
    ----------
    folder
        A local folder.
    """

    def __init__(self, folder: Union[str, Path]):
        self.folder = Path(folder).expanduser()
        if not self.folder.is_dir():
            raise ModelError(f"checkpoint folder {self.folder} does not exist. Fix: pass a local folder holding "
                             f"config.json and *.safetensors weights.")
        files, index = self._shard_files()
        self._info: dict[str, tuple[tuple[int, ...], torch.dtype, str]] = {}
        for shard in files:
            for name, (shape, dtype) in _read_header(self.folder / shard).items():
                if name in self._info:
                    raise ModelError(f"tensor {name!r} is present in two shards of {self.folder}: "
                                     f"{self._info[name][2]} and {shard}. Fix: remove the stale shard (or re-save "
                                     f"the model with save_pretrained so each tensor is stored once).")
                self._info[name] = (shape, dtype, shard)
        if index:
            wrong = [(n, s) for n, s in index.items() if n not in self._info or self._info[n][2] != s]
            if wrong:
                n, s = wrong[0]
                raise ModelError(f"{self.folder / INDEX_NAME} says tensor {n!r} is in {s}, which does not hold it "
                                 f"({len(wrong)} such tensor(s)). Fix: re-download the checkpoint or regenerate the "
                                 f"index (the shards and the index come from different saves).")
        if not self._info:
            raise ModelError(f"the safetensors files of {self.folder} hold no tensors. Fix: pass the folder of a "
                             f"saved model (save_pretrained).")
        self.files: tuple[str, ...] = tuple(files)
        self._names = sorted(self._info)

    def _shard_files(self) -> tuple[list[str], dict[str, str]]:
        """The shard file names to read, and the index's weight map (empty when there is no index)."""
        folder = self.folder
        if (folder / SINGLE_NAME).is_file():
            return [SINGLE_NAME], {}
        if (folder / INDEX_NAME).is_file():
            try:
                weight_map = json.loads((folder / INDEX_NAME).read_text())["weight_map"]
                if not isinstance(weight_map, dict):
                    raise TypeError("weight_map is not an object")
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise ModelError(f"unreadable index {folder / INDEX_NAME}: {e}. Fix: re-download the checkpoint "
                                 f"(the index must be JSON with a 'weight_map').") from e
            shards = sorted(set(weight_map.values()))
            missing = [s for s in shards if not (folder / s).is_file()]
            if missing:
                raise ModelError(f"{folder / INDEX_NAME} names shard(s) missing from {folder}: {missing}. Fix: "
                                 f"download the missing shard(s) (or the whole checkpoint) again.")
            return shards, dict(weight_map)
        files = sorted(p.name for p in folder.glob("*.safetensors") if p.is_file() and not p.name.startswith("."))
        if files:
            return files, {}
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES and p.is_file())
        if pickles:
            raise ModelError(f"{folder}: {_PICKLE_FIX}. Found {pickles}.")
        raise ModelError(f"no weights in {folder}: no *.safetensors file. Fix: pass the folder of a saved model "
                         f"(model.safetensors, or model.safetensors.index.json + shards).")

    # -- headers --------------------------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        """All tensor names, sorted."""
        return list(self._names)

    def __contains__(self, name: object) -> bool:
        return name in self._info

    def _get(self, name: str) -> tuple[tuple[int, ...], torch.dtype, str]:
        try:
            return self._info[name]
        except KeyError:
            raise ModelError(f"tensor {name!r} is not in the checkpoint {self.folder}. Fix: check the name "
                             f"against reader.names.") from None

    def shape(self, name: str) -> tuple[int, ...]:
        """The shape of tensor ``name`` (from the header)."""
        return self._get(name)[0]

    def dtype_of(self, name: str) -> torch.dtype:
        """The torch dtype of tensor ``name`` (from the header)."""
        return self._get(name)[1]

    def shard_of(self, name: str) -> str:
        """The file name of the shard that holds tensor ``name``."""
        return self._get(name)[2]

    @property
    def dtype(self) -> Optional[torch.dtype]:
        """The floating dtype that most bytes use (a bf16 checkpoint reports ``torch.bfloat16``); None when no
        tensor is floating."""
        per: dict[torch.dtype, int] = {}
        for shape, dt, _ in self._info.values():
            if dt.is_floating_point:
                per[dt] = per.get(dt, 0) + _nbytes(shape, dt)
        return max(per, key=lambda d: (per[d], str(d))) if per else None

    @property
    def total_bytes(self) -> int:
        """The bytes of all tensor data (headers excluded)."""
        return sum(_nbytes(shape, dt) for shape, dt, _ in self._info.values())

    # -- data -----------------------------------------------------------------------------------------------------
    def load(self, names: Iterable[str], device: Union[str, torch.device] = "cpu") -> dict[str, torch.Tensor]:
        """Read exactly the tensors ``names`` (opening each needed shard once) onto ``device``.

        Only these tensors' bytes are copied into memory (the files are memory-mapped). Raises ModelError for a
        name that is not in the checkpoint, or a shard whose data cannot be read.
        """
        names = list(dict.fromkeys(names))
        unknown = [n for n in names if n not in self._info]
        if unknown:
            raise ModelError(f"{len(unknown)} tensor(s) not in the checkpoint {self.folder}: {unknown[:5]}. Fix: "
                             f"check the names against reader.names (the config and the weights may not match).")
        by_shard: dict[str, list[str]] = {}
        for n in names:
            by_shard.setdefault(self._info[n][2], []).append(n)
        out: dict[str, torch.Tensor] = {}
        dev = str(torch.device(device))
        for shard, shard_names in by_shard.items():
            path = self.folder / shard
            try:
                with _safe_open(path, device=dev) as f:
                    for n in shard_names:
                        out[n] = f.get_tensor(n)
            except Exception as e:
                raise ModelError(f"cannot read tensors from shard {path}: {type(e).__name__}: {e}. Fix: re-download "
                                 f"or re-convert this file.") from e
        return {n: out[n] for n in names}

    def load_prefix(self, prefix: str, device: Union[str, torch.device] = "cpu") -> dict[str, torch.Tensor]:
        """All tensors whose name starts with ``prefix + "."`` (e.g. ``"model.layers.3"``), with their full names."""
        names = self.names_under(prefix)
        if not names:
            raise ModelError(f"no tensor named {prefix}.* in the checkpoint {self.folder}. Fix: check the prefix "
                             f"(a block is e.g. 'model.layers.0').")
        return self.load(names, device=device)

    def names_under(self, prefix: str) -> list[str]:
        """The sorted names that start with ``prefix + "."``."""
        p = prefix.rstrip(".") + "."
        return [n for n in self._names if n.startswith(p)]

    def __repr__(self) -> str:
        return (f"CheckpointReader({str(self.folder)!r}: {len(self._names)} tensors in {len(self.files)} shard(s), "
                f"{self.total_bytes} bytes, {self.dtype})")


def check_tensors(reader: CheckpointReader, expected: Mapping[str, tuple[int, ...]], *,
                  optional: Iterable[str] = frozenset(), ignore_unexpected: Iterable[str] = ()) -> None:
    """Raise ModelError unless the checkpoint holds exactly the ``expected`` tensors with the expected shapes.

    Parameters
    ----------
    reader
        The opened checkpoint.
    expected
        ``{name: shape}`` the model needs (see :func:`expected_tensors`).
    optional
        Expected names the checkpoint may lack (tied weights, buffers the skeleton already computes).
    ignore_unexpected
        Checkpoint names to accept although not expected (e.g. a stale ``rotary_emb.inv_freq``).

    The message lists the first few missing, unexpected and shape-mismatched tensors with their counts.
    """
    optional = set(optional)
    ignored = set(ignore_unexpected)
    have = set(reader.names)
    missing = sorted(n for n in expected if n not in have and n not in optional)
    unexpected = sorted(n for n in have if n not in expected and n not in ignored)
    mismatched = sorted(n for n in expected if n in have and tuple(reader.shape(n)) != tuple(expected[n]))
    if not (missing or unexpected or mismatched):
        return

    def few(items: list[str]) -> str:
        return ", ".join(items[:4]) + (", ..." if len(items) > 4 else "")

    parts = []
    if missing:
        parts.append(f"missing {len(missing)} [{few(missing)}]")
    if unexpected:
        parts.append(f"unexpected {len(unexpected)} [{few(unexpected)}]")
    if mismatched:
        parts.append(f"shape mismatch {len(mismatched)} [" + few(
            [f"{n}: checkpoint {tuple(reader.shape(n))} vs config {tuple(expected[n])}" for n in mismatched]) + "]")
    raise ModelError(f"the checkpoint does not match its config.json ({reader.folder}): {'; '.join(parts)}. Fix: "
                     f"use the config.json saved with these weights (re-save the model with save_pretrained if "
                     f"it was edited).")


# -- the skeleton -------------------------------------------------------------------------------------------------
def open_skeleton(folder_or_config, dtype: Optional[torch.dtype] = None, *,
                  attn_implementation: str = "eager") -> nn.Module:
    """The causal LM of a config with parameters on the meta device and buffers real on the CPU.

    Parameters
    ----------
    folder_or_config
        A folder holding ``config.json`` (read with ``local_files_only=True``) or a ``PretrainedConfig`` (copied,
        never modified).
    dtype
        Dtype of the parameters (and of the tensors :func:`materialize_` puts in); None: the config's dtype.
    attn_implementation
        Attention implementation set on the config (``"eager"`` by default).

    Returns
    -------
    The model in eval mode, every parameter ``requires_grad=False`` on the meta device (no memory), buffers computed
    on the CPU. Tied weights are tied again by :func:`materialize_`.
    """
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

    if isinstance(folder_or_config, PretrainedConfig):
        config = copy.deepcopy(folder_or_config)
    else:
        folder = Path(folder_or_config).expanduser()
        if not (folder / "config.json").is_file():
            raise ModelError(f"no config.json in {folder}. Fix: pass the folder of a saved model "
                             f"(save_pretrained writes config.json next to the weights).")
        try:
            config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
        except (ValueError, OSError, KeyError) as e:
            raise ModelError(f"cannot read {folder / 'config.json'}: {e}. Fix: check its model_type, or upgrade "
                             f"transformers if the architecture is newer than the installed version.") from e
    config._attn_implementation = attn_implementation
    kwargs = {} if dtype is None else {"dtype": dtype}
    try:
        with init_empty_weights(include_buffers=False):
            model = AutoModelForCausalLM.from_config(config, **kwargs)
    except ValueError as e:
        raise ModelError(f"cannot build a causal LM from the config ({type(config).__name__}): {e}. Fix: pass a "
                         f"decoder-only model (AutoModelForCausalLM must support its model_type).") from e
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def _tied_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """``[(target, source)]`` parameter names the model ties (``lm_head.weight`` -> ``model.embed_tokens.weight``)."""
    mapping = getattr(model, "all_tied_weights_keys", None)  # transformers >= 5
    if isinstance(mapping, dict):
        return sorted(mapping.items())
    config = getattr(model, "config", None)  # transformers 4.x: output embeddings tied to input embeddings
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if not getattr(text, "tie_word_embeddings", False):
        return []
    out, inp = model.get_output_embeddings(), model.get_input_embeddings()
    names = {id(m): n for n, m in model.named_modules()}
    if out is None or inp is None or id(out) not in names or id(inp) not in names:
        return []
    return [(f"{names[id(out)]}.weight", f"{names[id(inp)]}.weight")]


def expected_tensors(model: nn.Module) -> tuple[dict[str, tuple[int, ...]], set[str]]:
    """``(expected, optional)``: the state-dict names and shapes a checkpoint of ``model`` must hold, and those it
    may lack: tied weights' targets (``lm_head.weight`` when the config ties it) and persistent buffers (the
    skeleton computes them). Non-persistent buffers are not in the state dict at all."""
    state = model.state_dict(keep_vars=True)
    expected = {n: tuple(int(s) for s in t.shape) for n, t in state.items()}
    optional = {t for t, _ in _tied_pairs(model) if t in expected}
    optional |= {n for n, _ in model.named_buffers() if n in expected}
    return expected, optional


def _retie_(model: nn.Module) -> None:
    """Make every tied target the same Parameter as its source, from whichever of the two is real."""
    for target, source in _tied_pairs(model):
        try:
            t, s = model.get_parameter(target), model.get_parameter(source)
        except AttributeError:
            continue
        if t is s:
            continue
        if s.device.type != "meta":
            dst, param = target, s
        elif t.device.type != "meta":
            dst, param = source, t
        else:
            continue
        parent, _, leaf = dst.rpartition(".")
        setattr(model.get_submodule(parent), leaf, param)


def materialize_(model: nn.Module, tensors: Mapping[str, torch.Tensor],
                 device: Union[str, torch.device] = "cpu") -> nn.Module:
    """Put ``tensors`` (full state-dict names) into ``model`` in place of its meta parameters / buffers.

    Each tensor is moved to ``device`` and cast to the dtype of the parameter it replaces (the skeleton's dtype
    decides), then assigned (no copy into the old storage). Every given name must be a state-dict entry of the
    model with the same shape (else ModelError). Parameters stay ``requires_grad=False``; tied weights are tied
    again (``lm_head`` and ``embed_tokens`` become the same Parameter). Returns ``model``.
    """
    if not tensors:
        return model
    state = model.state_dict(keep_vars=True)
    unknown = [n for n in tensors if n not in state]
    if unknown:
        raise ModelError(f"{len(unknown)} tensor(s) are not entries of the model: {unknown[:5]}. Fix: load names "
                         f"from expected_tensors(model) (the checkpoint and the config may not match).")
    bad = [f"{n}: {tuple(t.shape)} vs model {tuple(state[n].shape)}" for n, t in tensors.items()
           if tuple(t.shape) != tuple(state[n].shape)]
    if bad:
        raise ModelError(f"{len(bad)} tensor(s) have the wrong shape: {bad[:4]}. Fix: use the config.json saved "
                         f"with these weights.")
    dev = torch.device(device)
    prepared = {n: t.detach().to(device=dev, dtype=state[n].dtype) for n, t in tensors.items()}
    result = model.load_state_dict(prepared, strict=False, assign=True)
    if result.unexpected_keys:  # pragma: no cover - excluded by the check above
        raise ModelError(f"tensors not consumed by the model: {result.unexpected_keys[:5]}.")
    for n in prepared:
        obj = _get_tensor(model, n)
        if isinstance(obj, nn.Parameter):
            obj.requires_grad_(False)
    _retie_(model)
    return model


def _get_tensor(model: nn.Module, name: str):
    parent, _, leaf = name.rpartition(".")
    return getattr(model.get_submodule(parent), leaf)


def release_(module: nn.Module) -> nn.Module:
    """Send every parameter of ``module`` to the meta device (frees its memory, keeps shapes and dtypes).

    Buffers stay real, so :func:`materialize_` of the same tensors restores the exact computation. Parameters
    shared inside ``module`` stay shared. Returns ``module``.
    """
    memo: dict[int, nn.Parameter] = {}
    for sub in module.modules():
        for k, p in list(sub._parameters.items()):
            if p is None or p.device.type == "meta":
                continue
            if id(p) not in memo:
                memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=False)
            sub._parameters[k] = memo[id(p)]
    return module


# -- writing --------------------------------------------------------------------------------------------------------
def shard_name(i: int, n: int) -> str:
    """The Hugging Face shard name ``model-0000{i+1}-of-0000{n}.safetensors`` of shard ``i`` (0-based) of ``n``."""
    if not 0 <= i < n:
        raise ValueError(f"shard index {i} outside 0..{n - 1}")
    return f"model-{i + 1:05d}-of-{n:05d}.safetensors"


def _prepare_for_save(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors that share no storage (later sharers are cloned)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, t in tensors.items():
        if not isinstance(name, str) or not isinstance(t, torch.Tensor):
            raise ModelError(f"shard entries must be str -> Tensor, got {type(name).__name__} -> "
                             f"{type(t).__name__}. Fix: pass a state dict.")
        if t.device.type == "meta":
            raise ModelError(f"tensor {name!r} is on the meta device (never materialized, or released). Fix: write "
                             f"a block before release_ frees it.")
        t = t.detach()
        if t.device.type != "cpu":
            t = t.to("cpu")
        if not t.is_contiguous():
            t = t.contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen:
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        out[name] = t
    return out


def _check_shard_name(shard: str) -> None:
    if (not isinstance(shard, str) or not shard.endswith(".safetensors") or shard.startswith(".")
            or "/" in shard or "\\" in shard or shard == ".safetensors"):
        raise ModelError(f"bad shard name {shard!r}. Fix: pass a plain file name ending in .safetensors (e.g. "
                         f"shard_name(0, n) = {shard_name(0, 1)!r}).")


class ShardWriter:
    """Writes safetensors shards into ``folder`` atomically, then the Hugging Face index.

    Every shard is written to a temporary name in the same folder and renamed into place, so a shard that exists
    is complete; its metadata is ``{"format": "pt", "writer": "prunekit"}``. The writer never overwrites a file
    prunekit did not write.

    Parameters
    ----------
    folder
        The output folder (created if missing).
    """

    def __init__(self, folder: Union[str, Path]):
        self.folder = Path(folder).expanduser()
        self.folder.mkdir(parents=True, exist_ok=True)

    def exists(self, shard: str) -> bool:
        """Whether shard ``shard`` has been written (a shard that exists is complete)."""
        _check_shard_name(shard)
        return (self.folder / shard).is_file()

    def _refuse_foreign(self, path: Path) -> None:
        if not path.exists():
            return
        try:
            with _safe_open(path) as f:
                ours = (f.metadata() or {}).get("writer") == WRITER
        except Exception:
            ours = False
        if not ours:
            raise ModelError(f"refusing to overwrite {path}: prunekit did not write it. Fix: write into an empty "
                             f"(or prunekit-written) output folder.")

    def write(self, shard: str, tensors: Mapping[str, torch.Tensor]) -> Path:
        """Write ``tensors`` as ``<folder>/<shard>`` atomically; returns its path.

        Tensors are saved as contiguous CPU copies (GPU tensors are copied, storage sharers cloned); the caller's
        tensors are not modified.
        """
        from safetensors.torch import save_file

        _check_shard_name(shard)
        if not tensors:
            raise ModelError(f"shard {shard} would be empty. Fix: pass at least one tensor.")
        path = self.folder / shard
        self._refuse_foreign(path)
        prepared = _prepare_for_save(tensors)
        tmp = self.folder / f".{shard}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            save_file(prepared, str(tmp), metadata={"format": "pt", "writer": WRITER})
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return path

    def finalize(self, index_name: str = INDEX_NAME) -> Path:
        """Write the Hugging Face index of the ``*.safetensors`` shards present in the folder (headers only).

        ``{"metadata": {"total_size": bytes, "writer": "prunekit"}, "weight_map": {tensor: shard}}``, written
        atomically, also when there is a single shard (stock ``from_pretrained`` reads either). Raises ModelError
        when there is no shard, a tensor is in two shards, or several shards include ``model.safetensors``
        (``from_pretrained`` would read only that one). Returns the index path.
        """
        shards = sorted(p.name for p in self.folder.glob("*.safetensors")
                        if p.is_file() and not p.name.startswith("."))
        if not shards:
            raise ModelError(f"no shard in {self.folder} to index. Fix: write() the shards before finalize().")
        if SINGLE_NAME in shards and len(shards) > 1:
            raise ModelError(f"{self.folder} holds {SINGLE_NAME} and {len(shards) - 1} other shard(s); "
                             f"from_pretrained would read only {SINGLE_NAME}. Fix: name shards with "
                             f"shard_name(i, n) when there are several.")
        weight_map: dict[str, str] = {}
        total = 0
        for shard in shards:
            for name, (shape, dtype) in _read_header(self.folder / shard).items():
                if name in weight_map:
                    raise ModelError(f"tensor {name!r} is in two shards of {self.folder}: {weight_map[name]} and "
                                     f"{shard}. Fix: write each tensor to one shard only.")
                weight_map[name] = shard
                total += _nbytes(shape, dtype)
        path = self.folder / index_name
        if path.exists():
            try:
                ours = json.loads(path.read_text()).get("metadata", {}).get("writer") == WRITER
            except (OSError, ValueError, AttributeError):
                ours = False
            if not ours:
                raise ModelError(f"refusing to overwrite {path}: prunekit did not write it. Fix: write into an "
                                 f"empty (or prunekit-written) output folder.")
        index = {"metadata": {"total_size": total, "writer": WRITER},
                 "weight_map": dict(sorted(weight_map.items()))}
        tmp = self.folder / f".{index_name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            tmp.write_text(json.dumps(index, indent=2) + "\n")
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return path


__all__ = ["CheckpointReader", "check_tensors", "open_skeleton", "expected_tensors", "materialize_", "release_",
           "ShardWriter", "shard_name", "INDEX_NAME", "PICKLE_SUFFIXES"]
