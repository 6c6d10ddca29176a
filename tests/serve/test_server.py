"""`csm serve` through HTTP: a real uvicorn server in a subprocess on an ephemeral loopback port, called by the
official `openai` client, curl, httpx and a WebSocket client, and by voice agents' own clients (pipecat's and
LiveKit's) with their defaults, against the shared `agent_server` of conftest.py."""

import asyncio
import base64
import http.client
import io
import json
import os
import re
import selectors
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import soundfile as sf
from decoded import MEDIA_TYPES, assert_holds_pcm
from livekit.agents import tts as livekit_tts
from livekit.plugins import openai as livekit_openai
from pipecat.frames.frames import ErrorFrame, TTSAudioRawFrame
from pipecat.services.openai.tts import OpenAITTSService
from test_cli import assert_one_line_error
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from csm_cli.audio import SAMPLE_RATE, SAMPLES_PER_FRAME
from csm_cli.generation.conversation import Conversation, Utterance
from csm_cli.generation.generator import Settings
from csm_cli.loading.generator import LoadOptions, load_generator, load_voices
from csm_cli.output.pcm import to_pcm16
from csm_cli.serve.server import MAX_CONTEXTS
from csm_cli.serve.speech import OPENAI_VOICES, Voices

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
TEXT = "Hello there, how are you today?"
FRAME_BYTES = 2 * SAMPLES_PER_FRAME  # 16-bit PCM
MAX_FRAMES = 5  # of an utterance of the agent_server (conftest.py): --max-seconds 0.4


class Server:
    def __init__(self, process: subprocess.Popen, log: Path, url: str) -> None:
        self.process, self.log, self.url = process, log, url

    def health(self) -> dict:
        return httpx.get(f"{self.url}/health", timeout=30).json()

    def wait_idle(self, timeout: float) -> float:
        """Seconds until no stream is open."""
        started = time.monotonic()
        while self.health()["streams"]:
            assert time.monotonic() - started < timeout, f"streams still open after {timeout} s: {self.health()}"
            time.sleep(0.05)
        return time.monotonic() - started


def start_server(tmp_path: Path, model: list[str], *args: str, until: str = r"serving on (http://\S+)") -> Server:
    """The server once its log has a match of `until` (whose group, if any, is its URL); voice codes cached under
    `tmp_path`."""
    log = tmp_path / "server.log"
    with open(log, "wb") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "csm_cli", "serve", "--port", "0", *model, *args],
                                   stdout=subprocess.DEVNULL, stderr=stderr,
                                   env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")})
    deadline = time.monotonic() + 120
    while not (found := re.search(until, log.read_text())):
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    return Server(process, log, found[1] if found.groups() else "")


def stop_server(server: Server) -> str:
    server.process.terminate()
    server.process.wait(timeout=30)
    return server.log.read_text()


@pytest.fixture(scope="module")
def model(hub_copy_dir, mimi_file) -> list[str]:
    """The copy of the hub repository, with its voice prompts."""
    return ["--model", str(hub_copy_dir), "--codec", str(mimi_file), "--max-seconds", "1.5", "--quiet"]


@pytest.fixture(scope="module")
def server(tmp_path_factory, model) -> Iterator[Server]:
    """Its log at uvicorn's info level (not --quiet): what it says of clients that leave is checked."""
    running = start_server(tmp_path_factory.mktemp("server"), [arg for arg in model if arg != "--quiet"],
                           "--max-streams", "2", "--api-key", KEY, "--max-input-chars", "200",
                           "--max-conversations", "1")
    yield running
    log = stop_server(running)
    assert "Traceback" not in log, log


def speech(server: Server, **body) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/audio/speech", json={"voice": "0", "input": TEXT, **body}, headers=AUTH,
                      timeout=120)


def timed_chunks(response: httpx.Response) -> Iterator[tuple[float, bytes]]:
    for data in response.iter_bytes():
        yield time.monotonic(), data


def test_the_openai_client_streams_speech_before_generation_ends(server):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY)
    arrivals = []
    with client.audio.speech.with_streaming_response.create(
        model="csm-1b", voice="0", input=TEXT, response_format="pcm", extra_body={"seed": 5},
    ) as response:
        assert response.headers["content-type"] == "audio/pcm"
        for data in response.iter_bytes(FRAME_BYTES):
            arrivals.append((time.monotonic(), len(data)))
    total = sum(size for _, size in arrivals)
    assert total % FRAME_BYTES == 0 and total // FRAME_BYTES > 4
    first, last = arrivals[0][0], arrivals[-1][0]
    assert last - first > 0.5 * (last - arrivals[0][0] + 1e-9), "no audio arrived before the end"
    assert len({round(t, 3) for t, _ in arrivals}) > 3, "the body came at once, not frame by frame"
    pcm = speech(server, response_format="pcm", seed=5).content
    assert len(pcm) == total


def test_curl_streams_a_wav_that_holds_the_pcm_samples(server):
    body = json.dumps({"model": "csm-1b", "voice": "1", "input": TEXT, "response_format": "wav", "seed": 9})
    process = subprocess.Popen(
        ["curl", "-sN", "--fail-with-body", f"{server.url}/v1/audio/speech", "-H", f"Authorization: Bearer {KEY}",
         "-H", "Content-Type: application/json", "-d", body], stdout=subprocess.PIPE)
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    assert selector.select(60), "no bytes from curl"
    first = os.read(process.stdout.fileno(), 1 << 16)
    assert process.poll() is None, "curl got the first bytes only once the speech was complete"
    rest = process.stdout.read()
    assert process.wait(timeout=60) == 0
    samples, rate = sf.read(io.BytesIO(first + rest), dtype="int16")
    assert rate == SAMPLE_RATE and len(samples) % SAMPLES_PER_FRAME == 0
    pcm = np.frombuffer(speech(server, voice="1", response_format="pcm", seed=9).content, dtype="<i2")
    np.testing.assert_array_equal(samples, pcm)


