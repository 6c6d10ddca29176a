"""Wyoming, the protocol Home Assistant speaks to speech services (`csm serve --wyoming-port N`): events of JSON and
bytes over TCP, with the `wyoming` package's events, event handler and server.

- Describe -> Info: one TTS program, csm, offering every voice a request may name (OpenAI's names among them, as
  aliases), in English, with supports_synthesize_streaming;
- Synthesize{text, voice} -> AudioStart, an AudioChunk (16-bit 24 kHz mono) as each chunk of frames is decoded,
  AudioStop;
- SynthesizeStart{voice}, SynthesizeChunk{text}..., SynthesizeStop: each sentence spoken as soon as it is complete,
  with the sentences before it as context, in one AudioStart .. AudioStop, then SynthesizeStopped. The Synthesize a
  client sends inside a stream, for servers that do not stream, repeats the text: it is ignored.

A synthesis takes one of the scheduler's --max-streams slots, shared with HTTP, from its first text to its AudioStop.
Events are read while audio is sent, so a Describe is answered at once however busy the model is. What a client
cannot be served (an unknown voice, a full server, text too long) is answered with an Error event, then the
connection is closed, as wyoming-piper does, so that a client waiting for AudioStop does not wait on.
"""

import asyncio
import socket
from dataclasses import dataclass
from functools import cached_property, partial
from importlib.metadata import version
from typing import Any

from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Attribution, Describe, Info, TtsProgram, TtsVoice
from wyoming.server import AsyncEventHandler, AsyncTcpServer, HandlerFactory
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeStopped, SynthesizeVoice

from ..audio import SAMPLE_RATE
from ..generation.conversation import Conversation
from ..generation.generator import Settings
from ..output.pcm import to_pcm16
from ..text.script import SentenceSplitter
from .scheduler import Chunk, Done, Failed, Scheduler, ServerBusy, Stream
from .speech import (
    DEFAULT_VOICE,
    InvalidText,
    SpeakingVoice,
    StreamEvents,
    UnknownVoice,
    Voices,
    checked_text,
)

_WIDTH, _CHANNELS = 2, 1  # 16-bit mono, as the other formats' pcm
_LANGUAGES = ["en"]  # CSM-1B speaks English
_ATTRIBUTION = Attribution(name="Sesame", url="https://huggingface.co/sesame/csm-1b")
_ENDED = object()  # wakes a synthesis's sender once its text is complete


class Refusal(Exception):
    """What a client cannot be served: answered with an Error event, then the connection is closed."""

    def __init__(self, text: str, code: str) -> None:
        super().__init__(text)
        self.text, self.code = text, code


@dataclass(frozen=True)
class WyomingSpeech:
    """What every Wyoming connection speaks with: the model thread, the voices and the server's defaults."""

    scheduler: Scheduler
    voices: Voices
    settings: Settings
    pause_seconds: float
    max_input_chars: int

    @cached_property
    def info(self) -> Info:
        voices = [TtsVoice(name=voice["id"], attribution=_ATTRIBUTION, installed=True, version=None,
                           description=_described(voice), languages=_LANGUAGES) for voice in self.voices.listing()]
        return Info(tts=[TtsProgram(
            name="csm", attribution=_ATTRIBUTION, installed=True, version=version("csm-cli"),
            description="Sesame's CSM-1B, streamed as it is generated", voices=voices,
            supports_synthesize_streaming=True)])

    def connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> "WyomingConnection":
        return WyomingConnection(reader, writer, self)


def _check_text(text: str) -> str:
    try:
        return checked_text(text, "the text")
    except InvalidText as e:
        raise Refusal(str(e), "invalid_text") from None


def _described(voice: dict[str, Any]) -> str:
    """`alloy (conversational_a)`, `speaker 0 (conversational_a)`, `conversational_b`."""
    spoken_with = voice.get("alias_of") or voice.get("voice")
    return f"{voice['name']} ({spoken_with})" if spoken_with else voice["name"]


class WyomingServer(AsyncTcpServer):
    """The wyoming package's TCP server, on a socket bound before the model loaded (a taken port fails at once)."""

    def __init__(self, sock: socket.socket) -> None:
        host, port = sock.getsockname()[:2]
        super().__init__(host, port)
        self.sock = sock

    async def start(self, handler_factory: HandlerFactory) -> None:
        self._server = await asyncio.start_server(partial(self._handler_callback, handler_factory), sock=self.sock)

    async def stop(self) -> None:
        """Stops listening and closes every connection, each stopping its synthesis, once they have."""
        connections = list(self._handlers)
        await super().stop()
        await asyncio.gather(*connections, return_exceptions=True)


