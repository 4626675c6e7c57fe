"""Block stores: where the runner gets each decoder block's weights from, one block at a time.

* :class:`ModelBlocks` -- a model object in memory.  Blocks whose parameters accelerate offloaded (meta
  tensors with an ``AlignDevicesHook`` weights map, e.g. after ``accelerate.cpu_offload`` or
  ``device_map="auto"`` with CPU/disk offload) are loaded from that map when their turn comes.
* :class:`CheckpointBlocks` -- a safetensors checkpoint folder: the model is a skeleton whose parameters live on the
  meta device; the tensors outside the blocks (embeddings, final norm, head) are read once, block ``i``'s tensors
  are read from the shards when :meth:`load` is called and dropped again by :meth:`release`.  Host memory is
  O(embeddings + one block), whatever the depth.  The checkpoint is checked against its config before any work:
  missing, unexpected or mismatched tensors stop the run with one clear error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import nn

from .adapters import adapter_for


class ModelBlocks:
    """The blocks of ``model`` (mutated only through the sinks); see the module docstring."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.adapter = adapter_for(model)

    def __len__(self) -> int:
        return len(self.adapter.blocks(self.model))

    @property
    def dtype(self) -> torch.dtype:
        for p in self.model.parameters():
            if p.is_floating_point() and p.device.type != "meta":
                return p.dtype
        return torch.float32

    def prepare(self) -> None:
        """Nothing to read for a model in memory (offloaded modules are loaded by their hooks)."""

    def load(self, index: int) -> nn.Module:
        block = self.adapter.blocks(self.model)[index]
        if any(p.device.type == "meta" for p in block.parameters()):
            _onload_offloaded_(block)
        return block

    def release(self, index: int) -> None:
        """Blocks of a model in memory stay where they are."""


def _onload_offloaded_(block: nn.Module) -> None:
    """Replace meta parameters of accelerate-offloaded modules by their weights-map tensors (CPU), and remove the
    offload hooks so the block runs as a plain module."""
    from ..errors import ModelError

    try:
        from accelerate.hooks import remove_hook_from_module
        from accelerate.utils import set_module_tensor_to_device
    except ImportError as exc:  # pragma: no cover - meta weights without accelerate
        raise ModelError("this model has weights on the meta device but accelerate is not installed. Fix: pip "
                         "install accelerate, or load the model with real weights.") from exc
    for module in block.modules():
        hook = getattr(module, "_hf_hook", None)
        weights = getattr(hook, "weights_map", None)
        for name, param in list(module.named_parameters(recurse=False)):
            if param.device.type != "meta":
                continue
            if weights is None or name not in weights:
                raise ModelError(f"parameter {name!r} of {type(module).__name__} is on the meta device and no offload "
                                 f"map holds it. Fix: load the model with its weights (or from its checkpoint folder).")
            set_module_tensor_to_device(module, name, "cpu", value=weights[name])
    remove_hook_from_module(block, recurse=True)


class CheckpointBlocks:
    """A safetensors checkpoint streamed block by block (see the module docstring)."""

    def __init__(self, folder, dtype: Optional[torch.dtype] = None):
        from .checkpoint import CheckpointReader, check_tensors, expected_tensors, open_skeleton
        from .expert_checkpoints import fused_expert_view

        self.folder = Path(folder)
        self.reader = CheckpointReader(self.folder)
        self.model = open_skeleton(self.folder, dtype or self.reader.dtype)
        self.adapter = adapter_for(self.model)
        expected, optional = expected_tensors(self.model)
        self.reader = fused_expert_view(self.reader, expected, self.model)  # per-expert MoE tensors -> fused parameters
        check_tensors(self.reader, expected, optional=optional)
        self._prefixes = [self.adapter.block_prefix(self.model, i) for i in range(len(self))]

    def __len__(self) -> int:
        return len(self.adapter.blocks(self.model))

    @property
    def dtype(self) -> torch.dtype:
        return self.reader.dtype

    @property
    def bytes(self) -> int:
        return self.reader.total_bytes

    def outside_names(self) -> list[str]:
        """Checkpoint tensors that belong to no block (embeddings, final norm, head)."""
        heads = tuple(p + "." for p in self._prefixes)
        return [n for n in self.reader.names if not n.startswith(heads)]

    def prepare(self) -> None:
        """Read the tensors outside the blocks (once)."""
        from .checkpoint import materialize_

        materialize_(self.model, self.reader.load(self.outside_names()))

    def load(self, index: int) -> nn.Module:
        from .checkpoint import materialize_

        materialize_(self.model, self.reader.load_prefix(self._prefixes[index]))
        return self.adapter.blocks(self.model)[index]

    def release(self, index: int) -> None:
        from .checkpoint import release_

        release_(self.adapter.blocks(self.model)[index])


__all__ = ["CheckpointBlocks", "ModelBlocks"]
