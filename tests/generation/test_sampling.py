"""Counter-based sampling: the noise is a function of (seed, frame, codebook, code), and the codes it draws follow
softmax(top-k / temperature), as the reference's sampler draws them."""

import math

import pytest
import torch

from csm_cli.generation.sampling import (
    MASK32,
    FrameSampler,
    RowSampling,
    candidates,
    code_counters,
    frame_gumbel,
    mix32,
    seed_halves,
)

LOGITS = torch.tensor([2.0, 1.5, 1.0, 0.2, -0.5, -3.0, 0.9, 1.4])  # a fixed small vocabulary


def rows(topk: list[int], temperature: list[float], seeds: list[int], frames: list[int]) -> RowSampling:
    halves = [seed_halves(seed) for seed in seeds]
    return RowSampling(topk=torch.tensor(topk), temperature=torch.tensor(temperature),
                       seed_high=torch.tensor([high for high, _ in halves]),
                       seed_low=torch.tensor([low for _, low in halves]), frame=torch.tensor(frames))


def test_the_hash_is_muellers_without_overflow():
    def mueller(x: int) -> int:  # the reference, in 32-bit unsigned arithmetic (Python's integers, masked)
        x = (((x >> 16) ^ x) * 0x45D9F3B) & MASK32
        x = (((x >> 16) ^ x) * 0x45D9F3B) & MASK32
        return (x >> 16) ^ x

    values = [0, 1, 2, 12345, 2**31 - 1, 2**31, MASK32 - 1, MASK32]
    hashed = mix32(torch.tensor(values))
    assert hashed.tolist() == [mueller(v) for v in values]
    assert len(set(mix32(torch.arange(1 << 16)).tolist())) == 1 << 16  # a bijection: no two values collide


def test_noise_is_a_function_of_seed_frame_codebook_and_code_only():
    counters = code_counters(4, 100, torch.device("cpu"))
    one = frame_gumbel(*(torch.tensor([v]) for v in (*seed_halves(2**64 - 1), 7)), counters)
    batch = frame_gumbel(torch.tensor([0, seed_halves(2**64 - 1)[0], 5]), torch.tensor([3, MASK32, 9]),
                         torch.tensor([7, 7, 1]), counters)
    assert torch.equal(batch[1], one[0])  # whatever the other rows
    assert not torch.equal(batch[0], batch[1]) and not torch.equal(one[0, 0], one[0, 1])
    later = frame_gumbel(*(torch.tensor([v]) for v in (*seed_halves(2**64 - 1), 8)), counters)
    assert not torch.equal(later, one)
    assert torch.isfinite(one).all()


def test_a_rows_codes_do_not_depend_on_its_neighbours_or_the_count_of_candidates():
    logits = torch.randn(3, 2051, generator=torch.Generator().manual_seed(0))
    counters = code_counters(32, 2051, torch.device("cpu"))
    alone = FrameSampler(rows([20], [0.8], [11], [4]), candidates(20, 2051), counters)(5, logits[1:2])
    together = FrameSampler(rows([1, 20, 300], [1.0, 0.8, 0.9], [3, 11, 4], [0, 4, 9]), candidates(300, 2051),
                            counters)(5, logits)
    assert candidates(20, 2051) == 64 and candidates(300, 2051) == 512 and candidates(2051, 2051) == 2051
    assert together[1] == alone[0]
    assert together[0] == logits[0].argmax()  # top 1 is greedy


@pytest.mark.parametrize(("topk", "temperature"), [(8, 1.0), (3, 0.7), (5, 1.6)])
def test_draws_follow_softmax_of_the_top_k_at_the_temperature(topk, temperature):
    """A chi-square test over 12,000 draws of a fixed logit vector, seeds and frames varied: at a significance of
    0.001 for the degrees of freedom; codes outside the top k are never drawn."""
    draws = 12_000
    seeds = torch.arange(draws) * 7919 + 1
    sampler = FrameSampler(RowSampling(topk=torch.full((draws,), topk), temperature=torch.full((draws,), temperature),
                                       seed_high=seeds % 5, seed_low=seeds, frame=seeds % 13),
                           len(LOGITS), code_counters(2, len(LOGITS), torch.device("cpu")))
    codes = sampler(1, LOGITS.expand(draws, -1))[:, 0]
    counts = torch.bincount(codes, minlength=len(LOGITS)).double()
    top = LOGITS.topk(topk).indices
    expected = torch.zeros(len(LOGITS), dtype=torch.float64)
    expected[top] = torch.softmax(LOGITS[top].double() / temperature, dim=0) * draws
    outside = torch.ones(len(LOGITS), dtype=torch.bool)
    outside[top] = False
    assert counts[outside].sum() == 0
    chi_square = float(((counts[top] - expected[top]) ** 2 / expected[top]).sum())
    assert chi_square < chi_square_critical(topk - 1), (chi_square, counts.tolist(), expected.tolist())


def chi_square_critical(dof: int) -> float:
    """The chi-square value a sample passes with probability 0.001 (Wilson-Hilferty's approximation)."""
    z = 3.0902  # the normal's 0.999 quantile
    return dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3
