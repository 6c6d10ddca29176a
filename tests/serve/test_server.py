"""`csm serve` through HTTP: a real uvicorn server in a subprocess on an ephemeral loopback port, called by the
official `openai` client, curl, httpx and a WebSocket client."""

import base64
import io
import json
import os
import re
import selectors
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import soundfile as sf
from test_cli import assert_one_line_error
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from csm_cli.audio import SAMPLE_RATE, SAMPLES_PER_FRAME

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
TEXT = "Hello there, how are you today?"
FRAME_BYTES = 2 * SAMPLES_PER_FRAME  # 16-bit PCM


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
    running = start_server(tmp_path_factory.mktemp("server"), model, "--max-streams", "2", "--api-key", KEY,
                           "--max-input-chars", "200", "--max-conversations", "1")
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
    assert list(voices) == ["conversational_a", "conversational_b", "0", "1"]  # read_speech_*: no transcript
    assert voices["conversational_b"]["speaker"] == 0 and voices["conversational_b"]["seconds"] == 0.5
    assert (voices["0"]["voice"], voices["1"]["voice"]) == ("conversational_a", "conversational_b")
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok", "streams": 0, "max_streams": 2,
                                                        "conversations": 0, "max_conversations": 1}


@pytest.mark.parametrize(("body", "param", "code"), [
    (b'{"input": "Hi.", "voice": ', None, "invalid_json"),
    (b'["Hi."]', None, "invalid_request"),
    (b'{"voice": "0"}', "input", "invalid_request"),
    (b'{"input": "Hi.", "voice": "alloy"}', "voice", "unknown_voice"),
    (b'{"input": "Hi.", "voice": "read_speech_a"}', "voice", "unknown_voice"),
    (b'{"input": "Hi.", "voice": "0", "conversation": ""}', "conversation", "invalid_request"),
    (b'{"input": "Hi.", "voice": "0", "response_format": "mp3"}', "response_format", "unsupported_format"),
    (b'{"input": "Hi.", "voice": "0", "stream_format": "chunks"}', "stream_format", "invalid_request"),
    (b'{"input": "Hi.", "voice": "0", "speed": 1.5}', "speed", "unsupported_speed"),
    (b'{"input": " ", "voice": "0"}', "input", "empty_input"),
    (json.dumps({"input": "word " * 50, "voice": "0"}).encode(), "input", "input_too_long"),
])
def test_bad_requests_are_answered_400_with_an_openai_error(server, body, param, code):
    response = httpx.post(f"{server.url}/v1/audio/speech", content=body, headers=AUTH, timeout=30)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")
    assert error["message"] and "Traceback" not in error["message"]
    if code == "input_too_long":
        assert "200" in error["message"] and "--max-input-chars" in error["message"]
    if code == "unknown_voice":
        assert "voices are conversational_a, conversational_b, or a speaker id (0, 1, ...)" in error["message"]


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
            chunks = response.iter_bytes()  # kept: an iterator dropped closes the response
            next(chunks)
            assert server.health()["streams"] == 1
        server.wait_idle(timeout=30)
        assert speech(server, input="Hi.", response_format="pcm").status_code == 200
    finally:
        log = stop_server(server)
    assert "Traceback" not in log, log


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


def test_binding_beyond_loopback_without_a_key_warns(tmp_path, model):
    running = start_server(tmp_path, model, "--host", "0.0.0.0", until="csm: warning: serving on 0.0.0.0")
    log = stop_server(running)
    assert "--api-key" in log


def test_a_taken_port_is_one_error_line(server, model):
    port = server.url.rsplit(":", 1)[1]
    done = subprocess.run([sys.executable, "-m", "csm_cli", "serve", "--port", port, *model], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.startswith("csm: error: cannot listen on 127.0.0.1:") and "Traceback" not in done.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--max-streams", "0"], "--max-streams must be at least 1, got 0"),
    (["--max-streams", "1000000000"], "the KV caches of 1000000000 streams take"),
    (["--max-input-chars", "0"], "--max-input-chars must be at least 1, got 0"),
    (["--max-conversations", "0"], "--max-conversations must be at least 1, got 0"),
    (["--port", "70000"], "--port must lie in 0..65535, got 70000"),
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
    with connect(ws_url(server), additional_headers=AUTH) as ws:
        for bad in ["{not json", json.dumps({"type": "speak"}), json.dumps({"type": "text", "text": "x" * 300})]:
            ws.send(bad)
            assert json.loads(ws.recv(timeout=60))["type"] == "error"
        ws.send(json.dumps({"type": "text", "text": "Fine."}))
        ws.send(json.dumps({"type": "flush"}))
        kinds = []
        while not kinds or kinds[-1] != "done":
            kinds.append(json.loads(ws.recv(timeout=120))["type"])
        assert "audio" in kinds


def test_a_websocket_without_the_key_is_refused(server):
    with connect(ws_url(server)) as ws:
        error = json.loads(ws.recv(timeout=30))
        assert error["type"] == "error" and error["error"]["code"] == "invalid_api_key"
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