def with_length(flac: bytes, samples: int) -> bytes:
    """A streamed FLAC with the length its STREAMINFO leaves unknown (zero) filled in, for libsndfile's reader."""
    header = bytearray(flac)
    assert header[:4] == b"fLaC" and header[21] & 0x0F == 0 and header[22:26] == bytes(4), "a length was sent"
    header[21] |= samples >> 32
    header[22:26] = (samples & 0xFFFFFFFF).to_bytes(4, "big")
    return bytes(header)


def test_flac_streams_the_pcm_samples(server):
    with httpx.stream("POST", f"{server.url}/v1/audio/speech", headers=AUTH, timeout=120,
                      json={"voice": "0", "input": TEXT, "response_format": "flac", "seed": 4}) as response:
        assert response.status_code == 200 and response.headers["content-type"] == "audio/flac"
        arrivals = list(timed_chunks(response))
    assert len({round(t, 3) for t, _ in arrivals}) > 3, "the FLAC came at once, not frame by frame"
    assert arrivals[-1][0] - arrivals[0][0] > 0.2
    pcm = np.frombuffer(speech(server, response_format="pcm", seed=4).content, dtype="<i2")
    flac = with_length(b"".join(data for _, data in arrivals), len(pcm))
    samples, rate = sf.read(io.BytesIO(flac), dtype="int16")
    assert rate == SAMPLE_RATE
    np.testing.assert_array_equal(samples, pcm)


def test_server_sent_events_carry_base64_audio_then_done(server):
    events = []
    with httpx.stream("POST", f"{server.url}/v1/audio/speech", headers=AUTH, timeout=120, json={
        "voice": "0", "input": TEXT, "response_format": "pcm", "stream_format": "sse", "seed": 5,
    }) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line.removeprefix("data: ")))
    deltas, done = events[:-1], events[-1]
    assert {event["type"] for event in deltas} == {"speech.audio.delta"}
    assert done["type"] == "speech.audio.done"
    audio = b"".join(base64.b64decode(event["audio"]) for event in deltas)
    assert audio == speech(server, response_format="pcm", seed=5).content
    assert done["usage"]["output_tokens"] == len(audio) // FRAME_BYTES
    assert done["usage"]["total_tokens"] == done["usage"]["input_tokens"] + done["usage"]["output_tokens"]


def test_listings_and_health(server):
    models = httpx.get(f"{server.url}/v1/models", headers=AUTH).json()
    assert [m["id"] for m in models["data"]] == ["csm-1b"]
    voices = {voice["id"]: voice for voice in httpx.get(f"{server.url}/v1/audio/voices", headers=AUTH).json()["voices"]}
    # read_speech_*: no transcript; then OpenAI's names, taking the voices in turn
    assert list(voices) == ["conversational_a", "conversational_b", "0", "1", *OPENAI_VOICES]
    assert voices["conversational_b"]["speaker"] == 0 and voices["conversational_b"]["seconds"] == 0.5
    assert (voices["0"]["voice"], voices["1"]["voice"]) == ("conversational_a", "conversational_b")
    assert [voices[name]["alias_of"] for name in ("alloy", "ash", "ballad", "verse")] == [
        "conversational_a", "conversational_b", "conversational_a", "conversational_a"]
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok", "streams": 0, "max_streams": 2,
                                                        "conversations": 0, "max_conversations": 1}


@pytest.fixture(scope="module")
def keep_alive(server) -> Iterator[http.client.HTTPConnection]:
    """One connection for many requests, as a client with keep-alive makes them."""
    connection = http.client.HTTPConnection(server.url.removeprefix("http://"), timeout=60)
    yield connection
    connection.close()


def request_on(connection: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None
               ) -> tuple[int, bytes]:
    """A request on `connection`, which must stay the same TCP connection (http.client would open another)."""
    connection.request(method, path, body=body, headers=AUTH)
    sock = connection.sock
    response = connection.getresponse()
    content = response.read()
    assert connection.sock is sock and not response.will_close, "the server closed the keep-alive connection"
    return response.status, content


