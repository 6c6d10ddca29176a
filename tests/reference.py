"""The transformers reference (`CsmForConditionalGeneration`) run step by step, to hold this package's output to."""

import numpy as np
import torch


def reference_embeds(hf_model, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """transformers' own merge: text positions take text embeddings, audio positions the sum of codebook ones."""
    text_row = mask[:, -1]
    embeds = torch.empty(len(tokens), hf_model.config.hidden_size)
    embeds[text_row] = hf_model.embed_text_tokens(tokens[text_row, -1])
    embeds[~text_row] = hf_model.backbone_model.embed_tokens(tokens[~text_row, :-1].unsqueeze(0))[0]
    return embeds.unsqueeze(0)


def reference_greedy(hf_model, embeds: torch.Tensor, frames: int) -> torch.Tensor:
    """Greedy frames with transformers' backbone, heads and depth decoder, recomputed without caches. [T, 32]"""
    out = []
    for _ in range(frames):
        h = hf_model.backbone_model(inputs_embeds=embeds).last_hidden_state[:, -1]
        codes = [hf_model.lm_head(h).argmax(-1)]
        for _ in range(1, 32):
            inputs = torch.stack([torch.zeros_like(codes[0]), *codes], dim=1)  # position 0 holds h
            logits = hf_model.depth_decoder(input_ids=inputs, backbone_last_hidden_state=h).logits[:, -1]
            codes.append(logits.argmax(-1))
        frame = torch.stack(codes, dim=1)  # [1, 32]
        out.append(frame[0])
        embeds = torch.cat([embeds, hf_model.backbone_model.embed_tokens(frame.unsqueeze(1))], dim=1)
    return torch.stack(out)


def reference_speech(generator, hf_model, text: str, speaker: int, frames: int, context=()) -> np.ndarray:
    """The samples of `frames` greedy frames of the reference for `text` after `context` (segments with codes),
    decoded by the Mimi of `generator` (whose prompt rows follow the reference layout)."""
    tokens, mask = generator.prompt_rows(text, speaker, context)
    with torch.inference_mode():
        codes = reference_greedy(hf_model, reference_embeds(hf_model, tokens, mask), frames)
    return generator.codec.decode(codes.T)
