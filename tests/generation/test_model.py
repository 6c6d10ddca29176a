"""Parity with the reference implementation in transformers, on the same tiny random weights (Llama-3 RoPE scaling
set), for a prompt with text and context audio."""

import numpy as np
import pytest
import torch
from reference import reference_embeds, reference_greedy

from csm_cli.generation.generator import StreamingGenerator
from csm_cli.generation.model import CachedRows, prefill_length, prefill_lengths, reused_rows
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
    model.reset_caches()
    h = model.backbone(model.embed_rows(tokens.unsqueeze(0), mask.unsqueeze(0)), torch.arange(len(tokens)))
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
    out = model.decoder(model.projection(decoder_inputs), torch.arange(32))
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
    assert prefill_lengths(2048) == [64, 128, 256, 512, 1024, 2048]
    assert prefill_lengths(1000) == [64, 128, 256, 512, 1000]


@torch.inference_mode()
def test_the_padding_after_a_prompt_changes_nothing_before_it(generator, prompt):
    tokens, mask = prompt
    model = generator.model
    model.reset_caches()
    h = model.backbone(model.embed_rows(tokens.unsqueeze(0), mask.unsqueeze(0)), torch.arange(len(tokens)))[:, -1]
    unpadded_cache = model.backbone.layers[0].attn.cache.k[:, :, : len(tokens)].clone()
    model.reset_caches()
    padded = model.prefill(tokens, mask)
    assert padded.shape == h.shape
    torch.testing.assert_close(padded, h, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.backbone.layers[0].attn.cache.k[:, :, : len(tokens)], unpadded_cache)


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
    whole = model.prefill(tokens, mask, padded=padded)
    whole_keys = model.backbone.layers[-1].attn.cache.k[:, :, : len(tokens)].clone()
    model.prefill(tokens[:9], mask[:9], padded=padded)
    assert model.cached_rows.common_prefix(tokens, mask) == 9
    rest = model.prefill(tokens[9:], mask[9:], start=9, padded=padded)
    torch.testing.assert_close(rest, whole, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.backbone.layers[-1].attn.cache.k[:, :, : len(tokens)], whole_keys,
                               rtol=1e-5, atol=1e-5)
    assert model.cached_rows.common_prefix(tokens, mask) == len(tokens)


def test_unpadded_prefill_and_steps_over_the_filled_positions_sample_what_the_graph_shapes_do(generator):
    context = [Segment(1, "How are you today?", codes=np.random.default_rng(2).integers(0, 2048, (32, 70)))]
    codes = []
    for graph_shapes in (True, False):
        eager = StreamingGenerator(generator.model, generator.tokenizer, generator.codec, fast=False)
        eager.graph_shapes, eager.reuse_prefix = graph_shapes, False
        speech = eager.stream("I am fine, thank you.", context=context, topk=1, seed=1, max_seconds=0.64)
        list(speech)
        codes.append(speech.codes)
    np.testing.assert_array_equal(codes[0], codes[1])
