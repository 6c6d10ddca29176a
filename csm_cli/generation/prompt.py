"""Segments of a conversation and the prompt rows they become, exactly in the reference layout.

A row is C+1 wide: C audio columns (one code per codebook) and one text column, with a mask of the same shape.
- text segment: `[speaker]text` tokenized with BOS ... EOS, one row per token, text column only;
- audio segment: one row per Mimi frame with its C codes, then one all-zero end-of-audio row, audio columns only.
"""

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from ..audio import NUM_CODEBOOKS

_ROW_WIDTH = NUM_CODEBOOKS + 1


@dataclass(frozen=True)
class Segment:
    """One turn of a conversation: who spoke, what was said, and its audio.

    `audio` is 24 kHz mono float32 samples; `codes` [C, T] are its Mimi codes. Give either (codes win); context
    built from generated speech carries the generated codes so they are never re-encoded.
    """

    speaker: int
    text: str
    audio: np.ndarray | None = None
    codes: np.ndarray | None = None


class Tokenizer(Protocol):
    """What the generator asks of a tokenizer: one text segment's ids, BOS and EOS included."""

    def encode(self, speaker: int, text: str) -> list[int]: ...


def text_rows(token_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.zeros(len(token_ids), _ROW_WIDTH, dtype=torch.long)
    mask = torch.zeros(len(token_ids), _ROW_WIDTH, dtype=torch.bool)
    tokens[:, -1] = torch.tensor(token_ids)
    mask[:, -1] = True
    return tokens, mask


def audio_rows(codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes [C, T] -> T frame rows and the end-of-audio row."""
    frames = codes.shape[1]
    tokens = torch.zeros(frames + 1, _ROW_WIDTH, dtype=torch.long)
    mask = torch.zeros(frames + 1, _ROW_WIDTH, dtype=torch.bool)
    tokens[:frames, :-1] = codes.T
    mask[:, :-1] = True
    return tokens, mask


def frame_row(codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A generated frame's codes [B, C] as the next input row [B, 1, C+1], fed back without an end row."""
    tokens = torch.nn.functional.pad(codes, (0, 1)).unsqueeze(1)
    mask = torch.ones_like(tokens, dtype=torch.bool)
    mask[..., -1] = False
    return tokens, mask
