"""Audio constants of CSM's codec (Mimi), in one place; the derived ones are computed."""

SAMPLE_RATE = 24_000  # Hz, mono
FRAME_RATE = 12.5  # Mimi frames per second
SAMPLES_PER_FRAME = int(SAMPLE_RATE / FRAME_RATE)  # 1920 samples = 80 ms
FRAME_SECONDS = 1 / FRAME_RATE
NUM_CODEBOOKS = 32  # codes per frame
AUDIO_VOCAB_SIZE = 2051  # codes 0..2047 are audio, 2048..2050 are never valid codec input
CODEC_CARDINALITY = 2048


def seconds_to_frames(seconds: float) -> int:
    return int(seconds * FRAME_RATE)
