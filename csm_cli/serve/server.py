"""`csm serve`: the speech server voice agents call, with FastAPI on uvicorn.

- POST /v1/audio/speech: OpenAI's speech endpoint; the body streams as frames are decoded (or as server-sent events);
- WS /v1/audio/speech/stream: text arriving in pieces, spoken sentence by sentence as each is complete;
- GET /v1/models, /v1/audio/voices, /health;
- with --wyoming-port, Home Assistant's Wyoming on its own TCP port (wyoming.py), on the same scheduler.

The model is loaded once and stepped by the model thread; each request or WebSocket connection is one stream
there. Requests carry their own context, so replicas behind a load balancer serve more users, unless they name a
conversation, which this server keeps (a bounded number of them) so that the next request continues it. Errors have
OpenAI's shape, {"error": {"message", "type", "param", "code"}}.
"""

import asyncio
import base64
import ipaddress
import json
import logging
import secrets
import signal
import socket
import sys
import threading
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect, status
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, StrictInt, StrictStr, StringConstraints, ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, HTTPConnection

from ..audio import SAMPLE_RATE, SAMPLES_PER_FRAME
from ..errors import CsmError
from ..generation.conversation import Conversation, SpokenLine, Utterance
from ..generation.generator import Settings, StreamingGenerator
from ..generation.prompt import Segment
from ..loading.voice import Voice
from ..output.pcm import to_pcm16
from ..text.script import SentenceSplitter
from .encoders import ENCODERS
from .scheduler import Chunk, Done, Event, Failed, Scheduler, ServerBusy, Stream
from .speech import (
    DEFAULT_VOICE,
    InvalidText,
    SpeakingVoice,
    StreamEvents,
    UnknownVoice,
    Voices,
    checked_seed,
    checked_text,
)
from .wyoming import WyomingServer, WyomingSpeech

MODEL_ID = "csm-1b"
MAX_CONVERSATION_ID = 128
SHUTDOWN_S = 1.0  # longest a shutdown waits for the streams it ends before uvicorn closes the connections
log = logging.getLogger("uvicorn.error")


@dataclass(frozen=True)
class ServeOptions:
    settings: Settings  # the defaults of every request
    pause_seconds: float = 0.2
    max_streams: int = 4
    max_input_chars: int = 4096
    max_conversations: int = 100
    api_key: str | None = None
    voice_aliases: dict[str, str] = field(default_factory=dict)  # --voice-alias: NAME -> VOICE


class ApiError(Exception):
    """An error answered with an OpenAI-style body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return ErrorResponse(self.body(), status_code=self.status)


class ErrorResponse(JSONResponse):
    """JSON in ASCII: a message that quotes what the client sent (a lone surrogate included) always encodes."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content).encode()


class SpeechRequest(BaseModel):
    """OpenAI's speech request; `seed` (reproducible speech) and `conversation` (the id of a conversation to
    continue) are this server's own."""

    model_config = ConfigDict(extra="ignore")

    model: str = MODEL_ID
    input: str
    voice: StrictStr | StrictInt
    response_format: str = "mp3"  # OpenAI's default
    speed: float = 1.0
    stream_format: Literal["audio", "sse"] = "audio"
    seed: StrictInt | None = None
    conversation: Annotated[str, StringConstraints(min_length=1, max_length=MAX_CONVERSATION_ID)] | None = None


@dataclass(frozen=True)
class ShuttingDown:
    """The server shuts down: the response or connection ends now, cleanly."""


def shutting_down() -> ApiError:
    return ApiError(503, "the server is shutting down: send the request again (to another replica, or once it is "
                         "back)", code="server_shutting_down", kind="server_error")


