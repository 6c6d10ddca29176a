"""Parity with the reference implementation in transformers, on the same tiny random weights (Llama-3 RoPE scaling
set), for a prompt with text and context audio."""

import numpy as np
import pytest
import torch
from reference import reference_embeds, reference_greedy

from csm_cli.generation.engine import CachedRows
from csm_cli.generation.model import prefill_length, reused_rows
from csm_cli.generation.prompt import Segment

CONTEXT_FRAMES = 6


@pytest.fixture(scope="module")
def prompt(generator):
    codes = np.random.default_rng(0).integers(0, 2048, size=(32, CONTEXT_FRAMES))
    context = [Segment(speaker=1, text="How are you today?", codes=codes)]
    return generator.prompt_rows("I am fine, thank you.", 0, context)


@torch.inference_mode()
def test_backbone_logits_match_transformers(generator, hf_model, prompt):
    tokens, mask = prompt
    model = generator.model
    h = model.backbone(model.embed_rows(tokens.unsqueeze(0), mask.unsqueeze(0)), torch.arange(len(tokens)),
                       model.backbone.new_caches(1))
    ours = model.codebook0_head(h)
    theirs = hf_model(inputs_embeds=reference_embeds(hf_model, tokens, mask)).logits
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


@torch.inference_mode()
def test_depth_decoder_logits_match_transformers(generator, hf_model, prompt):
    tokens, mask = prompt
    h = hf_model.backbone_model(inputs_embeds=reference_embeds(hf_model, tokens, mask)).last_hidden_state[:, -1]
    codes = torch.randint(0, 2048, (1, 31), generator=torch.Generator().manual_seed(1))
    inputs = torch.cat([torch.zeros(1, 1, dtype=torch.long), codes], dim=1)
    theirs = hf_model.depth_decoder(input_ids=inputs, backbone_last_hidden_state=h).logits  # [1, 31, V]

    model = generator.model
    embedded = [model.embed_codes(i, codes[:, i : i + 1]) for i in range(31)]
    decoder_inputs = torch.cat([h.unsqueeze(1), *embedded], dim=1)  # [1, 32, D]
    out = model.decoder(model.projection(decoder_inputs), torch.arange(32), model.decoder.new_caches(1))
    ours = torch.stack([out[:, p] @ model.audio_head[p - 1] for p in range(1, 32)], dim=1)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


@torch.inference_mode()
def test_greedy_codes_match_transformers(generator, hf_model, prompt):
    frames = 12
    tokens, mask = prompt
    theirs = reference_greedy(hf_model, reference_embeds(hf_model, tokens, mask), frames)
    codes = np.random.default_rng(0).integers(0, 2048, size=(32, CONTEXT_FRAMES))
    speech = generator.stream(
        "I am fine, thank you.", speaker=0, context=[Segment(1, "How are you today?", codes=codes)],
        topk=1, max_seconds=frames / 12.5,
    )
    list(speech)
    assert speech.codes.shape == (32, frames)
    np.testing.assert_array_equal(speech.codes.T, theirs.numpy())


def test_prompts_are_prefilled_at_powers_of_two_from_64_within_the_window():
    assert [prefill_length(rows, 2048) for rows in (1, 64, 65, 300, 1025, 2047)] == [64, 64, 128, 512, 2048, 2048]
    assert prefill_length(700, 1000) == 1000


@torch.inference_mode()
def test_the_padding_after_a_prompt_changes_nothing_before_it(generator, prompt):
    tokens, mask = prompt
    model = generator.model
    unpadded_caches, padded_caches = model.backbone.new_caches(1), model.backbone.new_caches(1)
    h = model.prefill(tokens, mask, 0, unpadded_caches, padded=False)
    padded = model.prefill(tokens, mask, 0, padded_caches, padded=True)
    assert padded.shape == h.shape
    torch.testing.assert_close(padded, h, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(padded_caches[0].k[:, :, : len(tokens)], unpadded_caches[0].k[:, :, : len(tokens)])


def rows(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.randint(0, 2048, (n, 33), generator=torch.Generator().manual_seed(seed))
    return tokens, torch.ones(n, 33, dtype=torch.bool)


def test_cached_rows_know_the_common_prefix_and_what_a_write_makes_stale():
    cached = CachedRows(16, 33)
    tokens, mask = rows(6, 0)
    cached.wrote(0, tokens, mask)
    assert cached.common_prefix(*rows(3, 1)) == 0
    assert cached.common_prefix(tokens[:4], mask[:4]) == 4
    other_tokens, other_mask = tokens.clone(), mask.clone()
    other_tokens[3, 5] += 1
    assert cached.common_prefix(torch.cat([other_tokens, tokens]), torch.cat([mask, mask])) == 3
    other_mask[2, 0] = False
    assert cached.common_prefix(tokens, other_mask) == 2
    cached.wrote(2, *rows(1, 2))  # a frame written at position 2: rows 3.. are stale
    assert cached.length == 3 and cached.common_prefix(tokens, mask) == 2
    cached.clear()
    assert cached.common_prefix(tokens, mask) == 0


def test_reused_rows_leave_the_last_row_and_room_for_the_padding():
    assert reused_rows(10, 5, 2048, padded=False) == 4
    assert reused_rows(3, 10, 2048, padded=True) == 3
    assert reused_rows(2000, 2040, 2048, padded=False) == 2000
    assert reused_rows(2000, 2040, 2048, padded=True) == 0  # 40 rows padded to 64 would pass the window


@pytest.mark.parametrize("padded", [False, True])
@torch.inference_mode()
def test_a_prefill_after_cached_rows_equals_a_whole_prefill(generator, prompt, padded):
    tokens, mask = prompt
    model = generator.model
    whole_caches, caches = model.backbone.new_caches(1), model.backbone.new_caches(1)
    whole = model.prefill(tokens, mask, 0, whole_caches, padded=padded)
    model.prefill(tokens[:9], mask[:9], 0, caches, padded=padded)
    rest = model.prefill(tokens[9:], mask[9:], 9, caches, padded=padded)
    torch.testing.assert_close(rest, whole, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(caches[-1].k[:, :, : len(tokens)], whole_caches[-1].k[:, :, : len(tokens)],
                               rtol=1e-5, atol=1e-5)
