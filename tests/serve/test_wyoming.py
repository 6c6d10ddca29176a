"""`csm serve --wyoming-port` through the `wyoming` package's own client (as Home Assistant uses it), against the shared
`agent_server` of conftest.py: utterances of 5 frames, two slots shared with HTTP."""

import asyncio
import time

import httpx
from test_server import AUTH, FRAME_BYTES, MAX_FRAMES, TEXT, Server
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event, async_read_event
from wyoming.info import Describe, Info
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeVoice

from csm_cli.audio import SAMPLE_RATE
from csm_cli.generation.conversation import pause_frames

DEFAULT_PAUSE = 0.2  # seconds, csm serve's --pause


def client(server: Server) -> AsyncTcpClient:
    return AsyncTcpClient(*server.wyoming)


async def answer(connection: AsyncTcpClient, last: str) -> list[tuple[float, Event]]:
    """The events read until one of type `last` (or the connection's end), each with when it came."""
    events = []
    while (event := await asyncio.wait_for(connection.read_event(), timeout=120)) is not None:
        events.append((time.monotonic(), event))
        if event.type == last:
            break
    return events


def audio_of(events: list[tuple[float, Event]]) -> bytes:
    chunks = [AudioChunk.from_event(event) for _, event in events if AudioChunk.is_type(event.type)]
    assert {(chunk.rate, chunk.width, chunk.channels) for chunk in chunks} == {(SAMPLE_RATE, 2, 1)}
    offsets = [chunk.timestamp for chunk in chunks]
    assert offsets == sorted(offsets) and offsets[0] == 0, offsets  # milliseconds into the audio
    return b"".join(chunk.audio for chunk in chunks)


def test_describe_offers_every_voice_of_the_server_and_streaming(agent_server):
    async def describe() -> Info:
        async with client(agent_server) as connection:
            await connection.write_event(Describe().event())
            return Info.from_event(await connection.read_event())

    program = asyncio.run(describe()).tts[0]
    assert (program.name, program.installed, program.supports_synthesize_streaming) == ("csm", True, True)
    listed = httpx.get(f"{agent_server.url}/v1/audio/voices", headers=AUTH).json()["voices"]
    assert [voice.name for voice in program.voices] == [voice["id"] for voice in listed]
    voices = {voice.name: voice for voice in program.voices}
    assert voices["alloy"].languages == ["en"] and voices["alloy"].installed
    assert (voices["narrator"].description, voices["0"].description) == (
        "narrator (conversational_b)", "speaker 0 (conversational_a)")


def test_synthesize_answers_audio_chunks_as_frames_are_decoded(agent_server):
    """Home Assistant's request when no voice is chosen: AudioStart, chunks spread over the generation, AudioStop."""

    async def synthesize() -> list[tuple[float, Event]]:
        async with client(agent_server) as connection:
            await connection.write_event(Synthesize(text=TEXT).event())
            return await answer(connection, "audio-stop")

    events = asyncio.run(synthesize())
    start = AudioStart.from_event(events[0][1])
    assert (start.rate, start.width, start.channels) == (SAMPLE_RATE, 2, 1)
    assert AudioStop.is_type(events[-1][1].type)
    assert len(audio_of(events)) == MAX_FRAMES * FRAME_BYTES
    chunk_times = [when for when, event in events if AudioChunk.is_type(event.type)]
    assert len(chunk_times) >= 3 and chunk_times[-1] - chunk_times[0] > 0.3 * (events[-1][0] - events[0][0]), \
        "the audio came at once, not as it was decoded"


