"""Streams stepped in turn, one chunk each, as the server's model thread steps them."""

from collections.abc import Iterator

import numpy as np


def round_robin(streams: dict[str, Iterator[np.ndarray]]) -> dict[str, np.ndarray]:
    """Takes one chunk from each stream in turn until all have ended; returns each stream's audio."""
    chunks: dict[str, list[np.ndarray]] = {name: [] for name in streams}
    streams = dict(streams)
    while streams:
        for name, speech in list(streams.items()):
            chunk = next(speech, None)
            if chunk is None:
                del streams[name]
            else:
                chunks[name].append(chunk)
    return {name: np.concatenate(parts) for name, parts in chunks.items()}
