"""Audio out: the ring buffer and the sound card, raw PCM, audio files, the status line."""
