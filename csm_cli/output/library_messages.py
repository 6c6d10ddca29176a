"""Messages that the sound libraries print on their own, kept off the terminal and counted.

ALSA, under PortAudio, writes lines such as ``ALSA lib pcm.c:8570:(snd_pcm_recover) underrun occurred`` straight to
stderr, into the status line; PortAudio writes ``Expression '...' failed in 'src/hostapi/alsa/pa_linux_alsa.c', line:
3665`` when the sound server dies under it, and JACK ``jack server is not running or cannot be started``. Once
`keep_off_terminal` has run, ALSA's go to a handler that only counts them, and C's `stderr` stream (where PortAudio
and JACK print; Python's own sys.stderr writes descriptor 2 itself) goes to a pipe whose lines a thread reads: the
sound libraries' are counted, any other is passed on to descriptor 2.
"""

import ctypes
import os
import re
import threading

# void (*snd_lib_error_handler_t)(const char *file, int line, const char *function, int err, const char *fmt, ...);
# the variadic arguments are left undeclared, and unread.
_AlsaErrorHandler = ctypes.CFUNCTYPE(
    None, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p
)
# PortAudio's, ALSA's and JACK's (PortAudio looks for a JACK server when it starts, and JACK says it found none)
_SOUND_LIBRARY_LINE = re.compile(
    rb"Expression '.*' failed in 'src/|ALSA lib |PaAlsa|PortAudio|[Jj]ack|Cannot connect to server")
_IOLBF = 1  # setvbuf's line buffering (glibc)

_count = 0
_handler = None  # referenced here for as long as ALSA may call it


def _count_alsa_message(file: bytes, line: int, function: bytes, err: int, fmt: bytes) -> None:
    global _count
    _count += 1


def keep_off_terminal() -> None:
    """Sends ALSA's messages to the counter from now on, and C's stderr stream through the filter, in the whole
    process; without ALSA or glibc, nothing changes."""
    global _handler
    if _handler is not None:
        return
    try:
        alsa = ctypes.CDLL("libasound.so.2")
    except OSError:
        return
    _handler = _AlsaErrorHandler(_count_alsa_message)
    alsa.snd_lib_error_set_handler(_handler)
    _filter_c_stderr()


def _filter_c_stderr() -> None:
    libc = ctypes.CDLL(None)
    try:
        stderr = ctypes.c_void_p.in_dll(libc, "stderr")
    except ValueError:  # not glibc's stdio
        return
    libc.fdopen.restype = ctypes.c_void_p
    libc.fdopen.argtypes = [ctypes.c_int, ctypes.c_char_p]
    libc.setvbuf.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_size_t]
    read_end, write_end = os.pipe()
    stream = libc.fdopen(write_end, b"w")
    if not stream:
        os.close(read_end)
        os.close(write_end)
        return
    libc.setvbuf(stream, None, _IOLBF, 0)
    threading.Thread(target=_pass_on_other_lines, args=(read_end,), name="csm-library-messages", daemon=True).start()
    stderr.value = stream  # the stream C code writes to from now on; the old one stays open, unused


def _pass_on_other_lines(read_end: int) -> None:
    """Counts the sound libraries' lines; writes any other to descriptor 2, as it would have gone."""
    global _count
    pending = b""
    while data := os.read(read_end, 1 << 16):
        *lines, pending = (pending + data).split(b"\n")
        for line in lines:
            if _SOUND_LIBRARY_LINE.search(line):
                _count += 1
            else:
                os.write(2, line + b"\n")


def count() -> int:
    """Messages kept off the terminal so far."""
    return _count