@pytest.mark.parametrize(("body", "param", "code"), [
    (b'{"input": "Hi.", "voice": ', None, "invalid_json"),
    (b"[" * 100_000 + b"]" * 100_000, None, "invalid_json"),
    (b'["Hi."]', None, "invalid_request"),
    (b'{"voice": "0"}', "input", "invalid_request"),
    (b'{"input": 5, "voice": "0"}', "input", "invalid_request"),
    (b'{"input": "Hi \\ud800.", "voice": "0"}', "input", "invalid_text"),
    (b'{"input": "Hi.", "voice": "nobody"}', "voice", "unknown_voice"),
    (b'{"input": "Hi.", "voice": "read_speech_a"}', "voice", "unknown_voice"),
    (b'{"input": "Hi.", "voice": "\\ud800"}', "voice", "unknown_voice"),
    (b'{"input": "Hi.", "voice": "1000000"}', "voice", "unknown_voice"),
    (f'{{"input": "Hi.", "voice": {10**30}}}'.encode(), "voice", "unknown_voice"),
    (b'{"input": "Hi.", "voice": true}', "voice", "invalid_request"),
    (b'{"input": "Hi.", "voice": "0", "seed": -1}', "seed", "invalid_request"),
    (f'{{"input": "Hi.", "voice": "0", "seed": {2**70}}}'.encode(), "seed", "invalid_request"),
    (b'{"input": "Hi.", "voice": "0", "seed": 1.5}', "seed", "invalid_request"),
    (b'{"input": "Hi.", "voice": "0", "seed": true}', "seed", "invalid_request"),
    (b'{"input": "Hi.", "voice": "0", "seed": 1e400}', "seed", "invalid_request"),
    (b'{"input": "Hi.", "voice": "0", "conversation": ""}', "conversation", "invalid_request"),
    (b'{"input": "Hi.", "voice": "0", "response_format": "ogg"}', "response_format", "unsupported_format"),
    (b'{"input": "Hi.", "voice": "0", "response_format": "\\udfff"}', "response_format", "unsupported_format"),
    (b'{"input": "Hi.", "voice": "0", "stream_format": "chunks"}', "stream_format", "invalid_request"),
    (b'{"input": "Hi.", "voice": "0", "speed": 1.5}', "speed", "unsupported_speed"),
    (b'{"input": "Hi.", "voice": "0", "speed": NaN}', "speed", "unsupported_speed"),
    (b'{"input": " ", "voice": "0"}', "input", "empty_input"),
    (json.dumps({"input": "word " * 50, "voice": "0"}).encode(), "input", "input_too_long"),
], ids=lambda value: value[:50].decode(errors="replace") if isinstance(value, bytes) else value)
def test_bad_requests_are_answered_400_with_an_openai_error_and_the_connection_goes_on(keep_alive, body, param,
                                                                                       code):
    """Every field checked as `csm say` checks its options; a 4xx, never a 500, and the client's keep-alive
    connection serves its next request."""
    status, content = request_on(keep_alive, "POST", "/v1/audio/speech", body)
    assert status == 400, content
    error = json.loads(content)["error"]
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")
    assert error["message"] and "Traceback" not in error["message"]
    if code == "input_too_long":
        assert "200" in error["message"] and "--max-input-chars" in error["message"]
    if code == "unknown_voice" and "nobody" in error["message"]:
        assert ("voices are conversational_a, conversational_b, the aliases alloy, ash, ballad, cedar, coral, echo, "
                "fable, marin, nova, onyx, sage, shimmer, verse, or a speaker id (0, 1, ...)") in error["message"]
    if code == "unsupported_format":
        assert "choose one of mp3, opus, aac, flac, wav, pcm" in error["message"]
    if param == "seed":
        assert "seed must be" in error["message"] or "integer" in error["message"]
    assert request_on(keep_alive, "GET", "/v1/models")[0] == 200


def test_requests_without_the_key_are_answered_401(server):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        response = httpx.post(f"{server.url}/v1/audio/speech", json={"voice": "0", "input": TEXT}, headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{server.url}/v1/models").status_code == 401
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong").audio.speech.create(
            model="csm-1b", voice="0", input=TEXT)
    assert speech(server, response_format="pcm").status_code == 200


def test_a_full_server_answers_429_at_once_and_serves_when_a_slot_frees(server):
    with httpx.Client(headers=AUTH, timeout=120) as client:
        held = [client.stream("POST", f"{server.url}/v1/audio/speech",
                              json={"voice": "0", "input": TEXT, "response_format": "pcm"}) for _ in range(2)]
        responses = [request.__enter__() for request in held]
        assert all(response.status_code == 200 for response in responses)
        started = time.monotonic()
        busy = client.post(f"{server.url}/v1/audio/speech", json={"voice": "0", "input": TEXT})
        assert busy.status_code == 429 and time.monotonic() - started < 5
        assert busy.json()["error"]["code"] == "server_busy"
        for request in held:
            request.__exit__(None, None, None)
    server.wait_idle(timeout=30)
    assert speech(server, response_format="pcm").status_code == 200


def test_a_client_that_leaves_mid_stream_frees_its_slot(tmp_path, model):
    """A request long enough (20 s of speech: seeded, so that no quiet stretch ends it early) to be still generating
    when its client leaves after the first bytes."""
    server = start_server(tmp_path, model, "--max-seconds", "20", "--api-key", KEY)
    try:
        long_text = " ".join(["one two three four five six seven eight nine ten"] * 3)
        with httpx.stream("POST", f"{server.url}/v1/audio/speech", headers=AUTH, timeout=120,
                          json={"voice": "0", "input": long_text, "response_format": "pcm", "seed": 0}) as response:
            body = response.iter_bytes()  # held: an iterator dropped closes the response
            next(body)
            assert server.health()["streams"] == 1
        server.wait_idle(timeout=30)
        assert speech(server, input="Hi.", response_format="pcm").status_code == 200
    finally:
        log = stop_server(server)
    assert "Traceback" not in log, log


def raw_request(body: bytes, length: int | None = None) -> bytes:
    """A speech request as bytes, its Content-Length `length` (the body's own by default)."""
    return (f"POST /v1/audio/speech HTTP/1.1\r\nHost: csm\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body) if length is None else length}\r\n\r\n"
            ).encode() + body


