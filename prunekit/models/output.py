"""The lifecycle of a ``--out`` folder: check, lock, write into a partial folder, publish atomically.

``prunekit prune --out OUT`` streams a pruned model block by block.  :class:`OutputFolder` owns ``OUT``:

* :meth:`OutputFolder.open` runs every check before any long work starts: ``OUT`` is not the current folder,
  ``$HOME``, ``/``, an ancestor of these, or inside / around a ``protected`` folder (the input model); an existing
  ``OUT`` is replaced only if prunekit wrote it (``prunekit_output.json``) and ``overwrite=True``, or if it is
  empty; the parent is writable and has ``needed_bytes`` free; an exclusive ``flock`` on
  ``<parent>/.<name>.prunekit.lock`` keeps a second run out (the kernel drops it if the process dies).
* Everything is written into ``<parent>/.<name>.prunekit-partial`` (marked by ``prunekit_partial.json``, which holds
  the run's fingerprint), atomically file by file, with the permissions ``mkdir`` / ``open`` would give.  A killed run
  leaves it behind; ``resume=True`` with the same fingerprint continues it.
* :meth:`OutputFolder.finish` writes ``prunekit_output.json`` and renames the partial folder to ``OUT``; until it
  returns, nothing at ``OUT`` looks like a finished model.

Guarantee: prunekit deletes only folders that carry one of its markers (or are empty); it never deletes or
overwrites anything else.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from .. import __version__
from ..errors import ModelError
from .atomic import atomic_write, fsync_dir, json_bytes, read_json
from .output_lock import OutputLock

OUTPUT_MARKER = "prunekit_output.json"
PARTIAL_MARKER = "prunekit_partial.json"
PROGRESS_FILE = "prunekit_progress.json"
_RESERVED = frozenset({OUTPUT_MARKER, PARTIAL_MARKER, PROGRESS_FILE})
_ABSENT = object()


def is_prunekit_output(path) -> bool:
    """True iff ``path`` is a real folder (not a link) carrying prunekit's output marker."""
    p = Path(path)
    return p.is_dir() and not p.is_symlink() and (p / OUTPUT_MARKER).is_file()


