"""The server's streams: utterances spoken in order over the generator's model thread; closing and cancelling."""

import queue
import threading
import time

import numpy as np
import pytest

from csm_cli.audio import FRAME_SECONDS
from csm_cli.generation.generator import StreamingGenerator
from csm_cli.generation.prompt import Segment
from csm_cli.serve.scheduler import Chunk, Done, Event, Scheduler, ServerBusy

TEXTS = ["Hi there.", "Good morning to everyone here."]
LONG_CONTEXT = [Segment(1, "Hi.", codes=np.random.default_rng(4).integers(0, 2048, (32, 150)))]  # 3 chunks of 64


@pytest.fixture(scope="module")
def two_slots(generator) -> StreamingGenerator:
    two = StreamingGenerator(generator.model, generator.tokenizer, generator.codec, slots=2)
    yield two
    two.close()


class Events:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.done = threading.Semaphore(0)

    def __call__(self, event: Event) -> None:
        self.events.append(event)
        if isinstance(event, Done):
            self.done.release()

    def chunks(self, tag: object) -> int:
        return sum(isinstance(event, Chunk) and event.tag == tag for event in self.events)


def test_a_long_prompt_joining_is_prefilled_while_the_other_stream_gets_its_chunks(two_slots):
    """A stream that joins with a prompt of 3 chunks while another speaks: the speaking stream gets a chunk for each
    step that prefills part of it, before the joining stream's first."""
    scheduler = Scheduler(two_slots, max_streams=2)
    events = Events()
    speaking, joining = scheduler.open(events), scheduler.open(events)

    def emit(event: Event) -> None:
        if isinstance(event, Chunk) and not events.events:
            joining.submit("joining", lambda: iter(two_slots.stream(
                TEXTS[0], context=LONG_CONTEXT, seed=2, max_seconds=2 * FRAME_SECONDS, stop_at_end=False)))
        events(event)

    speaking._emit = emit
    speaking.submit("speaking", lambda: iter(two_slots.stream(
        TEXTS[1], seed=1, max_seconds=10 * FRAME_SECONDS, stop_at_end=False, owner=speaking)))
    for _ in range(2):
        assert events.done.acquire(timeout=120)
    tags = [event.tag for event in events.events if isinstance(event, Chunk)]
    assert tags.index("joining") >= 3, tags  # the first chunk, then one for each step that prefills
    speaking.close()
    joining.close()


def test_a_closed_stream_frees_its_place_at_once_and_stops_its_generation(two_slots):
    scheduler = Scheduler(two_slots, max_streams=2)
    events = Events()
    streams = [scheduler.open(events) for _ in range(2)]
    with pytest.raises(ServerBusy):
        scheduler.open(events)
    first = streams[0]
    first.submit("long", lambda: iter(two_slots.stream(TEXTS[1], seed=1, max_seconds=8.0, stop_at_end=False,
                                                       owner=first)))
    deadline = time.monotonic() + 60
    while not events.chunks("long"):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    first.close()
    again = scheduler.open(events)  # at once: no 429 for a reconnect
    deadline = time.monotonic() + 30
    while two_slots.engine.busy:  # its generation stopped: the engine has nothing left to do
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert events.chunks("long") < 20
    again.close()
    streams[1].close()


def test_cancelling_the_utterance_being_spoken_goes_on_with_the_next(two_slots):
    scheduler = Scheduler(two_slots, max_streams=2)
    events = Events()
    stream = scheduler.open(events)
    for tag, seconds in (("cut", 8.0), ("dropped", 1.0), ("next", 2 * FRAME_SECONDS)):
        stream.submit(tag, lambda seconds=seconds: iter(two_slots.stream(
            TEXTS[0], seed=3, max_seconds=seconds, stop_at_end=False, owner=stream)))
    stream.cancel({"dropped"})
    deadline = time.monotonic() + 60
    while not events.chunks("cut"):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    stream.cancel({"cut"})
    for _ in range(3):
        assert events.done.acquire(timeout=120)
    assert [event.tag for event in events.events if isinstance(event, Done)] == ["dropped", "cut", "next"]
    assert events.chunks("cut") < 20 and events.chunks("dropped") == 0 and events.chunks("next") == 2
    stream.close()


@pytest.mark.parametrize("stop", ["close", "cancel"])
def test_a_speech_started_just_as_its_stream_stops_ends_at_once(two_slots, stop):
    """The stream closed, or its utterance cancelled, as the utterance starts, before its speech is started: the
    speech ends with no frame rather than take a slot of the engine until its first frame."""
    scheduler = Scheduler(two_slots, max_streams=2)
    stream = scheduler.open(Events())
    started: queue.Queue = queue.Queue()

    def start():
        stream.close() if stop == "close" else stream.cancel({"late"})
        speech = two_slots.stream(TEXTS[0], seed=1, max_seconds=8.0, stop_at_end=False, owner=stream)
        started.put(speech)
        return speech

    stream.submit("late", start)
    speech = started.get(timeout=30)
    assert next(speech, None) is None and not two_slots.engine.busy
    stream.close()
