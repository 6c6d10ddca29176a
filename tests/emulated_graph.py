"""A CUDA graph's semantics on the CPU, for testing the fast path's orchestration where no GPU exists.

Capturing runs the step once under a dispatch mode that records every aten op with the very tensors it read and
wrote; replaying runs the recorded ops again on those same tensors, writing fresh results into the recorded outputs.
So, as with a real graph:
- what a replay reads and writes is fixed at capture: a tensor that Python code rebinds after capture (a streaming
  state replaced instead of updated in place, say) is not seen by later replays, and the replay goes stale;
- Python control flow and host values are frozen at capture;
- the capture itself leaves no trace: tensors it wrote are restored afterwards;
- an op that makes the host wait for the device (reading a value, or a shape that depends on values) fails the
  capture, as it would with torch.cuda.graph.
What it cannot show: that each CUDA kernel may be captured at all, and device-to-host copies.
"""

from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

# ops whose result the host must read before going on: on CUDA each one is a device synchronisation
HOST_READS = {"aten::_local_scalar_dense", "aten::is_nonzero", "aten::equal", "aten::nonzero", "aten::masked_select",
              "aten::_unique2", "aten::unique_dim", "aten::unique_consecutive", "aten::item"}
MASK_INDEXING = {"aten::index", "aten::index_put", "aten::index_put_", "aten::_index_put_impl_"}


class HostSyncInCapture(AssertionError):
    pass


def _reads_host(func: torch._ops.OpOverload, args: tuple, kwargs: dict[str, Any]) -> bool:
    name = func._schema.name
    if name == "aten::repeat_interleave" and func._overloadname == "Tensor":
        return kwargs.get("output_size") is None
    if name in MASK_INDEXING:  # a boolean mask as index: the result's shape is its count of True
        return any(index is not None and index.dtype in (torch.bool, torch.uint8) for index in args[1])
    return name in HOST_READS


def _written(func: torch._ops.OpOverload, args: tuple, kwargs: dict[str, Any]) -> list[torch.Tensor]:
    """The tensors an op writes in place (self of a `foo_` op, `out=`)."""
    written = []
    for position, argument in enumerate(func._schema.arguments):
        if argument.alias_info is None or not argument.alias_info.is_write:
            continue
        value = args[position] if position < len(args) and not argument.kwarg_only else kwargs.get(argument.name)
        written.extend(t for t in tree_leaves(value) if isinstance(t, torch.Tensor))
    return written


class _Recorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[torch._ops.OpOverload, tuple, dict[str, Any], Any]] = []
        self.before: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}  # view -> (the view, its value before)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _reads_host(func, args, kwargs):
            raise HostSyncInCapture(f"{func} makes the host read a device value: a CUDA graph cannot capture it")
        for tensor in _written(func, args, kwargs):
            key = (tensor.data_ptr(), tensor.shape, tensor.stride())
            if key not in self.before:
                self.before[key] = (tensor, tensor.clone())
        out = func(*args, **kwargs)
        self.ops.append((func, args, kwargs, out))
        return out


class EmulatedGraph:
    """`step` captured: `replay()` runs what it recorded. Capture and replay run in inference mode, as the fast
    path's do."""

    def __init__(self, step: Callable[[], None]) -> None:
        recorder = _Recorder()
        with torch.inference_mode(), recorder:
            step()
        with torch.inference_mode():
            for tensor, value in reversed(recorder.before.values()):
                tensor.copy_(value)
        self._ops = recorder.ops

    @torch.inference_mode()
    def replay(self) -> None:
        for func, args, kwargs, recorded in self._ops:
            out = func(*args, **kwargs)
            for target, value in zip(tree_leaves(recorded), tree_leaves(out), strict=True):
                if isinstance(target, torch.Tensor) and not _same_storage(target, value):
                    target.copy_(value)


def _same_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