class OutputFolder:
    """An output folder being written; create it with :meth:`open`, end it with :meth:`finish` or :meth:`close`.

    Attributes
    ----------
    out : Path
        The final folder (absolute; symlinks in its parents resolved).
    partial : Path
        Where everything is written until :meth:`finish`.
    resumed : bool
        True iff an unfinished run with the same fingerprint is being continued.
    notes : list of str
        What :meth:`open` cleaned up (leftovers of killed runs), for the caller to report.
    """

    def __init__(self, out: Path, partial: Path, lock: OutputLock, fingerprint: Any, overwrite: bool,
                 resumed: bool, notes: list[str]):
        self.out, self.partial, self._lock = out, partial, lock
        self.fingerprint, self.overwrite, self.resumed, self.notes = fingerprint, overwrite, resumed, notes
        self._state = "open"

    @classmethod
    def open(cls, out, *, overwrite: bool = False, resume: bool = False, fingerprint: dict,
             needed_bytes: int = 0, protected: Sequence = ()) -> OutputFolder:
        """Check everything, take the lock, and prepare (or reuse) the partial folder.

        Raises :class:`~prunekit.errors.ModelError` (naming the fix) if ``out`` is a precious folder, a file, a
        folder prunekit did not write, a prunekit output without ``overwrite``, locked by another run, on a disk
        with less than ``needed_bytes`` free (less what a resumed partial already holds), or if an unfinished run
        exists that is neither resumed nor discarded.  Nothing is deleted before every check has passed.
        """
        out = _normalize(out)
        _refuse_precious(out, protected)
        parent = out.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ModelError(f"cannot create {parent}, the parent of --out {out} ({e.strerror}). "
                             "Fix: choose an --out in a folder you can write.") from e
        if not os.access(parent, os.W_OK | os.X_OK):
            raise ModelError(f"{parent} (the parent of --out {out}) is not writable. "
                             "Fix: choose an --out in a folder you can write.")
        lock = OutputLock.acquire(parent / f".{out.name}.prunekit.lock", out)
        try:
            fp = json.loads(json.dumps(fingerprint, sort_keys=True, default=str))
            _check_out(out, overwrite)
            partial = parent / f".{out.name}.prunekit-partial"
            action, info = _plan_partial(partial, out, fp, resume, overwrite)
            _check_space(out, needed_bytes - (_tree_bytes(partial) if action == "reuse" else 0))
            # ---- all checks passed: from here on we may modify (only what prunekit wrote) ----
            notes = _clean_leftovers(parent, out)
            if action == "rmdir":
                os.rmdir(partial)  # empty: nothing is lost; fails if someone filled it meanwhile
            elif action == "discard":
                _remove_ours(partial)
                notes.append(f"discarded the unfinished run at {partial} (--overwrite)")
            if action == "reuse":
                created = info.get("created") or _now()
                with contextlib.suppress(FileNotFoundError):  # a run killed inside finish(): not finished now
                    os.unlink(partial / OUTPUT_MARKER)
            else:
                partial.mkdir()
                created = _now()
            atomic_write(partial / PARTIAL_MARKER, json_bytes(
                {"fingerprint": fp, "prunekit_version": __version__, "created": created, "pid": os.getpid()}))
        except BaseException:
            lock.release()
            raise
        return cls(out, partial, lock, fp, overwrite, action == "reuse", notes)

    # ------------------------------------------------------------------ writing
    def path(self, relpath) -> Path:
        """Absolute path of ``relpath`` inside the partial folder (its parent folders created)."""
        self._check_open()
        rel = Path(relpath)
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise ModelError(f"{relpath!r} is not a relative path inside the output. Fix: pass e.g. 'model.safetensors'.")
        if len(rel.parts) == 1 and rel.name in _RESERVED:
            raise ModelError(f"{rel.name} is reserved for prunekit's own bookkeeping. Fix: use another file name.")
        target = self.partial / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def write_file(self, relpath, data: bytes | str) -> Path:
        """Write ``data`` (str as UTF-8) atomically: a reader sees the old file or the whole new one."""
        target = self.path(relpath)
        atomic_write(target, data.encode() if isinstance(data, str) else bytes(data))
        return target

    def write_json(self, relpath, obj) -> Path:
        """Write ``obj`` as indented, key-sorted JSON, atomically."""
        return self.write_file(relpath, json_bytes(obj))

    def read_state(self) -> dict:
        """The resume state last written by :meth:`write_state` (``{}`` if none or unreadable)."""
        self._check_open()
        return read_json(self.partial / PROGRESS_FILE) or {}

    def write_state(self, state: dict) -> None:
        """Record the resume state (``prunekit_progress.json``) atomically."""
        self._check_open()
        atomic_write(self.partial / PROGRESS_FILE, json_bytes(state))

    # ------------------------------------------------------------------ ending
    def finish(self, marker: dict) -> Path:
        """Mark the output finished and publish it at :attr:`out` atomically; release the lock; return ``out``.

        ``out`` is re-checked first: a prunekit output is replaced only with ``overwrite`` (renamed aside, the
        partial renamed in, then the old one deleted), an empty folder is replaced by the rename itself, anything
        else raises and keeps the partial folder for ``--resume``.
        """
        self._check_open()
        state = _check_out(self.out, self.overwrite)
        out_marker = {**marker, "prunekit_version": __version__, "finished": _now()}
        out_marker.setdefault("fingerprint", self.fingerprint)
        atomic_write(self.partial / OUTPUT_MARKER, json_bytes(out_marker))
        for name in (PROGRESS_FILE, PARTIAL_MARKER):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.partial / name)
        parent = self.out.parent
        try:
            if state == "prunekit":
                old = _free_name(parent / f".{self.out.name}.prunekit-old-{os.getpid()}")
                os.rename(self.out, old)
                try:
                    os.rename(self.partial, self.out)
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.rename(old, self.out)
                    raise
                fsync_dir(parent)
                _remove_ours(old)
            else:  # absent or empty: rename(2) replaces an empty folder atomically and fails on a non-empty one
                os.rename(self.partial, self.out)
                fsync_dir(parent)
        except OSError as e:
            raise ModelError(f"could not move the finished output {self.partial} to {self.out} ({e.strerror}); "
                             "it is kept. Fix: make sure nothing else writes --out, then rerun with --resume.") from e
        self._state = "finished"
        self._lock.release()
        return self.out

    def close(self) -> None:
        """Release the lock; keep the partial folder (for ``--resume``).  Idempotent."""
        if self._state == "open":
            self._state = "closed"
        self._lock.release()

    @property
    def state(self) -> str:
        """"open" (being written), "finished" or "closed"."""
        return self._state

    def discard(self) -> None:
        """Delete the partial folder (prunekit's own, marker-checked) and release the lock: for writers that
        cannot resume (``save_pruned``).  Idempotent."""
        if self._state == "open" and self.partial.is_dir() and (self.partial / PARTIAL_MARKER).is_file():
            _remove_ours(self.partial)
        self.close()

    def __enter__(self) -> OutputFolder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"OutputFolder(out={str(self.out)!r}, state={self._state!r}, resumed={self.resumed})"

    def _check_open(self) -> None:
        if self._state != "open":
            raise ModelError(f"the output folder for {self.out} is already {self._state}. "
                             "Fix: open a new OutputFolder.")