def address(server: Server) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def test_a_slot_freed_by_a_client_that_just_left_is_free_at_once(server):
    """20 clients leave one after another (before their first audio, or after it) on a server of 2 slots: each
    next one gets a slot, not a 429."""
    server.wait_idle(timeout=30)
    body = json.dumps({"voice": "0", "input": TEXT, "response_format": "pcm"}).encode()
    with httpx.Client(headers=AUTH, timeout=120) as client:
        for _ in range(10):
            with socket.create_connection(address(server)) as sock:  # leaves before its first audio
                sock.sendall(raw_request(body))
            with client.stream("POST", f"{server.url}/v1/audio/speech", content=body) as response:
                assert response.status_code == 200, response.read()  # then leaves after its first audio
    server.wait_idle(timeout=30)


def test_clients_that_leave_mid_body_are_one_quiet_log_line_each(server):
    before = server.log.read_text().count("left before sending its whole request")
    for _ in range(5):
        with socket.create_connection(address(server)) as sock:
            sock.sendall(raw_request(b'{"voice": "0", "in', length=1000))
    deadline = time.monotonic() + 30
    while server.log.read_text().count("left before sending its whole request") < before + 5:
        assert time.monotonic() < deadline, server.log.read_text()
        time.sleep(0.05)
    log = server.log.read_text()
    assert "Traceback" not in log and "ClientDisconnect" not in log, log
    assert speech(server, input="Hi.", response_format="pcm").status_code == 200


def test_two_listeners_are_served_interleaved(server):
    """The second request's first audio comes long before the first request's speech is over."""
    with httpx.Client(headers=AUTH, timeout=120) as client:
        body = {"voice": "0", "input": TEXT, "response_format": "pcm", "seed": 1}
        with client.stream("POST", f"{server.url}/v1/audio/speech", json=body) as first:
            first_chunks = timed_chunks(first)
            next(first_chunks)
            with client.stream("POST", f"{server.url}/v1/audio/speech", json=body) as second:
                second_chunks = list(timed_chunks(second))
            first_times = [t for t, _ in first_chunks]
            assert first_times and first_times[-1] > second_chunks[0][0], "the second listener waited for the first"
    alone = speech(server, response_format="pcm", seed=1).content
    assert b"".join(data for _, data in second_chunks) == alone


def test_sigterm_ends_every_stream_cleanly_and_exits_soon(tmp_path, model):
    """A streamed WAV body is terminated (its chunked encoding complete, the WAV readable), server-sent events end with
    an error event, a WebSocket is closed with 1001 (going away), no new connection is accepted, and the process
    exits with 143 within a few seconds."""
    server = start_server(tmp_path, [arg for arg in model if arg != "--quiet"], "--max-seconds", "20",
                          "--max-streams", "3")
    long_text = " ".join(["one two three four five six seven eight nine ten"] * 3)
    body = {"voice": "0", "input": long_text, "response_format": "wav", "seed": 0}
    url = f"{server.url}/v1/audio/speech"
    with httpx.Client(timeout=60) as client, client.stream("POST", url, json=body) as wav, \
            client.stream("POST", url, json=body | {"response_format": "pcm", "stream_format": "sse"}) as sse, \
            connect(ws_url(server)) as ws:
        wav_bytes = wav.iter_bytes()
        first = next(wav_bytes)
        sse_lines = sse.iter_lines()
        assert next(line for line in sse_lines if line.startswith("data: "))
        ws.send(json.dumps({"type": "text", "text": long_text}))
        ws.send(json.dumps({"type": "flush"}))
        while json.loads(ws.recv(timeout=60))["type"] != "audio":
            pass
        server.process.terminate()
        stopped_at = time.monotonic()
        samples, rate = sf.read(io.BytesIO(first + b"".join(wav_bytes)), dtype="int16")  # complete, or httpx raises
        assert rate == SAMPLE_RATE and len(samples) > 0 and len(samples) % SAMPLES_PER_FRAME == 0
        events = [json.loads(line.removeprefix("data: ")) for line in sse_lines if line.startswith("data: ")]
        assert events[-1]["error"]["code"] == "server_shutting_down", events[-1]
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                ws.recv(timeout=30)
        assert closed.value.rcvd.code == 1001
        with pytest.raises(httpx.ConnectError):  # a new connection: the client's pool may hold one the server closed
            httpx.get(f"{server.url}/health")
    assert server.process.wait(timeout=30) == 143
    assert time.monotonic() - stopped_at < 6
    log = server.log.read_text()
    assert log.strip().splitlines()[-1] == "csm: terminated", log
    assert "Traceback" not in log and "Cancel" not in log, log


def test_binding_beyond_loopback_without_a_key_warns_and_wyoming_always_does(tmp_path, model):
    running = start_server(tmp_path, model, "--host", "0.0.0.0", "--wyoming-port", "0",
                           until="csm: warning: serving Wyoming on 0.0.0.0")
    log = stop_server(running)
    assert "csm: warning: serving on 0.0.0.0" in log and "--api-key" in log
    assert "Wyoming has no authentication" in log


