"""A real PulseAudio server with a 24 kHz float32 mono null sink, and a recorder of what was played to it.

conftest.py loads it as a plugin: ask for the ``pulse_server`` fixture. Needs the
system packages pulseaudio, pulseaudio-utils (pactl, parec), libasound2-plugins (ALSA's pulse device, through
which PortAudio plays) and libportaudio2. PortAudio lists the devices once, when it initialises, so the fixture
re-initialises it in this process after pointing the environment at the server, and again after the server is
gone. A subprocess inherits the environment, or takes ``PulseServer.env``.
"""

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

SINK = "testsink"
MONITOR = f"{SINK}.monitor"
PACKAGES = "libportaudio2 pulseaudio pulseaudio-utils libasound2-plugins"
READY_TIMEOUT_S = 5.0
POLL_S = 0.02

# The tests' sink: 24 kHz float32 mono as csm plays, without rewinds (which lose the first 10-35 ms of a stream that
# a recording checks). Tests of playback itself also use a null sink with PulseAudio's defaults (`indirect`
# parametrization of `pulse_server` with DEFAULT_SINK), which takes audio in bursts of up to 2 s while nothing records.
RECORDED_SINK = "rate=24000 channels=1 format=float32le norewinds=1"
DEFAULT_SINK = ""
_SERVER_SCRIPT = """\
load-module module-native-protocol-unix auth-anonymous=1 socket={socket}
load-module module-null-sink sink_name={sink} {options}
set-default-sink {sink}
set-default-source {sink}.monitor
"""


def aligned(recorded: np.ndarray, samples: np.ndarray) -> np.ndarray:
    """The stretch of the recording that lines up best with the signal (by cross-correlation)."""
    assert len(recorded) >= len(samples), (len(recorded), len(samples))
    size = len(recorded) + len(samples)
    correlation = np.fft.irfft(np.fft.rfft(recorded, size) * np.conj(np.fft.rfft(samples, size)), size)
    offset = int(np.argmax(correlation[: len(recorded) - len(samples) + 1]))
    return recorded[offset : offset + len(samples)]


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised correlation: 1.0 for the same waveform."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


@dataclass(frozen=True)
class Recording:
    path: Path  # raw float32le 24 kHz mono

    def samples(self) -> np.ndarray:
        return np.fromfile(self.path, dtype="<f4")


@dataclass(frozen=True)
class PulseServer:
    env: dict[str, str]  # PULSE_SERVER, XDG_RUNTIME_DIR, XDG_CONFIG_HOME and HOME, for clients
    pid: int
    log: Path

    @contextmanager
    def record_monitor(self, path: Path, settle_s: float = 0.3) -> Iterator[Recording]:
        """Records what the null sink plays (its monitor) with parec, from before the block runs until
        ``settle_s`` after it, as raw float32le 24 kHz mono."""
        with path.open("wb") as out:
            parec = subprocess.Popen(
                [
                    "parec",
                    f"--device={MONITOR}",
                    "--format=float32le",
                    "--rate=24000",
                    "--channels=1",
                    "--raw",
                    "--latency-msec=20",
                ],
                env={**os.environ, **self.env},
                stdout=out,
            )
        try:
            _wait_until(
                lambda: parec.poll() is not None or bool(_pactl(self.env, "list", "short", "source-outputs").stdout),
                "parec",
            )
            if parec.poll() is not None:
                pytest.fail(f"parec exited with status {parec.returncode}")
            yield Recording(path)
            time.sleep(settle_s)
        finally:
            parec.terminate()
            parec.wait(READY_TIMEOUT_S)


def reinit_portaudio() -> None:
    """Makes PortAudio in this process list the devices that the current environment offers."""
    import sounddevice

    sounddevice._terminate()
    sounddevice._initialize()


def _wait_until(ready: Callable[[], bool], what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not ready():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not ready after {READY_TIMEOUT_S} s" + (f":\n{log.read_text()}" if log else ""))
        time.sleep(POLL_S)


def _pactl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["pactl", *args], env={**os.environ, **env}, capture_output=True, text=True, check=False)


@pytest.fixture
def pulse_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PulseServer]:
    """A private PulseAudio whose default sink is the null sink ``testsink`` (RECORDED_SINK's options, or those of
    the test's indirect parameter); this process's environment points at it while the test runs. Fails (does not
    skip) when PulseAudio is not installed."""
    missing = [tool for tool in ("pulseaudio", "pactl", "parec") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: install the packages {PACKAGES}")
    root = tmp_path / "pulse"
    run, config, home = root / "run", root / "config", root / "home"
    for directory in (run, config, home):
        directory.mkdir(parents=True)
    script = root / "server.pa"
    options = getattr(request, "param", RECORDED_SINK)
    script.write_text(_SERVER_SCRIPT.format(socket=run / "native", sink=SINK, options=options))
    env = {
        "PULSE_SERVER": f"unix:{run / 'native'}",
        "XDG_RUNTIME_DIR": str(run),
        "XDG_CONFIG_HOME": str(config),
        "HOME": str(home),
    }
    log = root / "pulseaudio.log"
    with log.open("w") as log_file:
        daemon = subprocess.Popen(
            [
                "pulseaudio",
                "-n",
                "-F",
                str(script),
                "--daemonize=no",
                "--exit-idle-time=-1",
                "--use-pid-file=no",
                "--realtime=no",
                "--high-priority=no",
            ],
            env={**os.environ, **env},
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_until(lambda: daemon.poll() is not None or _pactl(env, "info").returncode == 0, "pulseaudio", log)
        if daemon.poll() is not None:
            pytest.fail(f"pulseaudio exited with status {daemon.returncode}:\n{log.read_text()}")
        with pytest.MonkeyPatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            reinit_portaudio()
            yield PulseServer(env=env, pid=daemon.pid, log=log)
    finally:
        daemon.terminate()
        daemon.wait(READY_TIMEOUT_S)
        reinit_portaudio()


@pytest.fixture
def no_sound_server(tmp_path: Path) -> Iterator[None]:
    """PortAudio in this process with PulseAudio pointed at a socket nobody listens on: no output device, unless
    the machine has a sound card that PortAudio reaches directly (then the test is skipped)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PULSE_SERVER", f"unix:{tmp_path / 'no-server'}")
        reinit_portaudio()
        import sounddevice

        if any(device["max_output_channels"] > 0 for device in sounddevice.query_devices()):
            pytest.skip("PortAudio reaches a sound card here without a sound server")
        yield
    reinit_portaudio()
