"""The sound libraries' own messages stay off the terminal during `csm say`, and are counted."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
from test_cli import assert_one_line_error

STOPPED_S = 0.5  # longer than the sound server's buffer: the stream underruns and ALSA says so


def test_an_underrun_message_from_alsa_is_counted_not_printed(pulse_server, tmp_path, transformers_dir, mimi_file):
    out = tmp_path / "speech.wav"
    args = ["say", "One two three four five six seven eight nine ten.", "--out", str(out), "--stats", "--seed", "3",
            "--model", str(transformers_dir), "--codec", str(mimi_file), "--max-seconds", "2"]
    process = subprocess.Popen([sys.executable, "-m", "csm_cli", *args], env={**os.environ, **pulse_server.env},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    shown = ""  # status lines until playback has started (the --out file grows as generated, before it plays)
    playing = ("speaking", "draining")  # draining: all generated, playing the rest
    while not any(state in shown for state in playing) and (line := process.stderr.readline()):
        shown += line
    assert any(state in shown for state in playing), shown
    time.sleep(0.3)
    process.send_signal(signal.SIGSTOP)  # as a loaded machine does: the sound card's thread misses its turn
    time.sleep(STOPPED_S)
    process.send_signal(signal.SIGCONT)
    _, rest = process.communicate(timeout=60)
    stderr = shown + rest
    assert process.returncode == 0, stderr
    assert "ALSA" not in stderr and "underrun occurred" not in stderr, stderr
    stats = json.loads(stderr.strip().splitlines()[-1])
    messages = stats["playback"]["sound_library_messages"]
    assert messages >= 1
    summary = stderr.strip().splitlines()[-2]
    assert summary.startswith("first audio after ") and any(state in stderr for state in playing), stderr
    assert summary.endswith(f", {messages} sound-library messages kept off the terminal"), summary


def test_portaudio_messages_when_the_sound_server_dies_are_kept_off_the_terminal(pulse_server, tmp_path,
                                                                                 transformers_dir, mimi_file):
    """PulseAudio killed mid-playback: the one error line, not PortAudio's "Expression ... failed" lines before it."""
    args = ["say", "One two three four five six seven eight nine ten.", "--out", str(tmp_path / "speech.wav"),
            "--seed", "3", "--model", str(transformers_dir), "--codec", str(mimi_file), "--max-seconds", "2"]
    with pulse_server.record_monitor(tmp_path / "monitor.raw") as played:
        process = subprocess.Popen([sys.executable, "-m", "csm_cli", *args, "-q"],
                                   env={**os.environ, **pulse_server.env}, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not np.abs(played.samples()).max(initial=0) > 1e-4:
            assert time.monotonic() < deadline and process.poll() is None, "never played a sound"
            time.sleep(0.02)
        os.kill(pulse_server.pid, signal.SIGKILL)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 1, stderr
    assert_one_line_error(stderr, "output device")