@pytest.mark.parametrize("option", ["--port", "--wyoming-port"])
def test_a_taken_port_is_one_error_line(server, model, option):
    port = server.url.rsplit(":", 1)[1]
    ports = {"--port": "0", "--wyoming-port": "0", option: port}
    done = subprocess.run([sys.executable, "-m", "csm_cli", "serve", *(part for item in ports.items() for part in item),
                           *model], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert_one_line_error(done.stderr, f"cannot listen on 127.0.0.1:{port} (Address already in use): choose another "
                                       f"{option} or --host")


@pytest.mark.parametrize(("args", "message"), [
    (["--max-streams", "0"], "--max-streams must be at least 1, got 0"),
    (["--max-streams", "1000000000"], "the KV caches of 1000000000 streams take"),
    (["--max-input-chars", "0"], "--max-input-chars must be at least 1, got 0"),
    (["--max-conversations", "0"], "--max-conversations must be at least 1, got 0"),
    (["--port", "70000"], "--port must lie in 0..65535, got 70000"),
    (["--voice-alias", "alloy"], "--voice-alias 'alloy' is not NAME=VOICE"),
    (["--pause", "-1"], "--pause must be a number from 0 to 60 seconds, got -1"),
    (["--pause", "nan"], "--pause must be a number from 0 to 60 seconds, got nan"),
    (["--temperature", "nan"], "--temperature must be a number"),
    (["--max-seconds", "inf"], "--max-seconds must be a number"),
])
def test_bad_serve_options_are_one_error_line(model, args, message):
    """Refused before serving, the memory a batch of --max-streams needs included (its caches are allocated up
    front: past the memory there is, a CPU would end the process rather than raise)."""
    done = subprocess.run([sys.executable, "-m", "csm_cli", "serve", "--port", "0", *model, *args],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert_one_line_error(done.stderr, message)


def test_a_voice_name_speaks_as_csm_say_voice(server, model):
    """With that voice's prompt as context, spoken by speaker 0: the same codes, so the same samples up to the
    rounding of Mimi's batched decode (one 16-bit step at most)."""
    cache = {**os.environ, "XDG_CACHE_HOME": str(server.log.parent / "cache")}  # the server's voice codes
    say = subprocess.Popen([sys.executable, "-m", "csm_cli", "say", "Hi there.", "--voice", "conversational_b",
                            "--seed", "3", "--out", "-", *model], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           env=cache)
    spoken = speech(server, voice="conversational_b", input="Hi there.", response_format="pcm", seed=3).content
    out, err = say.communicate(timeout=120)
    assert say.returncode == 0, err
    assert len(spoken) == len(out) > 0
    np.testing.assert_allclose(np.frombuffer(spoken, "<i2"), np.frombuffer(out, "<i2"), atol=1)


def test_requests_that_name_a_conversation_continue_it(server):
    """The server keeps one conversation (--max-conversations 1): its second request speaks with the first as
    context; a second conversation forgets the first, which then starts anew."""
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY)

    def say(conversation: str, voice: str = "conversational_a") -> bytes:
        return client.audio.speech.create(model="csm-1b", voice=voice, input="Hi there.", response_format="pcm",
                                          extra_body={"seed": 7, "conversation": conversation}).content

    first = say("chat")
    with httpx.stream("POST", f"{server.url}/v1/audio/speech", headers=AUTH, timeout=120, json={
        "voice": "conversational_a", "input": "Hi there.", "response_format": "pcm", "seed": 7, "conversation": "chat",
    }) as response:
        chunks = response.iter_bytes()
        continued = next(chunks)
        busy = httpx.post(f"{server.url}/v1/audio/speech", headers=AUTH, timeout=30, json={
            "voice": "conversational_a", "input": "Hi.", "conversation": "chat"})
        assert busy.status_code == 409 and busy.json()["error"]["code"] == "conversation_busy"
        continued += b"".join(chunks)
    assert continued != first, "the second request did not continue the conversation"
    with pytest.raises(openai.BadRequestError) as refused:
        say("chat", voice="conversational_b")
    assert refused.value.code == "conversation_voice"
    assert server.health()["conversations"] == 1
    say("another")
    assert server.health()["conversations"] == 1
    assert say("chat") == first, "the forgotten conversation did not start anew"


def ws_url(server: Server, query: str = "") -> str:
    return server.url.replace("http://", "ws://") + "/v1/audio/speech/stream" + query


def test_a_websocket_speaks_each_sentence_as_soon_as_it_is_complete(server):
    """Text sent in small deltas: the first sentence's audio comes before the rest of the text is sent; every
    frame names its sentence; after the flush, 'done' follows the last sentence."""
    with connect(ws_url(server, "?voice=conversational_b&seed=2"), additional_headers=AUTH) as ws:
        for piece in ["Hel", "lo th", "ere. ", "How"]:
            ws.send(json.dumps({"type": "text", "text": piece}))
        received = []
        while not received or received[-1]["type"] != "audio":
            received.append(json.loads(ws.recv(timeout=120)))
        assert received[-1]["sentence"] == 0, "no audio before the text was complete"
        for piece in [" are you", " today? I am", " fine"]:
            ws.send(json.dumps({"type": "text", "text": piece}))
        ws.send(json.dumps({"type": "flush"}))
        while received[-1]["type"] != "done":
            received.append(json.loads(ws.recv(timeout=120)))
    sentences = [m["text"] for m in received if m["type"] == "sentence"]
    assert sentences == ["Hello there.", "How are you today?", "I am fine"]
    frames = [m["sentence"] for m in received if m["type"] == "audio"]
    assert frames == sorted(frames) and set(frames) == {0, 1, 2}
    assert [m["sentence"] for m in received if m["type"] == "sentence.done"] == [0, 1, 2]
    first = b"".join(base64.b64decode(m["audio"]) for m in received if m["type"] == "audio" and m["sentence"] == 0)
    assert first == speech(server, voice="conversational_b", input="Hello there.", response_format="pcm",
                           seed=2).content


def test_a_websocket_answers_bad_messages_and_goes_on(server):
    bad_messages = [("{not json", None), ("[" * 100_000 + "]" * 100_000, None), (json.dumps({"type": "speak"}), "type"),
                    (json.dumps({"type": "text", "text": 5}), "text"),
                    ('{"type": "text", "text": "Hi \\ud800."}', "text"),
                    (json.dumps({"type": "text", "text": "x" * 300}), "text"),
                    (json.dumps({"type": "cancel", "context": 5}), "context"),
                    (json.dumps({"type": "text", "text": "Hi.", "context": ""}), "context"),
                    (json.dumps({"type": "flush", "context": "x" * 129}), "context"),
                    ('{"type": "cancel", "context": "\\udc00"}', "context")]
    with connect(ws_url(server), additional_headers=AUTH, max_size=None) as ws:
        for bad, param in bad_messages:
            ws.send(bad)
            error = json.loads(ws.recv(timeout=60))
            assert error["type"] == "error" and error["error"]["param"] == param, (bad[:80], error)
        for context in ("never", None):  # a context with nothing to cancel: acknowledged all the same
            ws.send(json.dumps({"type": "cancel", "context": context}))
            assert json.loads(ws.recv(timeout=60)) == {"type": "cancelled", "context": context}
        ws.send(json.dumps({"type": "text", "text": "Fine."}))
        ws.send(json.dumps({"type": "flush"}))
        kinds = []
        while not kinds or kinds[-1] != "done":
            kinds.append(json.loads(ws.recv(timeout=120))["type"])
        assert "audio" in kinds


def test_a_websocket_holds_a_bounded_number_of_contexts_with_text_to_speak(server):
    """One more context is refused while each has text to speak; once one is spoken, it makes room."""

    def answer_to(message: dict) -> dict:
        ws.send(json.dumps(message))
        return json.loads(ws.recv(timeout=60))

    with connect(ws_url(server), additional_headers=AUTH) as ws:
        for i in range(MAX_CONTEXTS):
            ws.send(json.dumps({"type": "text", "text": "Unfinished", "context": str(i)}))
        one_more = {"type": "text", "text": "Unfinished", "context": "one more"}
        assert answer_to(one_more)["error"]["code"] == "too_many_contexts"
        ws.send(json.dumps({"type": "flush", "context": "0"}))
        ws.send(json.dumps(one_more))
        spoken = [m for _, m in received_until(ws, lambda m: m["type"] == "done")]
        assert [m["error"]["code"] for m in spoken if m["type"] == "error"] == ["too_many_contexts"]  # "0" speaking
        ws.send(json.dumps(one_more))  # "0" is forgotten for it
        assert answer_to({"type": "cancel", "context": "one more"}) == {"type": "cancelled", "context": "one more"}


def test_a_websocket_without_the_key_is_refused(server):
    with connect(ws_url(server)) as ws:
        error = json.loads(ws.recv(timeout=30))
        assert error["type"] == "error" and error["error"]["code"] == "invalid_api_key"
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=30)
        assert closed.value.rcvd.code == 1008


