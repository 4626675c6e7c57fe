"""The lock on an output folder: an exclusive ``flock`` on ``<parent>/.<name>.prunekit.lock`` holding the pid.

The kernel drops a ``flock`` when its process dies (even ``kill -9``), so a stale lock file is harmless: the next run
locks it again.  The file is removed on release only while it is still the one this process locked.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from ..errors import ModelError


class OutputLock:
    """An exclusive ``flock`` on a lock file that records the holder's pid."""

    def __init__(self, path: Path, fd: int | None):
        self.path, self.fd = path, fd

    @classmethod
    def acquire(cls, path: Path, out: Path) -> "OutputLock":
        for _ in range(20):
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            except OSError as e:
                raise ModelError(f"cannot create the lock file {path} ({e.strerror}). "
                                 "Fix: choose an --out in a folder you can write.") from e
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise ModelError(f"another prunekit run (pid {pid}) is writing {out} (lock {path}). "
                                 "Fix: wait for it to finish, or choose another --out.") from None
            except OSError as e:
                os.close(fd)
                raise ModelError(f"cannot lock {path} ({e.strerror}); the file system may not support flock. "
                                 "Fix: choose an --out on a local disk.") from e
            lock = cls(path, fd)
            if lock._is_current():  # else a finishing run unlinked the file we locked: lock the new one
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                return lock
            os.close(fd)
        raise ModelError(f"could not take the lock {path}: it keeps being replaced. Fix: rerun.")

    def _is_current(self) -> bool:
        try:
            a, b = os.fstat(self.fd), os.stat(self.path)
        except OSError:
            return False
        return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)

    def release(self) -> None:
        """Remove the lock file (only while holding it) and drop the lock.  Idempotent."""
        if self.fd is None:
            return
        try:
            if self._is_current():
                os.unlink(self.path)
        except OSError:
            pass
        finally:
            os.close(self.fd)
            self.fd = None



__all__ = ["OutputLock"]
