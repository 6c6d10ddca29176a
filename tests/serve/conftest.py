"""A server for the voice agents' own clients, shared by the tests of HTTP (test_server.py) and of Wyoming
(test_wyoming.py): HTTP with a key and Wyoming on ephemeral loopback ports, the copy of the hub repository with its
voice prompts, utterances of at most 5 frames (--max-seconds 0.4), and two aliases given."""

import re
import socket
from collections.abc import Iterator

import pytest
from test_server import KEY, MAX_FRAMES, Server, start_server, stop_server


@pytest.fixture(scope="session")
def agent_server(tmp_path_factory, hub_copy_dir, mimi_file) -> Iterator[Server]:
    """`server.wyoming` is its Wyoming address, (host, port)."""
    model = ["--model", str(hub_copy_dir), "--codec", str(mimi_file), "--max-seconds", str(MAX_FRAMES * 0.08)]
    running = start_server(tmp_path_factory.mktemp("agent-server"), model, "--quiet", "--max-streams", "2",
                           "--api-key", KEY, "--wyoming-port", "0", "--voice-alias", "ash=1",
                           "--voice-alias", "narrator=conversational_b")
    host, port = re.search(r"serving Wyoming on tcp://(\S+):(\d+)", running.log.read_text()).groups()
    running.wyoming = (host, int(port))
    yield running
    with socket.create_connection(running.wyoming):  # an idle Wyoming client does not hold the server up
        log = stop_server(running)
    assert "Traceback" not in log, log
