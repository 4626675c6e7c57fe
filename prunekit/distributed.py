"""Many processes, one pruning run: torch.distributed for ``torchrun -m prunekit prune ...`` (methods.md §2).

Any torch.distributed launcher that sets ``WORLD_SIZE`` > 1, ``RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``
(``torchrun``, ``torch.distributed.run``, SLURM wrappers, multi-node included) runs the same pipeline in parallel:

* **calibration** -- rank r takes the windows r, r + W, r + 2W, ... (:meth:`Context.local_windows`); capture and
  propagation happen per rank on its own windows;
* **statistics** -- each target's accumulators (every tensor of a ``GramAccumulator`` is a sum over tokens: G, the
  input sum, G* and X X*^T) and its token count are summed over ranks in float64 (:meth:`Context.reduce_statistics_`),
  so the rank that builds a layer problem sees the statistics of ALL windows;
* **solving** -- the targets of a block stage go to ranks by size (:meth:`Context.owners`, longest first to the least
  loaded rank); each solution is broadcast from its owner (:meth:`Context.broadcast`, bit-exact), so every rank builds
  the same pruned block;
* **I/O** -- rank 0 alone opens the output folder, writes shards, the report and the plan (:meth:`Context.from_main`
  runs a step on rank 0 and hands its value -- or its exception -- to every rank).

Errors never hang the group: every step that a rank runs on its own is wrapped by :meth:`Context.checked`, which
gathers each rank's outcome; an exception on any rank is raised on every rank (the failing rank raises its own, the
others a copy with the same type and message).  A process killed outright is the launcher's business (torchrun stops
the other workers).

A single process (no ``WORLD_SIZE`` > 1 in the environment and no initialized process group) gets :data:`SINGLE`,
whose methods are plain calls: exactly the single-process code path.
"""

from __future__ import annotations

import contextlib
import os
import pickle
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence, TypeVar

import torch

from .errors import DataError, DeviceError

T = TypeVar("T")
ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


# ---------------------------------------------------------------------------------------------- environment
def launched_world_size() -> int:
    """``WORLD_SIZE`` of the environment (1 when unset): > 1 means a torch.distributed launcher started us."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def launched_rank() -> int:
    """``RANK`` of the environment (0 when unset)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def is_main_process() -> bool:
    """True in a single process and on rank 0 of a launched group (who prints and writes)."""
    if _initialized():
        import torch.distributed as dist

        return dist.get_rank() == 0
    return launched_rank() == 0


def _initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


# ---------------------------------------------------------------------------------------------- the context
@dataclass(frozen=True)
class _Slot:
    """Where a tensor sat inside a broadcast payload: its shape and dtype (the bytes travel separately)."""

    index: int
    shape: tuple[int, ...]
    dtype: torch.dtype


