"""`csm` run on a pseudo-terminal, as a user at a terminal runs it."""

import os
import pty
import subprocess
import sys
import time


def run_on_terminal(args: list[str], timeout: float = 120) -> str:
    """Runs `csm ARGS` with stdout and stderr on a pseudo-terminal and returns all it wrote there."""
    primary, secondary = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "csm_cli", *args], stdin=subprocess.DEVNULL,
                               stdout=secondary, stderr=secondary)
    os.close(secondary)
    output = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            try:
                data = os.read(primary, 1 << 16)
            except OSError:  # the terminal closed: every process holding it has exited
                break
            if not data:
                break
            output += data
        assert process.wait(timeout=max(0.0, deadline - time.monotonic())) == 0, output.decode(errors="replace")
    finally:
        process.kill()
        os.close(primary)
    return output.decode(errors="replace")
