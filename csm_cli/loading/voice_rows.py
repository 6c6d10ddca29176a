"""Voice prompts' rows prefilled once: the backbone's keys and values of a prompt's leading voice rows, kept in the
cache (`cache.VOICE_ROWS`) so that a later process reads them back instead of prefilling them (the frame engine's
`VoiceRowsCache`). An entry is named by what its keys and values depend on: the model's files, quantization and
dtype, the code that prefills them (`checkpoint.weights_key_parts`), the device and its threads, and the rows
themselves."""

import hashlib
from pathlib import Path

import torch

from .cache import DAMAGED_TENSORS, VOICE_ROWS, key_of, read_tensors
from .checkpoint import MAKERS, weights_key_parts
from .quantize import Quantization, dequantized_rows
from .repository import ModelRepository

# The code that prefills the rows, beside what makes the weights: the engine's pass of the voice rows (padded on CUDA).
_PREFILL_MAKERS = (*MAKERS, "generation/engine.py", "loading/voice_rows.py")
_NAME = "keys_values"


class CachedVoiceRows:
    """The cached voice rows of one loaded model on one device."""

    def __init__(self, repository: ModelRepository, quantization: Quantization, dtype: torch.dtype,
                 device: torch.device) -> None:
        self._model = weights_key_parts(repository, quantization, dtype, _PREFILL_MAKERS)
        self._device = device

    def entry(self, tokens: torch.Tensor, mask: torch.Tensor) -> Path:
        """Where the keys and values of rows tokens, mask [S, C+1] are kept, for this model and device."""
        rows = hashlib.sha256(tokens.cpu().numpy().tobytes() + mask.cpu().numpy().tobytes()).hexdigest()
        return VOICE_ROWS.path(key_of({"model": self._model, "device": _device_identity(self._device), "rows": rows,
                                       "shape": list(tokens.shape)}))

    def read(self, tokens: torch.Tensor, mask: torch.Tensor, shape: torch.Size,
             dtype: torch.dtype) -> torch.Tensor | None:
        expected = {_NAME: torch.empty(shape, dtype=dtype, device="meta")}
        key = self.entry(tokens, mask).stem
        state = VOICE_ROWS.read(key, lambda path: read_tensors(path, expected), DAMAGED_TENSORS)
        return None if state is None else state[_NAME]

    def write(self, tokens: torch.Tensor, mask: torch.Tensor, keys_values: torch.Tensor) -> None:
        VOICE_ROWS.write(self.entry(tokens, mask).stem, lambda path: torch.save({_NAME: keys_values.cpu()}, path))


def _device_identity(device: torch.device) -> dict[str, object]:
    """What may change a prefill's rounding on a device: on a CPU its instruction set (which also picks the int8
    layers' product, `quantize.dequantized_rows`) and torch's threads; on CUDA the GPU."""
    if device.type == "cuda":
        return {"type": "cuda", "name": torch.cuda.get_device_name(device)}
    return {"type": device.type, "capability": torch.backends.cpu.get_cpu_capability(),
            "dequantized_rows": dequantized_rows(), "threads": torch.get_num_threads()}