@dataclass(frozen=True)
class Context:
    """Rank, world size and backend of this process's group; collective helpers that are plain calls when
    ``world_size == 1``.

    Every collective method must be called by all ranks in the same order (as torch.distributed requires); the
    pipeline keeps each rank's own work inside :meth:`checked` so an exception never leaves a rank behind.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: Optional[str] = None

    @property
    def active(self) -> bool:
        """More than one process takes part."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that prints and writes the output."""
        return self.rank == 0

    @property
    def comm_device(self) -> torch.device:
        """Where tensors travel: ``cuda:LOCAL_RANK`` for NCCL, the CPU otherwise (gloo)."""
        if self.backend == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    # ------------------------------------------------------------------ work split
    def local_windows(self, tokens):
        """This rank's calibration windows r, r + W, ... of ``tokens`` (a CalibrationSet or an (n, L) tensor; the
        value itself when single).

        Raises
        ------
        DataError
            fewer windows than ranks (a rank would have no statistics).
        """
        if not self.active:
            return tokens
        n = len(tokens)
        if n < self.world_size:
            raise DataError(f"{n} calibration window(s) cannot be split across {self.world_size} processes. Fix: "
                            f"use --nsamples >= {self.world_size}, or fewer processes (--nproc_per_node).")
        from .calibration_set import CalibrationSet

        if isinstance(tokens, CalibrationSet):
            mask = tokens.attention_mask
            return CalibrationSet(tokens.input_ids[self.rank::self.world_size],
                                  None if mask is None else mask[self.rank::self.world_size])
        return tokens[self.rank::self.world_size]

    def owners(self, sizes: Sequence[int]) -> list[int]:
        """A rank for each job of cost ``sizes[i]``: longest first to the least loaded rank (ties: lowest index and
        lowest rank), the same answer on every rank.  All 0 when single."""
        if not self.active:
            return [0] * len(sizes)
        load = [0] * self.world_size
        out = [0] * len(sizes)
        for i in sorted(range(len(sizes)), key=lambda k: (-int(sizes[k]), k)):
            rank = min(range(self.world_size), key=lambda r: (load[r], r))
            out[i] = rank
            load[rank] += max(1, int(sizes[i]))
        return out

    # ------------------------------------------------------------------ errors
    def checked(self, fn: Callable[..., T], *args, **kwargs) -> T:
        """``fn(*args, **kwargs)`` on every rank, then agree: if any rank raised, every rank raises (the failing
        rank its own exception, the others the first failing rank's, same type and message).  Returns the local
        value.  Single: the plain call."""
        if not self.active:
            return fn(*args, **kwargs)
        import torch.distributed as dist

        error: Optional[BaseException] = None
        value = None
        try:
            value = fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 -- handed to every rank below, then raised
            error = exc
        statuses: list[Any] = [None] * self.world_size
        dist.all_gather_object(statuses, None if error is None else _portable(error, self.rank))
        if error is not None:
            raise error
        for status in statuses:
            if status is not None:
                raise _unpack(status)
        return value

    def from_main(self, fn: Callable[[], T]) -> T:
        """``fn()`` on rank 0 only; its value (tensors included) -- or its exception -- reaches every rank.
        Single: the plain call."""
        if not self.active:
            return fn()
        if self.is_main:
            try:
                outcome = (True, fn())
            except Exception as exc:  # noqa: BLE001 -- handed to every rank below, then raised
                self.broadcast((False, _portable(exc, 0)), src=0)
                raise
            self.broadcast(outcome, src=0)
            return outcome[1]
        ok, value = self.broadcast(None, src=0)
        if not ok:
            raise _unpack(value)
        return value

    # ------------------------------------------------------------------ transport
    def broadcast(self, payload: Any, src: int) -> Any:
        """``payload`` of rank ``src`` on every rank: tensors anywhere inside tuples, lists and dicts travel as raw
        bytes (any dtype; bit-exact), on the receivers they land on :attr:`comm_device`; the rest is pickled.  The
        sender gets its own payload back unchanged.  Single: ``payload``."""
        if not self.active:
            return payload
        import torch.distributed as dist

        tensors: list[torch.Tensor] = []
        box = [_strip(payload, tensors) if self.rank == src else None]
        dist.broadcast_object_list(box, src=src)
        skeleton = box[0]
        slots = _slots(skeleton)
        received: list[torch.Tensor] = []
        for slot in slots:
            if self.rank == src:
                t = tensors[slot.index].detach()
                buf = _as_bytes(t.to(self.comm_device))
            else:
                buf = torch.empty(_nbytes(slot), dtype=torch.uint8, device=self.comm_device)
            if buf.numel():
                dist.broadcast(buf, src=src)
            received.append(buf)
        if self.rank == src:
            return payload
        tensors_in = [_from_bytes(buf, slot) for buf, slot in zip(received, slots)]
        return _fill(skeleton, tensors_in)

    def reduce_(self, tensor: torch.Tensor, dst: Optional[int] = None) -> torch.Tensor:
        """Sum ``tensor`` over ranks in place (floating point: summed in float64), onto every rank (``dst`` None)
        or onto rank ``dst`` only (the others keep a partial sum).  Returns ``tensor``."""
        if not self.active:
            return tensor
        import torch.distributed as dist

        wide = torch.float64 if tensor.is_floating_point() else tensor.dtype
        work = tensor.detach().to(device=self.comm_device, dtype=wide)
        if dst is None:
            dist.all_reduce(work, op=dist.ReduceOp.SUM)
        else:
            dist.reduce(work, dst=dst, op=dist.ReduceOp.SUM)
        if work is not tensor and (dst is None or dst == self.rank):
            with torch.no_grad():
                tensor.copy_(work)
        return tensor

    def reduce_statistics_(self, accumulator, dst: Optional[int] = None):
        """Sum an accumulator's statistics over ranks in place: every tensor attribute (each is a sum over tokens --
        G, the input sum, G*, X X*^T of ``prunekit.formulations.GramAccumulator``) in float64, and ``num_tokens``.
        Onto every rank (``dst`` None) or rank ``dst`` only.  Returns the accumulator."""
        if not self.active:
            return accumulator
        names = sorted(k for k, v in vars(accumulator).items() if isinstance(v, torch.Tensor))
        expected = self.broadcast(names, src=0)

        def same_statistics():
            if names != expected:
                raise RuntimeError(f"rank {self.rank} holds statistics {names}, rank 0 holds {expected}; every rank "
                                   f"must see every target's input.")

        self.checked(same_statistics)
        for name in names:
            self.reduce_(getattr(accumulator, name), dst=dst)
        if hasattr(accumulator, "num_tokens"):
            count = torch.tensor([int(accumulator.num_tokens)], dtype=torch.int64)
            self.reduce_(count, dst=dst)
            if dst is None or dst == self.rank:
                accumulator.num_tokens = int(count.item())
        return accumulator

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()

    def node_first(self, fn: Callable[[], T]) -> T:
        """``fn()`` on each node's local rank 0 first, then on the node's other ranks (a download or a cache fill
        happens once per node).  Errors reach every rank.  Single: the plain call."""
        if not self.active:
            return fn()
        first = self.checked(fn) if self.local_rank == 0 else self.checked(lambda: None)
        later = self.checked(fn) if self.local_rank != 0 else self.checked(lambda: None)
        return first if self.local_rank == 0 else later