class Listeners:
    """The requests and WebSocket connections being answered, so that a shutdown ends each of them cleanly (a
    streamed body terminated, a WebSocket closed with 1001) before uvicorn closes the connections. Event loop only."""

    def __init__(self) -> None:
        self._open: set[StreamEvents] = set()
        self._none_open = asyncio.Event()
        self.closing = False

    def add(self, events: StreamEvents) -> None:
        if self.closing:
            raise shutting_down()
        self._open.add(events)
        self._none_open.clear()

    def remove(self, events: StreamEvents) -> None:
        self._open.discard(events)
        if not self._open:
            self._none_open.set()

    async def end_all(self, timeout: float) -> None:
        """Each response and connection gets ShuttingDown; returns once all have ended, or after `timeout`."""
        self.closing = True
        if not self._open:
            return
        for events in self._open:
            events.put_now(ShuttingDown())
        with suppress(TimeoutError):
            await asyncio.wait_for(self._none_open.wait(), timeout)


def authorized(connection: HTTPConnection, api_key: str | None) -> bool:
    if api_key is None:
        return True
    scheme, _, token = connection.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and secrets.compare_digest(token.strip().encode(), api_key.encode())


def create_app(generator: StreamingGenerator, voices: dict[str, Voice], options: ServeOptions,
               wyoming: socket.socket | None = None) -> FastAPI:
    """The HTTP and WebSocket app of a generator with a slot per stream (`options.max_streams`) and the model's
    `voices`; with `wyoming`, a listening socket, it also serves Wyoming there while it runs."""
    scheduler = Scheduler(generator, options.max_streams)
    offered = Voices(voices, generator.codec, options.voice_aliases)
    wyoming_server = None if wyoming is None else WyomingServer(wyoming)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if wyoming_server is not None:
            await wyoming_server.start(WyomingSpeech(scheduler, offered, options.settings, options.pause_seconds,
                                                     options.max_input_chars).connection)
        yield
        if wyoming_server is not None:
            await wyoming_server.stop()
        scheduler.stop()

    app = FastAPI(title="csm", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    conversations = Conversations(options.max_conversations)
    listeners = app.state.listeners = Listeners()

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return error.response()

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        return ApiError(error.status_code, str(error.detail), code="not_found" if error.status_code == 404 else None
                        ).response()

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception) -> JSONResponse:
        return ApiError(500, f"internal error ({type(error).__name__}); the server goes on", kind="server_error"
                        ).response()

    @app.middleware("http")
    async def require_key(request: Request, call_next: Callable) -> Any:
        if request.url.path != "/health" and not authorized(request, options.api_key):
            return unauthorized().response()
        return await call_next(request)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "streams": scheduler.open_streams, "max_streams": options.max_streams,
                "conversations": len(conversations), "max_conversations": options.max_conversations}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": MODEL_ID, "object": "model", "owned_by": "sesame"}]}

    @app.get("/v1/audio/voices")
    async def voice_list() -> dict[str, Any]:
        return {"voices": offered.listing()}

    @app.post("/v1/audio/speech")
    async def speech(request: Request) -> Response:
        try:
            raw = await request.body()
        except ClientDisconnect:
            log.info("%s left before sending its whole request", client_of(request))
            return Response(status_code=400)  # nobody reads it
        body = parse_body(raw)
        voice = resolve_voice(offered, body.voice)
        text = checked_input(body.input, options.max_input_chars)
        if body.response_format not in ENCODERS:
            raise ApiError(400, f"response_format {body.response_format!r} is not supported: choose one of "
                                f"{', '.join(ENCODERS)}", param="response_format", code="unsupported_format")
        if body.speed != 1.0:
            raise ApiError(400, f"speed {body.speed:g} is not supported: CSM speaks at its own pace; send 1.0 or "
                                "omit speed", param="speed", code="unsupported_speed")
        settings = request_settings(options.settings, api_seed(body.seed))
        history = None if body.conversation is None else conversations.take(body.conversation, voice.name)
        events = StreamEvents()
        stream: Stream | None = None

        def finish() -> None:
            if stream is not None:
                stream.close()
            if body.conversation is not None:
                conversations.give_back(body.conversation)
            listeners.remove(events)

        try:
            listeners.add(events)
            stream = open_stream(scheduler, events)
            conversation = Conversation(generator, settings, voice.prompts, pause_seconds=options.pause_seconds,
                                        history=history, owner=stream)
            script = conversation.script(text, voice.speaker)
            stream.submit(0, lambda: conversation.speak(script))
            first = await first_event(request, events)
        except BaseException:
            finish()
            raise
        if first is None:  # the client left before its first audio: its slot is free at once
            finish()
            log.info("%s left before its first audio", client_of(request))
            return Response(status_code=499)  # nobody reads it
        if isinstance(first, Failed | ShuttingDown):
            finish()
            raise failure_error(first) if isinstance(first, Failed) else shutting_down()
        encoder = ENCODERS[body.response_format]()
        request_id = {"x-request-id": f"req_{secrets.token_hex(16)}"}  # as OpenAI's: clients log it with the request
        if body.stream_format == "sse":
            tokens = len(generator.tokenizer.encode(voice.speaker, text))
            return StreamResponse(finish, sse_body(events, first, encoder, tokens), media_type="text/event-stream",
                                  headers={"Cache-Control": "no-cache", **request_id})
        return StreamResponse(finish, audio_body(events, first, encoder), media_type=encoder.media_type,
                              headers=request_id)

    @app.websocket("/v1/audio/speech/stream")
    async def speech_stream(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            if not authorized(websocket, options.api_key):
                raise ClosingError(unauthorized(), status.WS_1008_POLICY_VIOLATION)
            voice = resolve_voice(offered, websocket.query_params.get("voice", DEFAULT_VOICE))
            settings = request_settings(options.settings, api_seed(websocket.query_params.get("seed")))
            events = StreamEvents()
            try:
                listeners.add(events)
            except ApiError as e:
                raise ClosingError(e, status.WS_1001_GOING_AWAY) from None
            try:
                stream = open_stream(scheduler, events)
            except ApiError as e:
                listeners.remove(events)
                raise ClosingError(e, status.WS_1013_TRY_AGAIN_LATER) from None
        except (ApiError, ClosingError) as e:
            closing = e if isinstance(e, ClosingError) else ClosingError(e, status.WS_1008_POLICY_VIOLATION)
            with suppress(WebSocketDisconnect, RuntimeError):  # the client may have left already
                await websocket.send_json(closing.error.body() | {"type": "error"})
                await websocket.close(closing.code)
            return
        conversation = Conversation(generator, settings, voice.prompts, pause_seconds=options.pause_seconds,
                                    owner=stream)
        session = SpeechSession(websocket, stream, events, conversation, voice.speaker, options.max_input_chars)
        try:
            await session.run()
        finally:
            stream.close()
            listeners.remove(events)

    return app


class ClosingError(Exception):
    """An error after which a WebSocket is closed with `code`."""

    def __init__(self, error: ApiError, code: int) -> None:
        super().__init__(error.message)
        self.error, self.code = error, code


def resolve_voice(voices: Voices, voice: str | int) -> SpeakingVoice:
    try:
        return voices.resolve(voice)
    except UnknownVoice as e:
        raise ApiError(400, str(e), param="voice", code="unknown_voice") from None


def api_seed(seed: int | str | None) -> int | None:
    """A request's `seed` (a JSON number, or the WebSocket's `?seed=N`), as `csm say --seed` takes it, or a 400."""
    try:
        return checked_seed(seed)
    except CsmError as e:
        raise ApiError(400, str(e), param="seed", code="invalid_request") from None


def api_text(text: str, param: str) -> str:
    try:
        return checked_text(text, param)
    except InvalidText as e:
        raise ApiError(400, str(e), param=param, code="invalid_text") from None


def parse_json(raw: bytes | str) -> Any:
    """JSON, or a 400 for anything that is not (too deeply nested included)."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise ApiError(400, "the JSON is nested too deeply", code="invalid_json") from None
    except ValueError as e:
        raise ApiError(400, f"the JSON is not valid ({e})", code="invalid_json") from None


MAX_CONTEXT_ID = 128
MAX_CONTEXTS = 32  # a WebSocket connection's contexts with text still to speak


@dataclass(eq=False)
class Context:
    """One context of a WebSocket connection (an agent's turn, say): its text's sentences, numbered from 0, spoken in
    order, and the offset of its next audio (its audio's samples sent so far). Event loop only, but `cancelled`."""

    id: str | None  # None: the context of messages that name none
    splitter: SentenceSplitter = field(default_factory=SentenceSplitter)
    sentences: int = 0  # queued so far
    unfinished: deque["Sentence"] = field(default_factory=deque)  # queued, not yet answered done (or failed)
    flushes: deque[int] = field(default_factory=deque)  # for each flush not yet answered: the sentences before it
    sent: int = 0
    cancelled: bool = False  # none of its audio is sent any more

    @property
    def idle(self) -> bool:
        return not (self.splitter.pending or self.unfinished or self.flushes)


@dataclass(eq=False)
class Sentence:
    """A sentence of a context, and the tag of its utterance on the connection's stream. `start` and `lines` are
    written on the stream's thread; the rest on the event loop."""

    context: Context
    index: int
    start: int = 0  # where its audio starts in the conversation's (`Conversation.samples`)
    lines: list[SpokenLine] | None = None  # the utterances it was spoken in, once it has ended
    offset: int | None = None  # where its audio starts in its context's, once some is sent
    sent: int = 0  # samples of its audio sent


@dataclass(frozen=True)
class Flushed:
    """The client flushed `context` after its sentence `sentences - 1`: 'done' follows once those are answered."""

    context: Context
    sentences: int


class SpeechSession:
    """One WebSocket conversation: text deltas in, each sentence spoken as soon as it is complete, with the
    sentences before it as context; audio frames out, tagged with their context, sentence and offset. Every message
    sent goes through one queue, so the socket has one writer.

    Contexts: each has its own text and sentences; the sentences of every context are spoken one at a time, in the
    order they are complete, in one conversation (the voice prompts, then what was heard before, whatever its
    context), so the voice stays the same from one turn to the next. A context's first sentence starts at once, with
    no pause before it. A cancel drops the context's text (the unfinished sentence, the sentences queued), stops the
    sentence being spoken before its next frame, and from then on none of the context's audio is sent, not even what
    is queued for sending: the acknowledgement is the end of it. The conversation then forgets what of it was not
    sent (`Conversation.keep_heard`) before the next sentence is spoken, so that it follows what the listener heard."""

    def __init__(self, websocket: WebSocket, stream: Stream, events: StreamEvents, conversation: Conversation,
                 speaker: int, max_chars: int) -> None:
        self.websocket, self.stream, self.events = websocket, stream, events
        self.conversation, self.speaker, self.max_chars = conversation, speaker, max_chars
        self.contexts: OrderedDict[str | None, Context] = OrderedDict()  # least recently named first
        # Between the event loop and the stream's thread: `Context.cancelled`, `Sentence.lines` and `unheard`, the
        # sentences of cancelled contexts that were spoken but maybe not all sent, which the history forgets before
        # the next sentence is spoken.
        self.cutting = threading.Lock()
        self.unheard: list[Sentence] = []

    async def run(self) -> None:
        receiving = asyncio.create_task(self.receive())
        sending = asyncio.create_task(self.send())
        try:
            await asyncio.wait([receiving, sending], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (receiving, sending):
                task.cancel()
            await asyncio.gather(receiving, sending, return_exceptions=True)

    async def receive(self) -> None:
        with suppress(WebSocketDisconnect):
            while True:
                message = await self.websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                try:
                    self.handle(message.get("text"))
                except ApiError as e:
                    self.events.put_now(e.body() | {"type": "error"})

    def handle(self, text: str | None) -> None:
        if text is None:
            raise ApiError(400, "send JSON text messages, not binary ones", code="invalid_message")
        message = parse_json(text)
        kind = message.get("type") if isinstance(message, dict) else None
        if kind not in ("text", "flush", "cancel"):
            raise ApiError(400, 'messages are {"type": "text", "text": "..."}, {"type": "flush"} and '
                                '{"type": "cancel"}, each with an optional "context": "ID"', param="type",
                           code="invalid_message")
        context_id = checked_context(message.get("context"))
        if kind == "cancel":
            self.cancel(context_id)
        elif kind == "flush":
            context = self.context(context_id)
            self.speak(context, context.splitter.flush())
            self.events.put_now(Flushed(context, context.sentences))
        else:
            delta = message.get("text")
            if not isinstance(delta, str):
                raise ApiError(400, 'a text message is {"type": "text", "text": "..."}: text must be a string',
                               param="text", code="invalid_message")
            api_text(delta, "text")
            context = self.context(context_id)
            if len(context.splitter.pending) + len(delta) > self.max_chars:
                raise ApiError(400, f"the unfinished sentence would pass this server's limit of {self.max_chars} "
                                    "characters (--max-input-chars): end sentences sooner or flush",
                               param="text", code="input_too_long")
            self.speak(context, context.splitter.feed(delta))

    def context(self, context_id: str | None) -> Context:
        """The context named, started when new; when the connection holds MAX_CONTEXTS, the least recently named
        one that has nothing left to speak is forgotten for it (named again, it starts anew)."""
        context = self.contexts.get(context_id)
        if context is None:
            if len(self.contexts) >= MAX_CONTEXTS:
                idle = next((known for known in self.contexts.values() if known.idle), None)
                if idle is None:
                    raise ApiError(400, f"this connection has text to speak in {MAX_CONTEXTS} contexts already: "
                                        "flush or cancel one before starting another", param="context",
                                   code="too_many_contexts")
                del self.contexts[idle.id]
            context = self.contexts[context_id] = Context(context_id)
        self.contexts.move_to_end(context_id)
        return context

    def speak(self, context: Context, sentences: list[str]) -> None:
        for text in sentences:
            sentence = Sentence(context, context.sentences)
            context.sentences += 1
            context.unfinished.append(sentence)
            self.events.put_now({"type": "sentence", "context": context.id, "sentence": sentence.index, "text": text})
            script = self.conversation.script(text, self.speaker)
            self.stream.submit(sentence, lambda sentence=sentence, script=script: self.spoken(sentence, script))

    def cancel(self, context_id: str | None) -> None:
        context = self.contexts.pop(context_id, None)
        if context is not None:
            with self.cutting:
                context.cancelled = True
                self.unheard += [sentence for sentence in context.unfinished if sentence.lines is not None]
            self.stream.cancel(set(context.unfinished))
        self.events.put_now({"type": "cancelled", "context": context_id})

    def spoken(self, sentence: Sentence, script: list[Utterance]) -> Iterator[np.ndarray]:
        """On the stream's thread, as it starts `sentence`: the history forgets what the listener did not hear of
        the contexts cancelled since the sentence before, then the sentence's chunks."""
        with self.cutting:
            unheard, self.unheard = self.unheard, []
        for cut in unheard:
            assert cut.lines is not None
            self.conversation.keep_heard(cut.lines, cut.start + cut.sent)
        return self.chunks(sentence, script)

    def chunks(self, sentence: Sentence, script: list[Utterance]) -> Iterator[np.ndarray]:
        conversation = self.conversation
        sentence.start, first = conversation.samples, len(conversation.lines)
        try:
            yield from conversation.speak(script, pause_first=sentence.index > 0)
        finally:
            with self.cutting:
                sentence.lines = conversation.lines[first:]
                cut = sentence.context.cancelled
            if cut:  # its audio sent so far is all there is of it
                conversation.keep_heard(sentence.lines, sentence.start + sentence.sent)

    async def send(self) -> None:
        while True:
            event = await self.events.get()
            if isinstance(event, Chunk | Done | Failed):
                sentence: Sentence = event.tag
                context = sentence.context
                if context.cancelled:
                    continue
                if isinstance(event, Chunk):
                    await self.send_audio(sentence, event.samples)
                    continue
                assert context.unfinished[0] is sentence, "a context's sentences are answered in order"
                context.unfinished.popleft()
                about = {"context": context.id, "sentence": sentence.index}
                await self.websocket.send_json({"type": "sentence.done", **about, **self.timestamps(sentence)}
                                               if isinstance(event, Done)
                                               else {"type": "error", **about, **failure_error(event).body()})
                await self.answer_flushes(context)
            elif isinstance(event, Flushed):
                if not event.context.cancelled:
                    event.context.flushes.append(event.sentences)
                    await self.answer_flushes(event.context)
            elif isinstance(event, ShuttingDown):
                await self.websocket.close(status.WS_1001_GOING_AWAY, "the server is shutting down")
                return
            else:
                await self.websocket.send_json(event)

    async def send_audio(self, sentence: Sentence, samples: np.ndarray) -> None:
        context = sentence.context
        if sentence.offset is None:
            sentence.offset = context.sent
        offset = context.sent
        context.sent += len(samples)  # counted as it is handed to the socket: a cancel that comes next cuts after it
        sentence.sent += len(samples)
        await self.websocket.send_json({"type": "audio", "context": context.id, "sentence": sentence.index,
                                        "offset": offset, "audio": base64.b64encode(to_pcm16(samples)).decode()})

    @staticmethod
    def timestamps(sentence: Sentence) -> dict[str, float]:
        """Where the sentence's speech lies in its context's audio, in seconds: from its first frame (past the pause
        leading it) to the end of its audio."""
        if sentence.offset is None:  # no audio
            return {"start": sentence.context.sent / SAMPLE_RATE, "duration": 0.0}
        assert sentence.lines is not None
        spoken = next((line for line in sentence.lines if line.first_chunk is not None), None)
        pause = 0 if spoken is None else spoken.start_sample - sentence.start
        return {"start": (sentence.offset + pause) / SAMPLE_RATE, "duration": (sentence.sent - pause) / SAMPLE_RATE}

    async def answer_flushes(self, context: Context) -> None:
        answered = context.sentences - len(context.unfinished)
        while context.flushes and context.flushes[0] <= answered:
            context.flushes.popleft()
            await self.websocket.send_json({"type": "done", "context": context.id})


def checked_context(context: Any) -> str | None:
    """A message's `context`: an id of 1 to MAX_CONTEXT_ID characters, or None (absent or null) for the context of
    messages that name none."""
    if context is None:
        return None
    if not isinstance(context, str) or not 1 <= len(context) <= MAX_CONTEXT_ID:
        raise ApiError(400, f"context must be a string of 1 to {MAX_CONTEXT_ID} characters, got {context!r:.60}",
                       param="context", code="invalid_context")
    return api_text(context, "context")


@dataclass
class KeptConversation:
    voice: str  # as the request that started it named it
    history: deque[Segment] = field(default_factory=deque)
    speaking: bool = False  # a request is continuing it now


class Conversations:
    """The conversations requests name, kept so that the next request continues one: what was said, as codes, as
    much of it as the model's window holds (`Conversation.context_for` drops the oldest). At most `limit` are kept;
    starting one more forgets the least recently used one that no request is speaking (a request naming it later
    starts it anew), or is answered 429 when every one is being spoken. Event loop only."""

    def __init__(self, limit: int) -> None:
        assert limit >= 1, limit
        self.limit = limit
        self._kept: OrderedDict[str, KeptConversation] = OrderedDict()

    def __len__(self) -> int:
        return len(self._kept)

    def take(self, name: str, voice: str) -> deque[Segment]:
        """The history of conversation `name`, new or continued, for one request to speak; `give_back` after it."""
        kept = self._kept.get(name)
        if kept is None:
            if len(self._kept) >= self.limit:
                self._forget_one()
            kept = self._kept[name] = KeptConversation(voice)
        elif kept.speaking:
            raise ApiError(409, f"conversation {name!r} is being spoken by another request: send the next request "
                                "once that one has ended", param="conversation", code="conversation_busy")
        elif kept.voice != voice:
            raise ApiError(400, f"conversation {name!r} speaks with voice {kept.voice!r}, not {voice!r}: keep its "
                                "voice, or start another conversation", param="voice", code="conversation_voice")
        kept.speaking = True
        self._kept.move_to_end(name)
        return kept.history

    def give_back(self, name: str) -> None:
        self._kept[name].speaking = False
        self._kept.move_to_end(name)

    def _forget_one(self) -> None:
        idle = next((name for name, kept in self._kept.items() if not kept.speaking), None)
        if idle is None:
            raise ApiError(429, f"all {self.limit} conversations this server keeps (--max-conversations) are being "
                                "spoken: try again shortly", param="conversation", code="too_many_conversations",
                           kind="rate_limit_error")
        del self._kept[idle]


def parse_body(raw: bytes) -> SpeechRequest:
    """The request's JSON, whatever its Content-Type says (curl -d sends a form's)."""
    try:
        return SpeechRequest.model_validate(parse_json(raw))
    except ValidationError as e:
        raise request_error(e.errors()) from None


def checked_input(text: str, limit: int) -> str:
    api_text(text, "input")
    if len(text) > limit:
        raise ApiError(400, f"input is {len(text)} characters, more than this server's limit of {limit} "
                            "(--max-input-chars): split it into several requests", param="input",
                       code="input_too_long")
    if not text.strip():
        raise ApiError(400, "input is empty: give something to say", param="input", code="empty_input")
    return text.strip()


def request_settings(defaults: Settings, seed: int | None) -> Settings:
    if seed is None:
        return defaults
    return Settings(defaults.temperature, defaults.topk, seed, defaults.max_seconds, defaults.chunk_frames)


def client_of(request: Request) -> str:
    return f"{request.client.host}:{request.client.port}" if request.client else "a client"


async def first_event(request: Request, events: StreamEvents) -> Event | ShuttingDown | None:
    """The stream's first event, or None when the client leaves before it comes."""
    async def left() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    coming, leaving = asyncio.ensure_future(events.get()), asyncio.ensure_future(left())
    try:
        await asyncio.wait([coming, leaving], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (coming, leaving):
            task.cancel()
    return coming.result() if coming.done() and not coming.cancelled() else None


def open_stream(scheduler: Scheduler, events: StreamEvents) -> Stream:
    try:
        return scheduler.open(events.put)
    except ServerBusy as e:
        raise ApiError(429, str(e), code="server_busy", kind="rate_limit_error") from None


def failure_error(failed: Failed) -> ApiError:
    if failed.internal:
        return ApiError(500, failed.message, kind="server_error")
    return ApiError(400, failed.message, param="input", code="cannot_generate")


def unauthorized() -> ApiError:
    return ApiError(401, "a valid API key is required: send 'Authorization: Bearer KEY' with this server's "
                         "--api-key", code="invalid_api_key")


def request_error(errors: Any) -> ApiError:
    """Validation errors -> one 400 naming the first bad field."""
    first = errors[0] if errors else {}
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = location[0] if location else None
    where = f"{param}: " if param else "the request body: "
    return ApiError(400, where + first.get("msg", "invalid"), param=param, code="invalid_request")


class StreamResponse(StreamingResponse):
    """A streamed body that calls `finish` (which closes its stream) however the response ends: complete, or the
    client gone (which stops the generation before its next chunk), even before the first byte."""

    def __init__(self, finish: Callable[[], None], content: AsyncIterator[bytes], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self.finish = finish

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.finish()


async def audio_body(events: StreamEvents, first: Event, encoder: Any) -> AsyncIterator[bytes]:
    """The response's bytes as chunks arrive."""
    event = first
    while isinstance(event, Chunk):
        if data := encoder.encode(event.samples):
            yield data
        event = await events.get()
    if isinstance(event, Done | ShuttingDown):  # a body cut short by a shutdown still ends as a valid stream
        yield encoder.finish()


async def sse_body(events: StreamEvents, first: Event, encoder: Any, input_tokens: int) -> AsyncIterator[bytes]:
    """OpenAI's speech events: speech.audio.delta with base64 audio, then speech.audio.done with the usage (input
    tokens: the text's; output tokens: the 80 ms frames sent, pauses between sentences included)."""

    def sse(payload: dict[str, Any]) -> bytes:
        return f"data: {json.dumps(payload)}\n\n".encode()

    frames = 0
    event = first
    while isinstance(event, Chunk):
        frames += len(event.samples) // SAMPLES_PER_FRAME
        if data := encoder.encode(event.samples):
            yield sse({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()})
        event = await events.get()
    if isinstance(event, Failed | ShuttingDown):
        yield sse((failure_error(event) if isinstance(event, Failed) else shutting_down()).body())
        return
    if data := encoder.finish():
        yield sse({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()})
    yield sse({"type": "speech.audio.done", "usage": {"input_tokens": input_tokens, "output_tokens": frames,
                                                       "total_tokens": input_tokens + frames}})


def bind(host: str, port: int, option: str = "--port") -> socket.socket:
    """The listening socket, bound before the model loads so that a taken port fails at once."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise CsmError(f"cannot resolve --host {host!r} ({e.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise CsmError(f"cannot listen on {host}:{port} ({e.strerror}): choose another {option} or --host") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


def is_loopback(sock: socket.socket) -> bool:
    return ipaddress.ip_address(sock.getsockname()[0]).is_loopback


def address_of(sock: socket.socket) -> str:
    address, port = sock.getsockname()[:2]
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def serve(load: Callable[[], tuple[StreamingGenerator, dict[str, Voice]]], host: str, port: int,
          options: ServeOptions, quiet: bool = False, wyoming_port: int | None = None) -> None:
    """Binds, loads the model, then serves until interrupted; Wyoming too, on `wyoming_port`."""
    import uvicorn

    sock = bind(host, port)
    wyoming = None if wyoming_port is None else bind(host, wyoming_port, "--wyoming-port")
    if not is_loopback(sock) and options.api_key is None:
        print(f"csm: warning: serving on {host}, which is not loopback, without --api-key: anyone who can reach "
              "this port can use the server", file=sys.stderr)
    if wyoming is not None and not is_loopback(wyoming):
        print(f"csm: warning: serving Wyoming on {host}, which is not loopback: Wyoming has no authentication, so "
              "anyone who can reach --wyoming-port can use the server", file=sys.stderr)
    generator, voices = load()
    app = create_app(generator, voices, options, wyoming)
    if wyoming is not None:
        print(f"csm: serving Wyoming on tcp://{address_of(wyoming)}", file=sys.stderr, flush=True)
    print(f"csm: serving on http://{address_of(sock)}", file=sys.stderr, flush=True)
    config = uvicorn.Config(app, log_level="warning" if quiet else "info", timeout_graceful_shutdown=2,
                            ws="websockets-sansio")
    graceful_server(config, app.state.listeners).run(sockets=[sock])


def graceful_server(config: Any, listeners: Listeners) -> Any:
    """uvicorn's server, whose shutdown (SIGTERM, Ctrl-C, or SIGHUP as uvicorn does not catch it) stops accepting
    connections, then ends every response and WebSocket connection cleanly at its next frame (`Listeners`), before
    uvicorn closes the connections (waiting 2 s at most), Wyoming's server stops and the generator's engine is stepped
    no more."""
    import uvicorn

    class GracefulServer(uvicorn.Server):
        @contextmanager
        def capture_signals(self) -> Iterator[None]:
            with super().capture_signals():  # it raises each signal caught again once the server is down
                hangup = signal.getsignal(signal.SIGHUP)
                if hangup is not signal.SIG_IGN:
                    signal.signal(signal.SIGHUP, self.handle_exit)
                try:
                    yield
                finally:
                    signal.signal(signal.SIGHUP, hangup)

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            for server in self.servers:
                server.close()
            await listeners.end_all(SHUTDOWN_S)
            await super().shutdown(sockets)

    return GracefulServer(config)
