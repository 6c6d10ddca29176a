"""The model made to end its speech at a chosen frame, by a condition evaluated on the model's device, so that a
graph captured afterwards replays it as the eager path runs it."""

import pytest
import torch

from csm_cli.model import CSM


def end_speech_at(monkeypatch: pytest.MonkeyPatch, frame: int, device: torch.device) -> torch.Tensor:
    """CSM.sample_frame returns the all-zero end-of-speech frame at its `frame`-th call (counting from 1) after the
    returned counter was zeroed; zero it before each stream."""
    calls = torch.zeros((), dtype=torch.long, device=device)
    real_sample_frame = CSM.sample_frame

    def sample_frame(model: CSM, *args: object) -> torch.Tensor:
        codes = real_sample_frame(model, *args)
        calls.add_(1)
        return codes * (calls != frame)

    monkeypatch.setattr(CSM, "sample_frame", sample_frame)
    return calls
