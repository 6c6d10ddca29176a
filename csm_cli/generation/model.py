"""CSM in plain PyTorch: a Llama backbone that predicts codebook 0 of each frame and a small Llama depth decoder
that predicts codebooks 1..31 from it.

Shapes: B batch, S new positions, P cache positions, L padded prompt rows, D model dim, H heads, K kv heads, E head
dim, C codebooks, V audio vocabulary. The model holds weights and tables only: the KV caches are its caller's (the
frame engine's), passed to each call, and positions are passed explicitly. For CUDA graphs every step runs on fixed
shapes with no host synchronisation: prompts padded to a few lengths, attention over the whole cache. Eagerly on a
CPU a step runs only what it needs: the prompt's own rows, attention over the filled positions.
"""

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .args import CsmArgs, RopeScaling, TransformerArgs


def rope_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None) -> torch.Tensor:
    """Inverse frequencies [E/2], with Llama-3 scaling when the checkpoint asks for it."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    if scaling is None:
        return inv_freq.float()
    old_len = scaling.original_max_position_embeddings
    low_freq_wavelen = old_len / scaling.low_freq_factor
    high_freq_wavelen = old_len / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    smooth = (old_len / wavelen - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor)
    smoothed = (1 - smooth) * inv_freq / scaling.factor + smooth * inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / scaling.factor, smoothed)
    return torch.where(wavelen < high_freq_wavelen, inv_freq, scaled).float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE on x [B, H, S, E] with cos/sin [S, E], computed in float32. `signed_sin` holds -sin in its
    first half, so that rotate_half(x) * sin is x with its halves swapped, times signed_sin."""
    x32 = x.float()
    return (x32 * cos + x32.roll(x.shape[-1] // 2, dims=-1) * signed_sin).type_as(x)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)


def _merge_on_load(module: nn.Module, merged: str, parts: tuple[str, ...]) -> None:
    """Checkpoints hold `parts` (q/k/v, or gate/up) as separate linear weights; `module` multiplies by them in one
    matrix product, `merged`, whose weight they are stacked into when a state dict is loaded."""

    def merge(module: nn.Module, state: dict[str, torch.Tensor], prefix: str, *args: object) -> None:
        names = [f"{prefix}{part}.weight" for part in parts]
        if all(name in state for name in names):
            state[f"{prefix}{merged}.weight"] = torch.cat([state.pop(name) for name in names])

    module.register_load_state_dict_pre_hook(merge)


class KVCache(nn.Module):
    def __init__(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Keys and values [B, K, P, E], used in place (a view of another cache's rows stays one)."""
        super().__init__()
        self.register_buffer("k", k, persistent=False)
        self.register_buffer("v", v, persistent=False)

    @classmethod
    def zeros(cls, batch: int, positions: int, kv_heads: int, head_dim: int, dtype: torch.dtype,
              device: torch.device) -> "KVCache":
        shape = (batch, kv_heads, positions, head_dim)
        return cls(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Writes k, v [B, K, S, E] at positions [S] shared by the rows, or [B, S] of each row's own."""
        if input_pos.ndim == 1:
            self.k.index_copy_(2, input_pos, k)
            self.v.index_copy_(2, input_pos, v)
        else:
            rows = torch.arange(len(input_pos), device=input_pos.device).unsqueeze(1)  # [B, 1]
            self.k[rows, :, input_pos] = k.transpose(1, 2)  # indexed as [B, S, K, E]
            self.v[rows, :, input_pos] = v.transpose(1, 2)
        return self.k, self.v

    def rows(self, start: int, stop: int) -> "KVCache":
        """Rows start..stop-1 of this cache as a cache of their own: a view, written in place."""
        return KVCache(self.k[start:stop], self.v[start:stop])


class Attention(nn.Module):
    def __init__(self, args: TransformerArgs) -> None:
        super().__init__()
        self.args = args
        e = args.head_dim
        self.qkv_proj = nn.Linear(args.dim, (args.num_heads + 2 * args.num_kv_heads) * e, bias=False)
        self.o_proj = nn.Linear(args.num_heads * e, args.dim, bias=False)
        _merge_on_load(self, "qkv_proj", ("q_proj", "k_proj", "v_proj"))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor, mask: torch.Tensor,
                input_pos: torch.Tensor, cache: KVCache) -> torch.Tensor:
        b, s, _ = x.shape
        h, k = self.args.num_heads, self.args.num_kv_heads
        qkv = self.qkv_proj(x).view(b, s, h + 2 * k, self.args.head_dim).transpose(1, 2)  # [B, H+2K, S, E]
        qk = apply_rope(qkv[:, : h + k], cos, signed_sin)  # one rotation for queries and keys
        q, keys, values = qk[:, :h], qk[:, h:], qkv[:, h + k :]
        cached = cache.k.dtype  # float32 under 16-bit weights on the CPU (see `CSM.setup`), else x's
        keys, values = cache.update(input_pos, keys.to(cached), values.to(cached))  # [B, K, P, E]
        attended = mask.shape[-1]  # the first positions of the cache, all of them on the graphed path
        keys, values = keys[:, :, :attended], values[:, :, :attended]
        out = F.scaled_dot_product_attention(q.to(cached), keys, values, attn_mask=mask, enable_gqa=True)  # [B,H,S,E]
        return self.o_proj(out.to(x.dtype).transpose(1, 2).reshape(b, s, -1))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w13 = nn.Linear(dim, 2 * hidden, bias=False)  # gate (w1) and up (w3) in one product
        self.w2 = nn.Linear(hidden, dim, bias=False)  # down
        _merge_on_load(self, "w13", ("w1", "w3"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, args: TransformerArgs) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(args.dim, args.norm_eps)
        self.attn = Attention(args)
        self.mlp_norm = RMSNorm(args.dim, args.norm_eps)
        self.mlp = FeedForward(args.dim, args.intermediate_dim)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor, mask: torch.Tensor,
                input_pos: torch.Tensor, cache: KVCache) -> torch.Tensor:
        h = x + self.attn(self.attn_norm(x), cos, signed_sin, mask, input_pos, cache)
        return h + self.mlp(self.mlp_norm(h))


class Transformer(nn.Module):
    """A Llama decoder without token embeddings or output head: hidden states in, hidden states out."""

    def __init__(self, args: TransformerArgs) -> None:
        super().__init__()
        self.args = args
        self.layers = nn.ModuleList(Block(args) for _ in range(args.num_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)

    def setup(self, positions: int, dtype: torch.dtype, device: torch.device) -> None:
        """Allocate the RoPE tables and causal mask for `positions` positions, once; the caches `new_caches` makes
        hold keys and values in `dtype`, the dtype attention computes in."""
        a = self.args
        self.cache_dtype = dtype
        inv_freq = rope_frequencies(a.head_dim, a.rope_theta, a.rope_scaling)
        angles = torch.outer(torch.arange(positions, dtype=torch.float32), inv_freq)  # [P, E/2]
        self.register_buffer("rope_cos", torch.cat((angles.cos(), angles.cos()), dim=-1).to(device),
                             persistent=False)  # [P, E]
        self.register_buffer("rope_signed_sin", torch.cat((-angles.sin(), angles.sin()), dim=-1).to(device),
                             persistent=False)
        causal = torch.full((positions, positions), -torch.inf, dtype=dtype, device=device).triu(1)  # added to scores
        self.register_buffer("causal_mask", causal, persistent=False)

    def new_caches(self, batch: int) -> list[KVCache]:
        """Zeroed caches, one per layer, for `batch` rows of every position `setup()` made tables for."""
        a, positions = self.args, len(self.causal_mask)
        return [KVCache.zeros(batch, positions, a.num_kv_heads, a.head_dim, self.cache_dtype, self.causal_mask.device)
                for _ in self.layers]

    def forward(self, h: torch.Tensor, input_pos: torch.Tensor, caches: list[KVCache],
                attend: int | None = None) -> torch.Tensor:
        """h [B, S, D] at positions input_pos [S], or [B, S] for rows each at its own positions, with the caches of
        those rows -> [B, S, D], attending to the first `attend` cache positions (all of them when None: the fixed
        shapes of a graph). Positions past a row's last are masked anyway."""
        cos, signed_sin = self.rope_cos[input_pos], self.rope_signed_sin[input_pos]  # [S, E] or [B, S, E]
        mask = self.causal_mask[input_pos, :attend]  # [S, P] or [B, S, P]
        if input_pos.ndim == 2:  # the same for every head
            cos, signed_sin, mask = cos.unsqueeze(1), signed_sin.unsqueeze(1), mask.unsqueeze(1)
        for layer, cache in zip(self.layers, caches, strict=True):
            h = layer(h, cos, signed_sin, mask, input_pos, cache)
        return self.norm(h)


SHORTEST_PREFILL = 64


def prefill_length(rows: int, max_seq_len: int) -> int:
    """The length a prompt of `rows` rows is prefilled at on CUDA: the next power of two from 64, at most the model's
    window, so that the shapes of a prefill stay few."""
    return min(max(SHORTEST_PREFILL, 1 << (rows - 1).bit_length()), max_seq_len)


def reused_rows(cached: int, rows: int, max_seq_len: int, padded: bool) -> int:
    """How many of a prompt's `rows` rows to take from the cache when its first `cached` rows are there: all but the
    last (whose hidden state the prefill returns); none when the padding after the rest would not fit the window."""
    start = min(cached, rows - 1)
    if padded and start + prefill_length(rows - start, max_seq_len) > max_seq_len:
        return 0
    return start


def pad_prompt(tokens: torch.Tensor, mask: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt rows [S, C+1] followed by empty rows (nothing in the mask) -> [1, length, C+1] each."""
    padding = (0, 0, 0, length - len(tokens))
    return F.pad(tokens, padding).unsqueeze(0), F.pad(mask, padding).unsqueeze(0)


class CSM(nn.Module):
    """Built empty (on the meta device, by its callers): every weight comes from a checkpoint or is drawn after.

    The embeddings are given their empty weights: drawing their default init on the meta device would import
    torch._dynamo, seconds of every start."""

    def __init__(self, args: CsmArgs) -> None:
        super().__init__()
        self.args = args
        b, d = args.backbone, args.decoder
        text_rows, audio_rows = args.text_vocab_size, args.audio_vocab_size * args.num_codebooks
        self.text_embeddings = nn.Embedding(text_rows, b.dim, _weight=torch.empty(text_rows, b.dim))
        self.audio_embeddings = nn.Embedding(audio_rows, b.dim, _weight=torch.empty(audio_rows, b.dim))
        self.backbone = Transformer(b)
        self.projection = nn.Linear(b.dim, d.dim, bias=False)
        self.codebook0_head = nn.Linear(b.dim, args.audio_vocab_size, bias=False)
        self.decoder = Transformer(d)
        self.audio_head = nn.Parameter(torch.empty(args.num_codebooks - 1, d.dim, args.audio_vocab_size))

    @property
    def max_seq_len(self) -> int:
        return self.args.backbone.max_seq_len

    def setup(self) -> None:
        """Allocate position tables on the model's device, once per loaded model. The backbone's tables cover one
        position past the window: a scratch position, where the rows of a batch that sample nothing write."""
        dtype, device = self.audio_head.dtype, self.audio_head.device
        if device.type == "cpu" and dtype != torch.float32:
            # a row [1, D] times one codebook's head [D, V] laid out row by row takes a slow path in 16-bit on the
            # CPU (6 ms against 0.25 ms, 31 times a frame): the same head, laid out [V, D] as a Linear's weight is
            self.audio_head.data = self.audio_head.data.transpose(1, 2).contiguous().transpose(1, 2)
        # attention in 16-bit on a CPU without 16-bit arithmetic (AVX2) takes torch's slow path: 1.2 ms against 0.18
        # in float32 for one row over 300 positions, 0.1 against 0.035 in the depth decoder. The keys and values are
        # kept in float32 there (their 16-bit values, exactly), and the queries converted
        attention = torch.float32 if device.type == "cpu" else dtype
        self.backbone.setup(self.max_seq_len + 1, attention, device)
        self.decoder.setup(self.args.num_codebooks, attention, device)
        offsets = torch.arange(self.args.num_codebooks, device=device) * self.args.audio_vocab_size
        self.register_buffer("codebook_offsets", offsets, persistent=False)
        self.register_buffer("backbone_positions", torch.arange(self.max_seq_len, device=device), persistent=False)
        self.register_buffer("decoder_positions", torch.arange(self.args.num_codebooks, device=device),
                             persistent=False)

    @property
    def scratch_position(self) -> int:
        """Where a row that samples nothing writes its keys and values: past the window, read by no other row."""
        return self.max_seq_len

    def embed_rows(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Prompt rows [B, S, C+1] (C audio columns, then the text column) -> masked sum of embeddings [B, S, D]."""
        text = self.text_embeddings(tokens[..., -1:])  # [B, S, 1, D]
        audio = self.audio_embeddings(tokens[..., :-1] + self.codebook_offsets)  # [B, S, C, D]
        embeds = torch.cat((audio, text), dim=-2)
        return (embeds * mask.unsqueeze(-1)).sum(dim=-2)

    def embed_codes(self, codebook: int, codes: torch.Tensor) -> torch.Tensor:
        """Codes [B, 1] of one codebook -> [B, 1, D]."""
        return self.audio_embeddings(codes + codebook * self.args.audio_vocab_size)

    @torch.inference_mode()
    def prefill(self, tokens: torch.Tensor, mask: torch.Tensor, start: int, caches: list[KVCache],
                padded: bool) -> torch.Tensor:
        """Prompt rows [S, C+1] at positions start..start+S-1 into the caches of one row, which hold the rows before
        -> the backbone's hidden state after the last row [1, D]. `padded`: run at `prefill_length` rows."""
        if padded:
            rows, rows_mask = pad_prompt(tokens, mask, prefill_length(len(tokens), self.max_seq_len))
            positions = start + self.backbone_positions[: rows.shape[1]]
            h = self.backbone(self.embed_rows(rows, rows_mask), positions, caches)
            return h[:, len(tokens) - 1]
        positions = self.backbone_positions[start : start + len(tokens)]
        h = self.backbone(self.embed_rows(tokens.unsqueeze(0), mask.unsqueeze(0)), positions, caches,
                          start + len(tokens))
        return h[:, -1]

    def backbone_step(self, tokens: torch.Tensor, mask: torch.Tensor, input_pos: torch.Tensor, caches: list[KVCache],
                      attend: int | None = None) -> torch.Tensor:
        """Generated frames' rows [B, 1, C+1], each at its own position [B, 1] -> the backbone's hidden states [B, D],
        attending to the first `attend` positions (all when None)."""
        return self.backbone(self.embed_rows(tokens, mask), input_pos, caches, attend)[:, -1]

    def decoder_hidden(self, h: torch.Tensor, positions: torch.Tensor, caches: list[KVCache]) -> torch.Tensor:
        """Backbone-space inputs [B, S, D] at decoder positions [S] -> the depth decoder's last hidden state [B, Dd],
        which a codebook's head (`audio_head`) turns into its logits."""
        return self.decoder(self.projection(h), positions, caches)[:, -1]

    def frame_codes(self, last_h: torch.Tensor, decoder_caches: list[KVCache],
                    sample: Callable[[int, torch.Tensor], torch.Tensor],
                    decoder_hidden: Callable[..., torch.Tensor] | None = None) -> torch.Tensor:
        """The backbone's last hidden state [B, D] -> codebook 0 from its head, then codebooks 1..C-1 from the depth
        decoder (on caches of B rows) -> codes [B, C]; `sample(codebook, logits [B, V])` draws each codebook's
        codes [B, 1]; `decoder_hidden`: `self.decoder_hidden` or a compiled form of it. Fixed shapes, no host
        synchronisation: a CUDA graph replays it."""
        decoder_hidden = decoder_hidden or self.decoder_hidden
        code = sample(0, self.codebook0_head(last_h))
        codes = [code]
        h = torch.stack((last_h, self.embed_codes(0, code)[:, 0]), dim=1)  # [B, 2, D]
        positions = self.decoder_positions[:2]
        for codebook in range(1, self.args.num_codebooks):
            code = sample(codebook, decoder_hidden(h, positions, decoder_caches) @ self.audio_head[codebook - 1])
            codes.append(code)
            h = self.embed_codes(codebook, code)
            positions = self.decoder_positions[codebook + 1: codebook + 2]
        return torch.cat(codes, dim=1)
