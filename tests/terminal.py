"""`csm` run on a pseudo-terminal, as a user at a terminal runs it."""

import os
import pty
import selectors
import subprocess
import sys
import time


def run_on_terminal(args: list[str], timeout: float = 300) -> str:
    """Runs `csm ARGS` with stdout and stderr on a pseudo-terminal and returns all it wrote there."""
    primary, secondary = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "csm_cli", *args], stdin=subprocess.DEVNULL,
                               stdout=secondary, stderr=secondary)
    os.close(secondary)
    output = bytearray()
    deadline = time.monotonic() + timeout
    selector = selectors.DefaultSelector()
    selector.register(primary, selectors.EVENT_READ)
    try:
        while selector.select(max(0.0, deadline - time.monotonic())):
            try:
                data = os.read(primary, 1 << 16)
            except OSError:  # EIO: every process holding the terminal has exited
                break
            if not data:
                break
            output += data
        assert process.wait(timeout=1) == 0, output.decode(errors="replace")
    finally:
        selector.close()
        process.kill()
        os.close(primary)
    return output.decode(errors="replace")
