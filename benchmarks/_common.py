"""Small helpers shared by the benchmark scripts: machine facts, versions, peak memory, JSON and markdown.

Peak memory
-----------
* CUDA: ``torch.cuda.reset_peak_memory_stats`` / ``torch.cuda.max_memory_allocated`` (bytes allocated by
  tensors; the caching allocator's reserve is reported apart).
* CPU: the process's resident-set high-water mark ``VmHWM``.  On Linux it is reset by writing ``5`` to
  ``/proc/self/clear_refs``, so a peak can be taken per phase; where that is not possible (not Linux, or no
  permission) a sampling thread (psutil, every 5 ms) records the highest RSS seen during the phase instead.
  ``PeakMemory.method`` says which one produced the number.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]

GiB = 1024**3
MiB = 1024**2


# ----------------------------------------------------------------------------------------------- machine
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """CPU model, cores (logical and usable), RAM, torch threads, GPU name where a CUDA device is used."""
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
    }
    try:
        import psutil

        info["ram_gib"] = round(psutil.virtual_memory().total / GiB, 1)
        info["load_avg_1m"] = round(os.getloadavg()[0], 2)
    except Exception:  # pragma: no cover - psutil is part of the [hf] extra
        info["ram_gib"] = None
    if str(device).startswith("cuda") and torch.cuda.is_available():
        idx = torch.device(device).index or 0
        props = torch.cuda.get_device_properties(idx)
        info["gpu"] = torch.cuda.get_device_name(idx)
        info["gpu_memory_gib"] = round(props.total_memory / GiB, 1)
        info["cuda"] = torch.version.cuda
    return info


def versions() -> dict[str, str]:
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__}
    for mod in ("prunekit", "transformers", "numpy"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:
            out[mod] = "not installed"
    try:
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain"], capture_output=True, text=True,
                               timeout=10)
        out["git"] = rev.stdout.strip() + ("+uncommitted" if dirty.stdout.strip() else "")
    except Exception:
        out["git"] = "unknown"
    return out


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def command_line() -> str:
    """The command that is running, relative to the repository root where possible."""
    args = list(sys.argv)
    try:
        args[0] = str(Path(args[0]).resolve().relative_to(REPO))
    except ValueError:
        pass
    return "python " + " ".join(_quote(a) for a in args)


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


# ----------------------------------------------------------------------------------------------- memory
def _read_status_kib(field: str) -> Optional[int]:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_bytes() -> int:
    kib = _read_status_kib("VmRSS")
    if kib is not None:
        return kib * 1024
    import psutil

    return psutil.Process().memory_info().rss


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return _read_status_kib("VmHWM") is not None
    except OSError:
        return False


class PeakMemory:
    """Context manager measuring the peak memory of a phase on ``device``.

    Attributes after exit: ``peak_bytes`` (CPU: peak RSS of the process; CUDA: max allocated), ``start_bytes``
    (the same quantity when the phase began), ``delta_bytes`` = peak - start, ``method`` (how it was measured)
    and, on CUDA, ``reserved_bytes``.
    """

    def __init__(self, device: str = "cpu"):
        self.device = str(device)
        self.peak_bytes = 0
        self.start_bytes = 0
        self.reserved_bytes: Optional[int] = None
        self.method = ""
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._sampled = 0

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    def __enter__(self) -> "PeakMemory":
        if self.cuda:
            import torch

            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_bytes = torch.cuda.memory_allocated(self.device)
            self.method = "torch.cuda.max_memory_allocated"
            return self
        self.start_bytes = rss_bytes()
        if _reset_hwm():
            self.method = "VmHWM (reset via /proc/self/clear_refs)"
        else:
            self.method = "psutil RSS sampling (5 ms)"
            self._sampled = self.start_bytes
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._sampled = max(self._sampled, rss_bytes())
            time.sleep(0.005)

    def __exit__(self, *exc) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
            self.reserved_bytes = torch.cuda.max_memory_reserved(self.device)
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.peak_bytes = max(self._sampled, rss_bytes())
        else:
            kib = _read_status_kib("VmHWM")
            self.peak_bytes = kib * 1024 if kib is not None else rss_bytes()
        self.delta_bytes = max(0, self.peak_bytes - self.start_bytes)

    def to_dict(self) -> dict[str, Any]:
        out = {"peak_mib": round(self.peak_bytes / MiB, 1), "delta_mib": round(self.delta_bytes / MiB, 1),
               "method": self.method}
        if self.reserved_bytes is not None:
            out["reserved_mib"] = round(self.reserved_bytes / MiB, 1)
        return out


def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------------------------- output
def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (a partial file never looks like a finished run)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")
    os.replace(tmp, path)


def _json_default(obj: Any) -> Any:
    try:
        import torch

        if isinstance(obj, torch.Tensor):
            return obj.tolist() if obj.numel() < 64 else f"tensor{tuple(obj.shape)}"
        if isinstance(obj, (torch.dtype, torch.device)):
            return str(obj)
    except Exception:
        pass
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    return repr(obj)


def md_table(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        if v is None:
            return "—"
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt_bytes(n: Optional[float]) -> str:
    if n is None:
        return "—"
    if n >= GiB:
        return f"{n / GiB:.2f} GiB"
    return f"{n / MiB:.1f} MiB"


def machine_line(info: dict[str, Any]) -> str:
    parts = [f"CPU {info.get('cpu_model')}", f"{info.get('cpu_affinity') or info.get('cpu_count')} usable cores",
             f"{info.get('ram_gib')} GiB RAM", f"torch threads {info.get('torch_threads')}"]
    if info.get("gpu"):
        parts.insert(0, f"GPU {info['gpu']} ({info.get('gpu_memory_gib')} GiB, CUDA {info.get('cuda')})")
    if info.get("load_avg_1m") is not None:
        parts.append(f"load average (1 min) at start {info['load_avg_1m']}")
    return ", ".join(parts)
