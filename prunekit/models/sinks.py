"""Block sinks: what the runner does with each pruned block (design.md: mutation lives in one place).

The runner hands every finished block to a sink as ``commit(index, pruned_block, block_plan)``:

* :class:`PlanSink` -- keeps the block's edits (new weights in memory, kept units, records); the model is left
  alone (``prunekit.plan``);
* :class:`ModelSink` -- puts the pruned block into the model in place of the original (``prunekit.prune`` on a
  model object); the plan keeps kept units and records, not a second copy of the weights;
* :class:`CheckpointSink` -- writes the block to its own safetensors shard in the output's working folder in the
  checkpoint's dtype, then commits a resume point atomically (``prunekit_progress.json``: blocks done, their kept
  units and records).  :meth:`CheckpointSink.committed` rebuilds a committed block from its shard, so a resumed
  run propagates calibration inputs through exactly the tensors an uninterrupted run used.

In a distributed run (``prunekit.distributed``) every rank builds the same pruned blocks but only rank 0 owns the
output: :class:`RankZeroSink` wraps rank 0's :class:`CheckpointSink` and gives the other ranks what they need
(the resume point, saved run values, the committed blocks of a resumed run) through broadcasts.
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch
from torch import nn

from .families.experts import experts_unfused, fuse_experts_
from .plan import GroupEdit, PruningPlan
from .block_refit import RefitRecord
from .records import LayerRecord
from .surgery import load_block_state_, pruned_block, replace_block_

PROGRESS_KEY = "blocks"


def block_shard(index: int) -> str:
    return f"model-block-{index:05d}.safetensors"


class PlanSink:
    """Collects edits; the model is not changed."""

    resume_from = 0

    def __init__(self):
        self.plan = PruningPlan()

    def commit(self, store, index: int, block: nn.Module, block_plan: PruningPlan) -> None:
        self.plan.merge_(block_plan, keep_weights=True)


class ModelSink(PlanSink):
    """Replaces each block of the model by its pruned copy (in place)."""

    def commit(self, store, index: int, block: nn.Module, block_plan: PruningPlan) -> None:
        replace_block_(store.model, store.adapter, index, block)
        self.plan.merge_(block_plan, keep_weights=False)


def _nonzero_parameters(module: nn.Module) -> int:
    """Nonzero entries of the module's (distinct, materialized) parameters."""
    seen, total = set(), 0
    for p in module.parameters():
        if id(p) not in seen and p.device.type != "meta":
            seen.add(id(p))
            total += int(torch.count_nonzero(p))
    return total


class CheckpointSink(PlanSink):
    """Writes each pruned block to a shard of the output folder and commits a resume point."""

    def __init__(self, output, fingerprint_recipe: Optional[dict] = None):
        from .checkpoint import ShardWriter

        super().__init__()
        self.output = output
        self.writer = ShardWriter(output.partial)
        state = output.read_state() if output.resumed else {}
        self._done: list[dict] = list(state.get(PROGRESS_KEY, []))
        self.extra: dict = dict(state.get("extra", {}))
        self.resume_from = len(self._done)
        for entry in self._done:
            self.plan.records.extend(LayerRecord.from_dict(r) for r in entry["records"])
            self.plan.refits.extend(RefitRecord.from_dict(r) for r in entry.get("refits", []))
            self.plan.group_edits.update({k: GroupEdit(**{**g, "kept_units": tuple(g["kept_units"])})
                                          for k, g in entry["group_edits"].items()})

    def save_extra(self, **values) -> None:
        """Persist run-level values a resume needs (e.g. allocated ratios) in the progress file."""
        self.extra.update(values)
        self._write_state()

    def _write_state(self) -> None:
        self.output.write_state({PROGRESS_KEY: self._done, "extra": self.extra})

    def commit(self, store, index: int, block: nn.Module, block_plan: PruningPlan) -> None:
        prefix = store.adapter.block_prefix(store.model, index)
        tensors = {f"{prefix}.{k}": v.detach().to("cpu").contiguous() for k, v in block.state_dict().items()}
        self.writer.write(block_shard(index), tensors)
        before = _nonzero_parameters(store.adapter.blocks(store.model)[index])
        replace_block_(store.model, store.adapter, index, block)
        self.plan.merge_(block_plan, keep_weights=False)
        self._done.append({
            "block": index,
            "nonzero": [before, _nonzero_parameters(block)],
            "records": [r.to_dict() for r in block_plan.records],
            "refits": [r.to_dict() for r in block_plan.refits],
            "group_edits": {k: {"group": g.group, "kind": g.kind, "kept_units": list(g.kept_units),
                                "num_units": g.num_units} for k, g in block_plan.group_edits.items()},
        })
        self._write_state()

    def nonzero_parameters(self) -> tuple[int, int]:
        """Nonzero parameters of the committed blocks, (before, after) pruning -- counted at commit, when both the
        dense and the pruned block are in memory (no second pass over the checkpoint)."""
        pairs = [entry.get("nonzero", (0, 0)) for entry in self._done]
        return sum(int(b) for b, _ in pairs), sum(int(a) for _, a in pairs)

    def committed_groups(self, index: int) -> dict[str, GroupEdit]:
        """The group edits (kept units) of committed block ``index``."""
        return {k: GroupEdit(**{**g, "kept_units": tuple(g["kept_units"])})
                for k, g in self._done[index]["group_edits"].items()}

    def committed(self, store, index: int) -> nn.Module:
        """The pruned block ``index`` as committed (shapes from its kept units, tensors from its shard)."""
        from safetensors.torch import load_file

        prefix = store.adapter.block_prefix(store.model, index)
        state = load_file(str(self.output.path(block_shard(index))))
        return rebuild_block_(store, index, self.committed_groups(index),
                              {k[len(prefix) + 1:]: v for k, v in state.items()})