SINGLE = Context()


def current() -> Context:
    """The context of the initialized process group (world size > 1), else :data:`SINGLE`."""
    if not _initialized():
        return SINGLE
    import torch.distributed as dist

    world = dist.get_world_size()
    if world <= 1:
        return SINGLE
    local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    return Context(rank=dist.get_rank(), world_size=world, local_rank=local, backend=str(dist.get_backend()))


def device_for(device: torch.device, local_rank: int) -> torch.device:
    """The device of this rank: ``cuda:LOCAL_RANK`` when ``device`` is ``cuda`` without an index (one GPU per
    process); any other device -- ``cpu``, or an explicit ``cuda:N`` -- as given.

    Raises
    ------
    DeviceError
        more processes on this node than GPUs.
    """
    device = torch.device(device)
    if device.type != "cuda" or device.index is not None:
        return device
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise DeviceError(f"process with LOCAL_RANK {local_rank} has no GPU: this node has {count} CUDA device(s). "
                          f"Fix: start at most {count} process(es) per node (--nproc_per_node {count}).")
    return torch.device("cuda", local_rank)


@contextlib.contextmanager
def session(device="cpu") -> Iterator[tuple[Context, torch.device]]:
    """The process group of a launched run: ``(context, this rank's device)`` for the duration of a ``with`` block.

    * ``WORLD_SIZE`` > 1 and no group yet: ``init_process_group`` -- backend "nccl" for ``device`` "cuda" (each rank
      on ``cuda:LOCAL_RANK``; an explicit "cuda:N" is refused), "gloo" for the CPU.  The group then lives until the
      process exits (destroyed cleanly at exit): torch cannot initialize a second default group against the
      launcher's store, so a second run in the same process reuses this one;
    * a group initialized by the caller is used as is (and left alone); "cuda" still means ``cuda:LOCAL_RANK``, an
      explicit "cuda:N" is kept (e.g. two gloo ranks sharing one GPU);
    * otherwise :data:`SINGLE` and ``device`` unchanged.

    Raises
    ------
    DeviceError
        ``WORLD_SIZE`` > 1 but the launcher's other variables are missing, torch has no distributed support, or an
        explicit "cuda:N" would put every new NCCL rank on one GPU.
    """
    device = torch.device(device)
    if not _initialized() and launched_world_size() > 1:
        init(device)
    ctx = current()
    yield ctx, device_for(device, ctx.local_rank) if ctx.active else device