# ---------------------------------------------------------------------------------------------- checks
def _normalize(out) -> Path:
    """Absolute path with symlinks in the parents resolved; a symlink as ``out`` itself is refused."""
    raw = Path(os.path.expanduser(os.fspath(out)))
    raw = raw if raw.is_absolute() else Path(os.getcwd()) / raw
    if raw.name in ("", ".", ".."):
        return raw.resolve()
    if raw.is_symlink():
        raise ModelError(f"--out {raw} is a symbolic link; prunekit does not replace links or write through them. "
                         f"Fix: pass the real folder ({os.path.realpath(raw)}) or choose another --out.")
    return raw.parent.resolve() / raw.name


def _variants(p) -> set[Path]:
    a = Path(os.path.abspath(os.path.expanduser(os.fspath(p))))
    return {a, a.resolve()}


def _within(a: Path, b: Path) -> bool:
    """True iff ``a`` is ``b`` or lies inside it."""
    return a == b or b in a.parents


def _refuse_precious(out: Path, protected: Sequence) -> None:
    why = None
    if out == Path(out.anchor):
        why = "is the file-system root"
    elif any(_within(c, out) for c in _variants(os.getcwd())):
        why = "is the current folder or one of its parents"
    elif any(_within(h, out) for h in _variants("~")):
        why = "is your home folder or one of its parents"
    else:
        for p in protected:
            if any(_within(out, v) or _within(v, out) for v in _variants(p)):
                why = f"is, contains or lies inside the protected folder {p} (e.g. the input model)"
                break
    if why:
        raise ModelError(f"refusing --out {out}: it {why}; replacing it could destroy your files. "
                         "Fix: choose a new, dedicated folder for --out (e.g. ./pruned-model).")


def _check_out(out: Path, overwrite: bool) -> str:
    """``"absent"``, ``"empty"`` or ``"prunekit"`` (only with ``overwrite``); raises for anything else."""
    if not os.path.lexists(out):
        return "absent"
    if out.is_symlink() or not out.is_dir():
        raise ModelError(f"--out {out} exists and is not a folder; prunekit never replaces files it did not "
                         "write. Fix: choose another --out.")
    if (out / OUTPUT_MARKER).is_file():
        if not overwrite:
            raise ModelError(f"--out {out} exists; pass --overwrite to replace this prunekit output. "
                             "Fix: --overwrite, or choose another --out.")
        return "prunekit"
    try:
        empty = not any(out.iterdir())
    except OSError as e:
        raise ModelError(f"cannot read --out {out} ({e.strerror}). Fix: choose another --out.") from e
    if empty:
        return "empty"
    raise ModelError(f"--out {out} was not written by prunekit (no {OUTPUT_MARKER}); prunekit never deletes "
                     "folders it did not write. Fix: choose another --out or remove it yourself.")