class RankZeroSink:
    """The sink of a distributed run whose output rank 0 writes (``prunekit.distributed``).

    Rank 0 holds the real sink (``inner``, a :class:`CheckpointSink`); the other ranks hold None.  Guarantees:

    * :attr:`resume_from` and :attr:`extra` are rank 0's values on every rank (broadcast once on construction);
    * :meth:`commit` is each rank's own work (the runner calls it inside ``Context.checked``): rank 0 writes the
      shard and the resume point, the others only put the pruned block into their model;
    * :meth:`committed` and :meth:`save_extra` are collective: rank 0 reads or writes, every rank gets the result
      (or rank 0's exception).

    Use :meth:`open`, which runs the factory of the inner sink on rank 0 and shares its state.
    """

    def __init__(self, ctx, inner: Optional["CheckpointSink"], resume_from: int, extra: dict):
        self.ctx = ctx
        self.inner = inner
        self.resume_from = int(resume_from)
        self.extra = dict(extra)
        self._plan = PruningPlan()

    @classmethod
    def open(cls, ctx, factory) -> "RankZeroSink":
        """``factory()`` (the inner sink) on rank 0; its resume point and saved values on every rank.  An exception
        of the factory is raised on every rank."""
        made = {}

        def make():
            made["sink"] = factory()
            return made["sink"].resume_from, dict(made["sink"].extra)

        resume_from, extra = ctx.from_main(make)
        return cls(ctx, made.get("sink"), resume_from, extra)

    @property
    def plan(self) -> PruningPlan:
        return self.inner.plan if self.inner is not None else self._plan

    @property
    def writer(self):
        return self.inner.writer if self.inner is not None else None

    @property
    def output(self):
        """Rank 0's ``OutputFolder``; None on the other ranks."""
        return self.inner.output if self.inner is not None else None

    def nonzero_parameters(self) -> tuple[int, int]:
        """Rank 0's :meth:`CheckpointSink.nonzero_parameters` (call it on rank 0)."""
        return self.inner.nonzero_parameters()

    def save_extra(self, **values) -> None:
        """Persist run-level values (rank 0 writes; collective)."""
        self.ctx.from_main(lambda: self.inner.save_extra(**values))
        self.extra.update(values)

    def commit(self, store, index: int, block: nn.Module, block_plan: PruningPlan) -> None:
        if self.inner is not None:
            self.inner.commit(store, index, block, block_plan)
        else:
            replace_block_(store.model, store.adapter, index, block)
            self.plan.merge_(block_plan, keep_weights=False)

    def committed(self, store, index: int) -> nn.Module:
        """The committed block ``index`` on every rank: rank 0 reads its shard, the tensors and kept units are
        broadcast, the other ranks rebuild the block from them (collective)."""
        kept: dict = {}

        def read():
            kept["block"] = block = self.inner.committed(store, index)
            return self.inner.committed_groups(index), dict(block.state_dict())

        groups, state = self.ctx.from_main(read)
        if self.inner is not None:
            return self.ctx.checked(lambda: kept["block"])
        return self.ctx.checked(self._rebuild, store, index, groups, state)

    @staticmethod
    def _rebuild(store, index: int, groups: dict, state: dict) -> nn.Module:
        return rebuild_block_(store, index, groups, {k: v.to("cpu") for k, v in state.items()})


def rebuild_block_(store, index: int, groups: dict[str, GroupEdit], state: dict[str, torch.Tensor]) -> nn.Module:
    """Block ``index`` of ``store`` rebuilt as committed -- shapes from its kept units ``groups``, tensors from
    ``state`` (names relative to the block) -- and put in place of the model's block; returns it.

    Fused MoE experts under the generic adapter were pruned one by one: they are unfused while the kept units are
    applied and the pruned block is fused back, as ``state`` holds them (fused, zero-padded)."""
    loaded = store.load(index)
    experts = store.adapter.name == "generic" and bool(groups)
    with experts_unfused(loaded) if experts else contextlib.nullcontext():
        block = pruned_block(store.model, store.adapter, index, PruningPlan(group_edits=groups))
    if experts:
        fuse_experts_(block)
    load_block_state_(block, state)
    replace_block_(store.model, store.adapter, index, block)
    return block


def as_compute(block: nn.Module, device, dtype: torch.dtype) -> nn.Module:
    """A copy of ``block`` on ``device`` in ``dtype`` for propagation (the block itself is untouched)."""
    import copy

    return copy.deepcopy(block).to(device=device, dtype=dtype).eval()


__all__ = ["CheckpointSink", "ModelSink", "PlanSink", "RankZeroSink", "as_compute", "block_shard"]
