"""The model thread of `csm serve`: the utterances of its streams generated in one batch."""

import threading

import numpy as np

from csm_cli.audio import FRAME_SECONDS
from csm_cli.generation.prompt import Segment
from csm_cli.serve.scheduler import Chunk, Done, Event, Scheduler

TEXTS = ["Hi there.", "Good morning to everyone here.", "I am fine, thank you."]
LONG_CONTEXT = [Segment(1, "Hi.", codes=np.random.default_rng(4).integers(0, 2048, (32, 150)))]  # 3 chunks of 64


def test_streams_that_arrive_together_all_take_part_in_the_first_step(generator):
    scheduler = Scheduler(generator, max_streams=4)
    frames = scheduler.batch.frames
    sampled = []
    step = frames.step
    frames.step = lambda: (step(), sampled.append(frames.sampled))[0]
    done = threading.Semaphore(0)

    def emit(event: Event) -> None:
        if isinstance(event, Done):
            done.release()

    for tag, text in enumerate(TEXTS):
        scheduler.open(emit).submit(tag, lambda text=text: generator.stream(
            text, seed=1, max_seconds=3 * FRAME_SECONDS, stop_at_end=False, batch=scheduler.batch))
    scheduler.start()
    try:
        for _ in TEXTS:
            assert done.acquire(timeout=120)
    finally:
        scheduler.stop()
    assert sampled[0] == [0, 1, 2]


def test_a_long_prompt_joining_is_prefilled_while_the_other_streams_take_their_chunks(generator):
    """A stream that joins with a prompt of 3 chunks while another speaks: the speaking stream gets a chunk for each
    step that prefills part of it, before the joining stream's first."""
    scheduler = Scheduler(generator, max_streams=2)
    events: list[Event] = []
    done = threading.Semaphore(0)
    def emit(event: Event) -> None:
        if isinstance(event, Chunk) and event.tag == "speaking" and not events:
            joining.submit("joining", lambda: generator.stream(
                TEXTS[0], context=LONG_CONTEXT, seed=2, max_seconds=2 * FRAME_SECONDS, stop_at_end=False,
                batch=scheduler.batch))
        events.append(event)
        if isinstance(event, Done):
            done.release()

    speaking, joining = scheduler.open(emit), scheduler.open(emit)
    speaking.submit("speaking", lambda: generator.stream(
        TEXTS[1], seed=1, max_seconds=10 * FRAME_SECONDS, stop_at_end=False, batch=scheduler.batch))
    scheduler.start()
    try:
        for _ in range(2):
            assert done.acquire(timeout=120)
    finally:
        scheduler.stop()
    tags = [event.tag for event in events if isinstance(event, Chunk)]
    assert tags.index("joining") >= 4, tags  # the first chunk, then one for each of the 3 steps that prefill
    assert all(len(event.samples) for event in events if isinstance(event, Chunk))
