"""The model made to end its speech at a chosen frame, by a condition evaluated on the model's device, so that a
graph captured afterwards replays it as the eager path runs it."""

import pytest
import torch

from csm_cli.generation.codec import Codec
from csm_cli.generation.model import CSM


def end_speech_at(monkeypatch: pytest.MonkeyPatch, frame: int, device: torch.device) -> torch.Tensor:
    """CSM.frame_codes returns all-zero end-of-speech frames at its `frame`-th call (counting from 1) after the
    returned counter was zeroed; zero it before each stream."""
    calls = torch.zeros((), dtype=torch.long, device=device)
    real_frame_codes = CSM.frame_codes

    def frame_codes(model: CSM, *args: object) -> torch.Tensor:
        codes = real_frame_codes(model, *args)
        calls.add_(1)
        return codes * (calls != frame)

    monkeypatch.setattr(CSM, "frame_codes", frame_codes)
    return calls


def silence_frames(monkeypatch: pytest.MonkeyPatch, codec: Codec, silent: list[int], frames: int) -> torch.Tensor:
    """Mimi's decode made silent at the chosen frames (counting decodes from 1 after the returned counter was zeroed,
    up to `frames`) by a gain looked up on Mimi's device, so that a graph captured afterwards replays it; zero the
    counter before each stream."""
    calls = torch.zeros((), dtype=torch.long, device=codec.device)
    gain = torch.ones(frames + 2, device=codec.device)  # index 0 is never used, the last for every later frame
    gain[silent] = 0
    real_decode = codec.mimi.decode

    def decode(codes: torch.Tensor) -> torch.Tensor:
        calls.add_(1)
        return real_decode(codes) * torch.index_select(gain, 0, calls.clamp(max=frames + 1).view(1))

    monkeypatch.setattr(codec.mimi, "decode", decode)
    return calls


# The model falling silent for good after five frames of speech (frames counted from 1, as decoded).
SILENT_AFTER_FIFTH_FRAME = list(range(6, 40))