@pytest.mark.parametrize(("query", "param"), [
    ("?seed=-1", "seed"),
    (f"?seed={2**70}", "seed"),
    ("?seed=1.5", "seed"),
    ("?seed=", "seed"),
    ("?voice=1000000", "voice"),
    ("?voice=nobody", "voice"),
])
def test_a_websocket_with_a_bad_parameter_is_answered_and_closed(server, query, param):
    """As a request's body is: an error message naming the parameter, then close code 1008."""
    with connect(ws_url(server, query), additional_headers=AUTH) as ws:
        error = json.loads(ws.recv(timeout=30))
        assert error["type"] == "error" and error["error"]["param"] == param, error
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=30)
        assert closed.value.rcvd.code == 1008


def test_a_websocket_that_leaves_mid_sentence_frees_its_slot(server):
    with connect(ws_url(server), additional_headers=AUTH) as ws:
        ws.send(json.dumps({"type": "text", "text": TEXT}))
        ws.send(json.dumps({"type": "flush"}))
        while json.loads(ws.recv(timeout=120))["type"] != "audio":
            pass
    server.wait_idle(timeout=30)


def received_until(ws, last: Callable[[dict], bool]) -> list[tuple[float, dict]]:
    """The messages received, each with the time it came, up to the first that is `last`."""
    received: list[tuple[float, dict]] = []
    while not received or not last(received[-1][1]):
        received.append((time.monotonic(), json.loads(ws.recv(timeout=120))))
    return received


def pcm_of(messages: list[dict]) -> np.ndarray:
    return np.frombuffer(b"".join(base64.b64decode(m["audio"]) for m in messages), "<i2")


def pcm16(chunks: Iterable[np.ndarray]) -> np.ndarray:
    return np.frombuffer(to_pcm16(np.concatenate(list(chunks))), "<i2")