def _plan_partial(partial: Path, out: Path, fp, resume: bool, overwrite: bool) -> tuple[str, dict]:
    """What to do with an existing partial folder: ``fresh``, ``rmdir``, ``reuse`` or ``discard`` (else raise)."""
    if not os.path.lexists(partial):
        return "fresh", {}
    ours = (partial.is_dir() and not partial.is_symlink()
            and ((partial / PARTIAL_MARKER).is_file() or (partial / OUTPUT_MARKER).is_file()))
    if not ours:
        if partial.is_dir() and not partial.is_symlink() and not any(partial.iterdir()):
            return "rmdir", {}
        raise ModelError(f"{partial} (prunekit's working folder for --out {out}) exists but has no "
                         f"{PARTIAL_MARKER}: prunekit did not write it and never deletes what it did not write. "
                         "Fix: move or remove it yourself, or choose another --out.")
    info = read_json(partial / PARTIAL_MARKER) or read_json(partial / OUTPUT_MARKER) or {}
    started = info.get("created") or info.get("finished") or "at an unknown time"
    if resume and info.get("fingerprint", _ABSENT) == fp:
        return "reuse", info
    if overwrite:
        return "discard", info
    if resume:
        diffs = "; ".join(_diff(info.get("fingerprint", _ABSENT), fp)) or "its marker is unreadable"
        raise ModelError(f"cannot resume the unfinished run at {partial} (started {started}): the arguments differ: "
                         f"{diffs}. Fix: rerun with the same arguments as that run to resume it, or pass "
                         "--overwrite to discard it and start fresh.")
    raise ModelError(f"an unfinished run exists at {partial} (started {started}); "
                     "Fix: --resume to continue it, or --overwrite to discard it.")


def _check_space(out: Path, needed: int) -> None:
    if needed <= 0:
        return
    free = shutil.disk_usage(out.parent).free
    if free < needed:
        raise ModelError(f"not enough free space for --out {out}: {_fmt_bytes(free)} free, {_fmt_bytes(needed)} "
                         f"needed. Fix: free at least {_fmt_bytes(needed - free)} on that disk, or choose an --out "
                         "on another disk.")


def _clean_leftovers(parent: Path, out: Path) -> list[str]:
    """Remove ``.<name>.prunekit-old-*`` folders of killed replaces that carry the output marker (or are empty)."""
    notes = []
    for old in sorted(parent.glob(f".{glob.escape(out.name)}.prunekit-old-*")):
        if old.is_symlink() or not old.is_dir():
            continue
        if (old / OUTPUT_MARKER).is_file():
            _remove_ours(old)
            notes.append(f"removed {old}, an old prunekit output left by a run killed while replacing {out}")
        elif not any(old.iterdir()):
            os.rmdir(old)
            notes.append(f"removed the empty folder {old} left by a run killed while replacing {out}")
    return notes


# ---------------------------------------------------------------------------------------------- file helpers
def _remove_ours(folder: Path) -> None:
    """Delete a folder prunekit wrote, its markers last, so an interrupted delete still carries a marker."""
    for child in folder.iterdir():
        if child.name in _RESERVED:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    for name in _RESERVED:
        with contextlib.suppress(FileNotFoundError):
            (folder / name).unlink()
    os.rmdir(folder)


def _free_name(path: Path) -> Path:
    candidate, i = path, 0
    while os.path.lexists(candidate):
        i += 1
        candidate = path.with_name(f"{path.name}-{i}")
    return candidate


def _tree_bytes(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def _now() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def _fmt_bytes(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if abs(n) >= 2**30 else f"{n / 2**20:.1f} MiB"


def _flatten(obj, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict) and obj:
        flat: dict[str, Any] = {}
        for k, v in obj.items():
            flat.update(_flatten(v, f"{prefix}{k}."))
        return flat
    return {prefix[:-1] or "fingerprint": obj}


def _diff(old, new) -> list[str]:
    """``"a.b: 0.5 (partial) != 0.3 (now)"`` for every dotted key whose value differs."""
    a = {} if old is _ABSENT else _flatten(old)
    b = _flatten(new)

    def show(v):
        return "<absent>" if v is _ABSENT else json.dumps(v, sort_keys=True)

    return [f"{k}: {show(a.get(k, _ABSENT))} (partial) != {show(b.get(k, _ABSENT))} (now)"
            for k in sorted(set(a) | set(b)) if a.get(k, _ABSENT) != b.get(k, _ABSENT)]


__all__ = ["OUTPUT_MARKER", "OutputFolder", "is_prunekit_output"]