def test_a_stream_speaks_each_sentence_as_it_completes_and_describe_is_answered_meanwhile(agent_server):
    """The first sentence is heard before the text is complete; the full text Home Assistant sends again inside the
    stream is not spoken; while the model speaks, a Describe on another connection is answered within a second
    (Home Assistant's wait)."""

    async def stream() -> tuple[list[tuple[float, Event]], float]:
        async with client(agent_server) as connection:
            await connection.write_event(SynthesizeStart(voice=SynthesizeVoice(name="narrator")).event())
            for piece in ["Hello there, how", " are you today? I am"]:
                await connection.write_event(SynthesizeChunk(text=piece).event())
            events = await answer(connection, "audio-chunk")
            async with client(agent_server) as other:
                asked = time.monotonic()
                await other.write_event(Describe().event())
                assert Info.is_type((await asyncio.wait_for(other.read_event(), timeout=10)).type)
                describe_seconds = time.monotonic() - asked
            for event in [SynthesizeChunk(text=" fine, thank you."), Synthesize(text=TEXT + " I am fine, thank you."),
                          SynthesizeStop()]:
                await connection.write_event(event.event())
            return events + await answer(connection, "synthesize-stopped"), describe_seconds

    events, describe_seconds = asyncio.run(stream())
    assert describe_seconds < 1.0
    kinds = [event.type for _, event in events]
    assert kinds[0] == "audio-start" and kinds[-2:] == ["audio-stop", "synthesize-stopped"]
    assert set(kinds[1:-2]) == {"audio-chunk"}
    two_sentences = 2 * MAX_FRAMES + pause_frames(DEFAULT_PAUSE)
    assert len(audio_of(events)) // FRAME_BYTES == two_sentences, "not the two sentences alone"


def test_wyoming_shares_the_slots_of_http_and_leaving_frees_them(agent_server):
    """Two streams started (each holds a slot until its text ends) fill the server: HTTP answers 429 and Wyoming an
    Error, then closes; clients that leave free their slots."""

    async def fill() -> tuple[Event | None, Event | None, int]:
        async with client(agent_server) as first, client(agent_server) as second:
            for connection in (first, second):
                await connection.write_event(SynthesizeStart().event())
                assert AudioStart.is_type((await connection.read_event()).type)
            assert agent_server.health()["streams"] == 2
            status = httpx.post(f"{agent_server.url}/v1/audio/speech", headers=AUTH, timeout=30,
                                json={"voice": "0", "input": TEXT}).status_code
            async with client(agent_server) as third:
                await third.write_event(Synthesize(text=TEXT).event())
                return await third.read_event(), await third.read_event(), status

    refusal, after, status = asyncio.run(fill())
    assert status == 429
    error = Error.from_event(refusal)
    assert error.code == "server_busy" and "--max-streams" in error.text
    assert after is None, "the connection stayed open after the error"
    agent_server.wait_idle(timeout=30)


def test_requests_that_cannot_be_served_are_an_error_then_the_end(agent_server):
    async def refused(event: Event | bytes) -> tuple[Event | None, Event | None]:
        """`event` sent by the wyoming client, or as raw bytes (what it cannot send: JSON's "\\ud800")."""
        if isinstance(event, Event):
            async with client(agent_server) as connection:
                await connection.write_event(event)
                return await connection.read_event(), await connection.read_event()
        reader, writer = await asyncio.open_connection(*agent_server.wyoming)
        writer.write(event)
        try:
            return await async_read_event(reader), await async_read_event(reader)
        finally:
            writer.close()

    for event, code, words in [
        (Synthesize(text="Hi.", voice=SynthesizeVoice(name="nobody")).event(), "unknown_voice", "alloy, ash"),
        (Synthesize(text="word " * 1000).event(), "input_too_long", "--max-input-chars"),
        (b'{"type": "synthesize", "data": {"text": "Hi \\ud800."}}\n', "invalid_text", "lone surrogate"),
        (Synthesize(text="Hi.", voice=SynthesizeVoice(name="1000000")).event(), "unknown_voice", "0 to 999999"),
    ]:
        error, after = asyncio.run(refused(event))
        assert Error.from_event(error).code == code and words in Error.from_event(error).text
        assert after is None