def test_a_cancel_stops_its_context_at_once_and_the_next_turn_follows_what_was_heard(agent_server, hub_copy_dir,
                                                                                     mimi_file):
    """Context "one" is cancelled two frames into its first sentence (of at most 5), with a sentence queued and
    unfinished text: the acknowledgement comes within a frame's time, no message of "one" follows it, and context
    "two" is spoken on the same connection with what was sent of "one" as its context (the same samples as in this
    process with the history holding those frames), its offsets and timestamps those of the audio sent."""
    with connect(ws_url(agent_server, "?seed=7"), additional_headers=AUTH) as ws:
        ws.send(json.dumps({"type": "text", "context": "one",
                            "text": "Hello there, how are you? It is a fine day. Or"}))
        audio = iter(range(2))
        before = received_until(ws, lambda m: m["type"] == "audio" and next(audio) == 1)
        cancelled = time.monotonic()
        ws.send(json.dumps({"type": "cancel", "context": "one"}))
        acknowledged = received_until(ws, lambda m: m["type"] == "cancelled")
        ws.send(json.dumps({"type": "text", "context": "two", "text": "Fine. Thanks."}))
        ws.send(json.dumps({"type": "flush", "context": "two"}))
        after = [m for _, m in received_until(ws, lambda m: m["type"] == "done")]
    frame_time = np.diff([t for t, m in before if m["type"] == "audio"])[0]
    assert acknowledged[-1][0] - cancelled < frame_time
    assert acknowledged[-1][1] == {"type": "cancelled", "context": "one"}
    one = [m for _, m in before + acknowledged if m["type"] == "audio"]
    assert {m["context"] for m in one} == {"one"} and {m["sentence"] for m in one} == {0}
    assert [m["context"] for m in after if "context" in m] == ["two"] * len(after)
    assert [(m["sentence"], m["text"]) for m in after if m["type"] == "sentence"] == [(0, "Fine."), (1, "Thanks.")]

    for spoken in (one, [m for m in after if m["type"] == "audio"]):  # each context's audio, from offset 0 on
        sizes = [len(base64.b64decode(m["audio"])) // 2 for m in spoken]
        assert [m["offset"] for m in spoken] == [0, *np.cumsum(sizes)[:-1]]
    two = {i: pcm_of([m for m in after if m["type"] == "audio" and m["sentence"] == i]) for i in (0, 1)}
    done = [m for m in after if m["type"] == "sentence.done"]
    assert done[0]["start"] == 0 and done[0]["duration"] == len(two[0]) / SAMPLE_RATE  # a turn starts at once
    pause = round(done[1]["start"] * SAMPLE_RATE) - len(two[0])
    assert pause == 2 * SAMPLES_PER_FRAME and not two[1][:pause].any()  # --pause 0.2, in whole frames
    assert done[1]["duration"] == (len(two[1]) - pause) / SAMPLE_RATE

    heard = len(pcm_of(one)) // SAMPLES_PER_FRAME
    assert heard >= 2 and len(pcm_of(one)) == heard * SAMPLES_PER_FRAME
    generator = load_generator(LoadOptions(str(hub_copy_dir), codec=mimi_file, device="cpu"))  # as the server's
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("XDG_CACHE_HOME", str(agent_server.log.parent / "cache"))  # the server's voice codes
            prompts = Voices(load_voices(str(hub_copy_dir)), generator.codec).resolve("0").prompts
        conversation = Conversation(generator, Settings(seed=7, max_seconds=MAX_FRAMES * 0.08), prompts)
        cut = conversation.speak([Utterance(0, "Hello there, how are you?")])
        np.testing.assert_allclose(pcm16(next(cut) for _ in range(heard)), pcm_of(one), atol=1)
        cut.close()
        conversation.history.append(conversation.lines[0].segment)  # its frames heard
        expected = pcm16(conversation.speak([Utterance(0, "Fine.")], pause_first=False))
    finally:
        generator.close()
    np.testing.assert_allclose(two[0], expected, atol=1)


def test_the_load_benchmark_reports_each_round(server):
    bench = Path(__file__).resolve().parents[2] / "bench" / "serve_load.py"
    done = subprocess.run([sys.executable, str(bench), "--url", server.url, "--api-key", KEY, "--clients", "1,2",
                           "--requests", "1", "--text", "Hello there.", "--json"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    rounds = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(r["clients"], r["requests"]) for r in rounds] == [(1, 1), (2, 2)]
    for figures in rounds:
        assert 0 < figures["first_audio_p50_s"] <= figures["first_audio_p95_s"] < figures["wall_s"]
        assert figures["aggregate_rtf"] > 0 and figures["audio_s"] > 0


# --- voice agents' own clients, with their defaults: the shared agent_server (utterances of 5 frames) -------------


@pytest.fixture(scope="module")
def alloy_pcm(agent_server) -> bytes:
    return speech(agent_server, voice="alloy", response_format="pcm", seed=5).content


@pytest.mark.parametrize("response_format", list(MEDIA_TYPES))
def test_the_openai_client_gets_every_format_streamed_and_as_events(agent_server, alloy_pcm, response_format):
    """OpenAI's Content-Type for each; the bytes, and the base64 deltas of stream_format "sse", decode to the pcm
    format's samples (within a lossy codec's loss)."""
    client = openai.OpenAI(base_url=f"{agent_server.url}/v1", api_key=KEY)
    request = {"model": "csm-1b", "voice": "alloy", "input": TEXT, "response_format": response_format,
               "extra_body": {"seed": 5}}
    with client.audio.speech.with_streaming_response.create(**request) as response:
        assert response.headers["content-type"] == MEDIA_TYPES[response_format]
        assert response.headers["x-request-id"].startswith("req_")
        audio = b"".join(response.iter_bytes())
    assert_holds_pcm(audio, response_format, alloy_pcm)
    with client.audio.speech.with_streaming_response.create(**request, stream_format="sse") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    events = [json.loads(line.removeprefix("data: ")) for line in lines]
    assert [event["type"] for event in events] == ["speech.audio.delta"] * (len(events) - 1) + ["speech.audio.done"]
    assert_holds_pcm(b"".join(base64.b64decode(event["audio"]) for event in events[:-1]), response_format, alloy_pcm)


def test_openai_voice_names_speak_as_the_voices_they_name(agent_server, alloy_pcm):
    """alloy takes conversational_a by default; --voice-alias ash=1 and narrator=conversational_b; a request that
    names no format gets mp3, as from OpenAI."""
    assert alloy_pcm == speech(agent_server, voice="conversational_a", response_format="pcm", seed=5).content
    narrator = speech(agent_server, voice="narrator", response_format="pcm", seed=5).content
    assert narrator == speech(agent_server, voice="conversational_b", response_format="pcm", seed=5).content
    ash = speech(agent_server, voice="ash", seed=5)
    assert ash.headers["content-type"] == "audio/mpeg"
    assert_holds_pcm(ash.content, "mp3", speech(agent_server, voice="1", response_format="pcm", seed=5).content)
    listed = {voice["id"]: voice for voice in
              httpx.get(f"{agent_server.url}/v1/audio/voices", headers=AUTH).json()["voices"]}
    assert (listed["ash"]["alias_of"], listed["ash"]["speaker"], listed["narrator"]["alias_of"]) == (
        "1", 1, "conversational_b")


def test_pipecats_openai_tts_speaks_with_its_default_voice(agent_server):
    """pipecat refuses, before sending, any voice but OpenAI's; it asks for pcm, its default voice alloy."""

    async def run() -> list:
        service = OpenAITTSService(api_key=KEY, base_url=f"{agent_server.url}/v1", sample_rate=SAMPLE_RATE)
        service._sample_rate = SAMPLE_RATE  # set by setup() in a pipeline
        return [frame async for frame in service.run_tts(TEXT, context_id="turn-1")]

    frames = asyncio.run(run())
    assert not [frame for frame in frames if isinstance(frame, ErrorFrame)], frames
    audio = [frame for frame in frames if isinstance(frame, TTSAudioRawFrame)]
    assert {(frame.sample_rate, frame.num_channels, frame.context_id) for frame in audio} == {
        (SAMPLE_RATE, 1, "turn-1")}
    assert sum(len(frame.audio) for frame in audio) == MAX_FRAMES * FRAME_BYTES


def livekit_samples(frames: list) -> np.ndarray:
    assert {(frame.sample_rate, frame.num_channels) for frame in frames} == {(SAMPLE_RATE, 1)}
    return np.concatenate([np.frombuffer(frame.data, dtype="<i2") for frame in frames])


def test_livekits_openai_tts_speaks_mp3_over_server_sent_events(agent_server):
    """Its defaults: voice ash, mp3 as base64 deltas of server-sent events, decoded by PyAV."""

    async def run() -> list:
        tts = livekit_openai.TTS(base_url=f"{agent_server.url}/v1", api_key=KEY)
        try:
            async with tts.synthesize(TEXT) as stream:
                return [event.frame async for event in stream]
        finally:
            await tts.aclose()

    samples = livekit_samples(asyncio.run(run()))
    assert MAX_FRAMES * SAMPLES_PER_FRAME <= len(samples) < (MAX_FRAMES + 1) * SAMPLES_PER_FRAME  # an MP3's padding
    assert np.abs(samples).max() > 1000


def test_livekits_stream_adapter_sends_a_request_per_sentence(agent_server):
    """Its requests counted by the ids LiveKit reports in its metrics: the x-request-id of each response."""
    sentences = ["Hello there, how are you today?", "I am fine, thank you very much."]
    request_ids = []

    async def run() -> list:
        tts = livekit_openai.TTS(base_url=f"{agent_server.url}/v1", api_key=KEY)
        tts.on("metrics_collected", lambda metrics: request_ids.append(metrics.request_id))
        try:
            stream = livekit_tts.StreamAdapter(tts=tts).stream()
            for word in " ".join(sentences).split(" "):
                stream.push_text(word + " ")
            stream.end_input()
            frames = [event.frame async for event in stream]
            await stream.aclose()
            return frames
        finally:
            await tts.aclose()

    samples = livekit_samples(asyncio.run(run()))
    assert len(set(request_ids)) == len(request_ids) == len(sentences)
    assert all(request_id.startswith("req_") for request_id in request_ids)
    assert len(samples) >= len(sentences) * MAX_FRAMES * SAMPLES_PER_FRAME


def test_a_conversation_keeps_nothing_of_a_request_whose_client_left(agent_server):
    """The client leaves after the first frame: its unfinished utterance is not the next request's context, which
    says what a new conversation says."""
    body = {"voice": "alloy", "input": TEXT, "response_format": "pcm"}
    with httpx.stream("POST", f"{agent_server.url}/v1/audio/speech", headers=AUTH, timeout=120,
                      json={**body, "seed": 1, "conversation": "left"}) as response:
        next(response.iter_bytes())
    agent_server.wait_idle(timeout=30)
    continued = speech(agent_server, **body, seed=2, conversation="left").content
    assert continued == speech(agent_server, **body, seed=2, conversation="new").content