class WyomingConnection(AsyncEventHandler):
    """One client's connection: its events handled in order, one synthesis at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, speech: WyomingSpeech) -> None:
        super().__init__(reader, writer)
        self.speech = speech
        self.synthesis: Synthesis | None = None
        self.splitter: SentenceSplitter | None = None  # inside a stream of text

    async def handle_event(self, event: Event) -> bool:
        try:
            await self._handle(event)
        except Refusal as refusal:
            await self.write_event(Error(text=refusal.text, code=refusal.code).event())
            return False
        return True

    async def _handle(self, event: Event) -> None:
        if Describe.is_type(event.type):
            await self.write_event(self.speech.info.event())
        elif Synthesize.is_type(event.type) and self.splitter is None:
            synthesize = Synthesize.from_event(event)
            _check_text(synthesize.text)
            if len(synthesize.text) > self.speech.max_input_chars:
                raise Refusal(f"the text is {len(synthesize.text)} characters, more than this server's limit of "
                              f"{self.speech.max_input_chars} (--max-input-chars): split it, or stream it with "
                              "synthesize-chunk events", "input_too_long")
            synthesis = await self._start(synthesize.voice, streaming=False)
            if synthesize.text.strip():
                synthesis.say(synthesize.text.strip())
            synthesis.end()
        elif SynthesizeStart.is_type(event.type):
            self.synthesis = await self._start(SynthesizeStart.from_event(event).voice, streaming=True)
            self.splitter = SentenceSplitter()
        elif SynthesizeChunk.is_type(event.type) and self.splitter is not None:
            text = _check_text(SynthesizeChunk.from_event(event).text)
            if len(self.splitter.pending) + len(text) > self.speech.max_input_chars:
                raise Refusal(f"the unfinished sentence would pass this server's limit of {self.speech.max_input_chars}"
                              " characters (--max-input-chars): end sentences sooner", "input_too_long")
            self._say(self.splitter.feed(text))
        elif SynthesizeStop.is_type(event.type) and self.splitter is not None:
            self._end_stream()

    def _say(self, sentences: list[str]) -> None:
        assert self.synthesis is not None
        for sentence in sentences:
            self.synthesis.say(sentence)

    def _end_stream(self) -> None:
        assert self.synthesis is not None and self.splitter is not None
        self._say(self.splitter.flush())
        self.splitter = None
        self.synthesis.end()

    async def _start(self, requested: SynthesizeVoice | None, streaming: bool) -> "Synthesis":
        if self.splitter is not None:  # a stream of text not stopped: a new one ends it
            self._end_stream()
        if self.synthesis is not None:  # the one before is answered first
            await asyncio.gather(self.synthesis.sending, return_exceptions=True)
        try:
            voice = self.speech.voices.resolve(requested.name if requested and requested.name else DEFAULT_VOICE)
        except UnknownVoice as e:
            raise Refusal(str(e), "unknown_voice") from None
        events = StreamEvents()
        try:
            stream = self.speech.scheduler.open(events.put)
        except ServerBusy as e:
            raise Refusal(str(e), "server_busy") from None
        self.synthesis = Synthesis(self, stream, events, voice, streaming)
        return self.synthesis

    async def disconnect(self) -> None:
        if self.synthesis is not None:
            self.synthesis.sending.cancel()
            await asyncio.gather(self.synthesis.sending, return_exceptions=True)


class Synthesis:
    """One answer on a stream of the scheduler: AudioStart, an AudioChunk for each chunk of the texts said, in order,
    each with the ones before as context, AudioStop once the text is complete and spoken (then SynthesizeStopped
    after a stream of text). A text that fails is answered with an Error event; the others are spoken."""

    def __init__(self, connection: WyomingConnection, stream: Stream, events: StreamEvents, voice: SpeakingVoice,
                 streaming: bool) -> None:
        speech = connection.speech
        self.connection, self.stream, self.events, self.streaming = connection, stream, events, streaming
        self.speaker = voice.speaker
        self.conversation = Conversation(speech.scheduler.generator, speech.settings, voice.prompts,
                                         pause_seconds=speech.pause_seconds, owner=stream)
        self.said = self.spoken = 0
        self.ended = False
        self.sending = asyncio.create_task(self.send())

    def say(self, text: str) -> None:
        script = self.conversation.script(text, self.speaker)
        self.stream.submit(self.said, lambda: self.conversation.speak(script))
        self.said += 1

    def end(self) -> None:
        self.ended = True
        self.events.put_now(_ENDED)

    async def send(self) -> None:
        write = self.connection.write_event
        samples = 0
        try:
            await write(AudioStart(SAMPLE_RATE, _WIDTH, _CHANNELS, timestamp=0).event())
            while not (self.ended and self.spoken == self.said):
                event = await self.events.get()
                if isinstance(event, Chunk):
                    await write(AudioChunk(SAMPLE_RATE, _WIDTH, _CHANNELS, to_pcm16(event.samples),
                                           timestamp=_milliseconds(samples)).event())
                    samples += len(event.samples)
                elif isinstance(event, Done | Failed):
                    self.spoken += 1
                if isinstance(event, Failed):
                    await write(Error(text=event.message,
                                      code="server_error" if event.internal else "cannot_generate").event())
            await write(AudioStop(timestamp=_milliseconds(samples)).event())
            if self.streaming:
                await write(SynthesizeStopped().event())
        finally:
            self.stream.close()


def _milliseconds(samples: int) -> int:
    return samples * 1000 // SAMPLE_RATE
