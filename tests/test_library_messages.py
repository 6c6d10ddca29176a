"""The sound libraries' own messages stay off the terminal during `csm say`, and are counted."""

import json
import os
import signal
import subprocess
import sys
import time

from csm_cli.audio import SAMPLE_RATE

STOPPED_S = 0.5  # longer than the sound server's buffer: the stream underruns and ALSA says so


def test_an_underrun_message_from_alsa_is_counted_not_printed(pulse_server, tmp_path, transformers_dir, mimi_file):
    out = tmp_path / "speech.wav"
    args = ["say", "One two three four five six seven eight nine ten.", "--out", str(out), "--stats", "--seed", "3",
            "--model", str(transformers_dir), "--codec", str(mimi_file), "--max-seconds", "4"]
    process = subprocess.Popen([sys.executable, "-m", "csm_cli", *args], env={**os.environ, **pulse_server.env},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180  # loading, on a shared machine
    while (not out.exists() or out.stat().st_size < 44 + 2 * SAMPLE_RATE) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert out.exists(), "playback never started"
    process.send_signal(signal.SIGSTOP)  # as a loaded machine does: the sound card's thread misses its turn
    time.sleep(STOPPED_S)
    process.send_signal(signal.SIGCONT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert "ALSA" not in stderr and "underrun occurred" not in stderr, stderr
    stats = json.loads(stderr.strip().splitlines()[-1])
    messages = stats["playback"]["sound_library_messages"]
    assert messages >= 1
    summary = stderr.strip().splitlines()[-2]
    assert summary.startswith("first audio after ") and "speaking" in stderr, stderr
    assert summary.endswith(f", {messages} sound-library messages kept off the terminal"), summary
