"""The model's dimensions, as the loaders read them from a checkpoint's config."""

from dataclasses import dataclass

from ..audio import AUDIO_VOCAB_SIZE, FRAME_SECONDS, NUM_CODEBOOKS

WINDOW = 2048  # CSM-1B's positions: context, text and generated frames together
MAX_SECONDS = WINDOW * FRAME_SECONDS  # the window, as seconds of frames


@dataclass(frozen=True)
class RopeScaling:
    """Llama-3 frequency scaling of RoPE."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int


@dataclass(frozen=True)
class TransformerArgs:
    num_layers: int
    dim: int
    num_heads: int
    num_kv_heads: int
    intermediate_dim: int
    max_seq_len: int
    norm_eps: float = 1e-5
    rope_theta: float = 500_000.0
    rope_scaling: RopeScaling | None = None

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads


@dataclass(frozen=True)
class CsmArgs:
    backbone: TransformerArgs
    decoder: TransformerArgs
    text_vocab_size: int
    audio_vocab_size: int = AUDIO_VOCAB_SIZE
    num_codebooks: int = NUM_CODEBOOKS