def init(device="cpu") -> Context:
    """Initialize the default process group from the launcher's environment (see :func:`session`); a no-op when
    one exists or ``WORLD_SIZE`` <= 1.  Returns :func:`current`."""
    import atexit

    import torch.distributed as dist

    if _initialized() or launched_world_size() <= 1:
        return current()
    missing = [k for k in ENV if k not in os.environ]
    if missing or not dist.is_available():
        what = f"variables {missing} are not set" if missing else "this torch build has no torch.distributed"
        raise DeviceError(f"WORLD_SIZE={os.environ.get('WORLD_SIZE')} asks for a distributed run, but {what}. Fix: "
                          f"start prunekit with a launcher (torchrun --nproc_per_node N -m prunekit prune ...), or "
                          f"unset WORLD_SIZE for a single process.")
    device = torch.device(device)
    if device.type == "cuda" and device.index is not None:
        raise DeviceError(f"--device {device} under a launcher of {launched_world_size()} processes would put every "
                          f"process on the same GPU, which NCCL refuses. Fix: pass --device cuda (process i uses "
                          f"cuda:LOCAL_RANK), or restrict GPUs with CUDA_VISIBLE_DEVICES.")
    device = device_for(device, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    atexit.register(destroy)
    return current()


def destroy() -> None:
    """Destroy the default process group if one is initialized (registered at exit by :func:`init`)."""
    if _initialized():
        import torch.distributed as dist

        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------- helpers
def _portable(exc: BaseException, rank: int) -> Any:
    """``exc`` as something every rank can unpickle: the exception itself, or a RuntimeError with its text."""
    try:
        clone = pickle.loads(pickle.dumps(exc))
        if type(clone) is type(exc) and str(clone) == str(exc):
            return exc
    except Exception:  # noqa: BLE001 -- an exception that does not pickle travels as text
        pass
    return RuntimeError(f"{type(exc).__name__} on rank {rank}: {exc}")


def _unpack(status: Any) -> BaseException:
    return status if isinstance(status, BaseException) else RuntimeError(str(status))


def _strip(obj: Any, tensors: list[torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        tensors.append(obj)
        return _Slot(len(tensors) - 1, tuple(obj.shape), obj.dtype)
    if isinstance(obj, tuple):
        return tuple(_strip(v, tensors) for v in obj)
    if isinstance(obj, list):
        return [_strip(v, tensors) for v in obj]
    if isinstance(obj, dict):
        return {k: _strip(v, tensors) for k, v in obj.items()}
    return obj


def _slots(obj: Any) -> list[_Slot]:
    if isinstance(obj, _Slot):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [s for v in obj for s in _slots(v)]
    if isinstance(obj, dict):
        return [s for v in obj.values() for s in _slots(v)]
    return []


def _fill(obj: Any, tensors: list[torch.Tensor]) -> Any:
    if isinstance(obj, _Slot):
        return tensors[obj.index]
    if isinstance(obj, tuple):
        return tuple(_fill(v, tensors) for v in obj)
    if isinstance(obj, list):
        return [_fill(v, tensors) for v in obj]
    if isinstance(obj, dict):
        return {k: _fill(v, tensors) for k, v in obj.items()}
    return obj


def _nbytes(slot: _Slot) -> int:
    numel = 1
    for d in slot.shape:
        numel *= int(d)
    return numel * torch.empty((), dtype=slot.dtype).element_size()


def _as_bytes(t: torch.Tensor) -> torch.Tensor:
    flat = t.contiguous().reshape(-1)
    return flat.view(torch.uint8) if flat.numel() else torch.empty(0, dtype=torch.uint8, device=t.device)


def _from_bytes(buf: torch.Tensor, slot: _Slot) -> torch.Tensor:
    if buf.numel() == 0:
        return torch.empty(slot.shape, dtype=slot.dtype, device=buf.device)
    return buf.view(slot.dtype).reshape(slot.shape)


__all__ = ["Context", "SINGLE", "current", "destroy", "device_for", "init", "is_main_process", "launched_rank",
           "launched_world_size", "session"]
