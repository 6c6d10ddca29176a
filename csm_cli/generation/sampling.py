"""Top-k sampling whose random numbers are a function, not a state: the noise a code is drawn with is an integer hash
of (stream seed, frame, codebook, code), computed with tensor operations on the device.

So a stream's codes depend on its seed and on the logits only: not on which streams share its batch, on the batch
size, on the slot it took, on when it joined, or on whether the step is replayed as a CUDA graph (there is no
generator state to register with a graph or to reseed). The distribution is the reference's: a code of the row's
top k is drawn with probability softmax(logits / temperature) over them, as `argmax(probs / Exp(1))` draws it (the
reference's sampler, without a host sync), here in log space: `argmax(logits / temperature - log Exp(1))`.

The hash is T. Mueller's 32-bit integer hash (two rounds of xor-shift and multiply by 0x45d9f3b, then a last
xor-shift), a bijection of 32-bit values, in int64 tensors: a 32-bit value times that 27-bit constant stays below
2^59, so nothing overflows, and each product is taken modulo 2^32. A row's 64-bit seed comes as two 32-bit halves;
the row's key for a frame hashes them with the frame's index; each code's noise hashes that key with the code's
(codebook, code) counter (`code_counters`, made once). The noise of every code of a frame is drawn at once: a few
element-wise operations on [rows, codebooks, vocabulary], rather than a few for each codebook.
"""

from dataclasses import dataclass

import torch

MASK32 = 0xFFFF_FFFF
_MULTIPLIER = 0x45D9F3B  # below 2^27: a 32-bit value times it stays below 2^59
_CODE_BITS = 12  # codes 0..2050 of a codebook; the codebook above them in a code's counter
FEWEST_CANDIDATES = 64  # the rows' top k are taken among this many of each row's best codes at least


def mix32(x: torch.Tensor) -> torch.Tensor:
    """32-bit values [int64] -> their hashes (T. Mueller's), a bijection."""
    x = ((x >> 16) ^ x) * _MULTIPLIER & MASK32
    x = ((x >> 16) ^ x) * _MULTIPLIER & MASK32
    return (x >> 16) ^ x


def code_counters(codebooks: int, vocabulary: int, device: torch.device) -> torch.Tensor:
    """Each code's counter, (codebook, code) as one integer -> [codebooks, vocabulary] int64."""
    codebook = torch.arange(codebooks, device=device).view(-1, 1)
    return (codebook << _CODE_BITS) + torch.arange(vocabulary, device=device)


def seed_halves(seed: int) -> tuple[int, int]:
    """A 64-bit seed as its high and low 32 bits."""
    return seed >> 32, seed & MASK32


def frame_gumbel(seed_high: torch.Tensor, seed_low: torch.Tensor, frame: torch.Tensor,
                 counters: torch.Tensor) -> torch.Tensor:
    """Each row's noise for every code of one frame: -log(E), E ~ Exp(1), a function of (seed, frame, codebook,
    code) -> [B, codebooks, vocabulary] float32. Rows' seed halves and frame indices [B] int64; the codes' counters
    [codebooks, vocabulary] (`code_counters`)."""
    key = mix32(mix32(mix32(seed_low) ^ seed_high) ^ frame)  # [B]
    bits = mix32(key.view(-1, 1, 1) ^ counters)  # [B, codebooks, vocabulary]
    uniform = ((bits >> 8).float() + 0.5) * 2.0**-24  # 24 bits, in (0, 1)
    return -torch.log(-torch.log(uniform))


def candidates(largest_topk: int, vocabulary: int) -> int:
    """How many of each row's best codes one `topk` call takes for a batch whose largest k is `largest_topk`: a power
    of two from `FEWEST_CANDIDATES`, so that a few counts serve every batch (a CUDA graph is captured per count).
    A row's threshold is its own k-th best logit, so its codes do not depend on this count."""
    return min(vocabulary, max(FEWEST_CANDIDATES, 1 << (largest_topk - 1).bit_length()))


@dataclass(frozen=True)
class RowSampling:
    """Each row's sampling settings and counters, as tensors [B] on the model's device."""

    topk: torch.Tensor  # int64
    temperature: torch.Tensor  # float32
    seed_high: torch.Tensor  # int64, 0..2^32-1
    seed_low: torch.Tensor  # int64, 0..2^32-1
    frame: torch.Tensor  # int64: the index of the frame being sampled, in its stream


class FrameSampler:
    """Draws the codes of one frame of every row, codebook by codebook, with each row's settings."""

    def __init__(self, rows: RowSampling, candidates: int, counters: torch.Tensor) -> None:
        self.rows = rows
        self.candidates = candidates
        self.gumbel = frame_gumbel(rows.seed_high, rows.seed_low, rows.frame, counters)

    def __call__(self, codebook: int, logits: torch.Tensor) -> torch.Tensor:
        """One codebook's logits [B, V] -> codes [B, 1]: a row's top k codes at its temperature."""
        values, codes = torch.topk(logits.float(), self.candidates, dim=-1)  # [B, N], best first
        threshold = values.gather(1, self.rows.topk.view(-1, 1) - 1)  # the row's k-th best
        scores = values / self.rows.temperature.view(-1, 1) + self.gumbel[:, codebook].gather(1, codes)
        choice = scores.masked_fill(values < threshold, -torch.inf).argmax(dim=-1, keepdim=True)
        return codes.gather(1, choice)
