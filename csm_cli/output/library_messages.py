"""Messages that the sound libraries print on their own, kept off the terminal and counted.

ALSA, under PortAudio, writes lines such as ``ALSA lib pcm.c:8570:(snd_pcm_recover) underrun occurred`` straight to
stderr, into the status line. Once `keep_off_terminal` has run, they go to a handler that only counts them.
"""

import ctypes

# void (*snd_lib_error_handler_t)(const char *file, int line, const char *function, int err, const char *fmt, ...);
# the variadic arguments are left undeclared, and unread.
_AlsaErrorHandler = ctypes.CFUNCTYPE(
    None, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p
)

_count = 0
_handler = None  # referenced here for as long as ALSA may call it


def _count_alsa_message(file: bytes, line: int, function: bytes, err: int, fmt: bytes) -> None:
    global _count
    _count += 1


def keep_off_terminal() -> None:
    """Sends ALSA's messages to the counter from now on, in the whole process; without ALSA, nothing changes."""
    global _handler
    if _handler is not None:
        return
    try:
        alsa = ctypes.CDLL("libasound.so.2")
    except OSError:
        return
    _handler = _AlsaErrorHandler(_count_alsa_message)
    alsa.snd_lib_error_set_handler(_handler)


def count() -> int:
    """Messages kept off the terminal so far."""
    return _count
