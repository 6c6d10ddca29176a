"""What csm keeps between runs in the user's cache directory ($XDG_CACHE_HOME/csm, else ~/.cache/csm), a folder per
kind of entry (`FOLDERS`): a model's weights quantized for the CPU (`checkpoint.py`), the Mimi codes of voice
recordings (`voice.py`), the backbone's keys and values of voice prompts (`voice_rows.py`), the bench's repositories
of random weights (`cold_start.py`), torch.compile's code of the frame step (`use_compiled_cache`).

An entry is a file (or a directory) named by a key that changes with anything that would change what it holds, so
that a stale entry is never read. It is written whole under a hidden temporary name, then renamed: a reader finds all
of it or nothing, whenever a writer dies. Its modification time is when it was last used; a folder with a bound
removes its least recently used entries beyond it. An entry that cannot be read is removed with a warning and made
again; a cache that cannot be written costs the work again at the next start, with a warning.
"""

import atexit
import hashlib
import json
import os
import pickle
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from ..errors import CsmWarning, first_line

if TYPE_CHECKING:
    import torch

T = TypeVar("T")
# In huggingface_hub's cache a file is a link to a blob named by the hash of its content: an LFS file's sha256, a
# small file's git blob hash.
_HUB_BLOB = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_TEMPORARY = re.compile(r"\.(\d+)\.")  # .PID.KEY[SUFFIX], being written by process PID


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "csm"


def key_of(parts: object) -> str:
    """A short hash of `parts` (anything JSON writes), for an entry's name."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def source_hash(*names: str) -> str:
    """The hash of the package's source files `names` (paths from the package's root): the code that makes an entry,
    so that a change to it makes new entries."""
    package = Path(__file__).parents[1]
    return hashlib.sha256(b"".join((package / name).read_bytes() for name in names)).hexdigest()


def file_identity(path: Path) -> dict[str, object]:
    """What identifies a file's content without reading it. A file of huggingface_hub's cache: the hash its blob is
    named by. Any other file: its path, size, modification and change times, inode and device; whatever rewrites it
    changes its change time, which nothing can set back (a copy with `cp -p` or `rsync -t` keeps the modification
    time, not the change time)."""
    resolved = path.resolve()
    stat = resolved.stat()
    if resolved.parent.name == "blobs" and _HUB_BLOB.fullmatch(resolved.name):
        return {"blob": resolved.name, "size": stat.st_size}
    return {"path": str(resolved), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "ctime_ns": stat.st_ctime_ns,
            "inode": stat.st_ino, "device": stat.st_dev}


@dataclass(frozen=True)
class Entry:
    path: Path
    bytes: int
    last_used: datetime


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())
    return path.stat().st_size


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _writer_alive(temporary: Path) -> bool:
    match = _TEMPORARY.match(temporary.name)
    if match is None:
        return False
    try:
        os.kill(int(match[1]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


@dataclass(frozen=True)
class CacheFolder:
    """One kind of entry, in its folder of `cache_dir()`."""

    name: str  # the folder's
    title: str  # what the entries are, for messages and `csm cache`
    suffix: str  # of an entry's name
    max_bytes: int | None = None  # beyond it, the least recently used entries are removed

    @property
    def directory(self) -> Path:
        return cache_dir() / self.name

    def path(self, key: str) -> Path:
        return self.directory / f"{key}{self.suffix}"

    def read(self, key: str, load: Callable[[Path], T], damaged: tuple[type[Exception], ...]) -> T | None:
        """Entry `key` as `load` reads it, None if there is none. An entry `load` fails on with one of `damaged` is
        removed, with a warning; one that is read is marked as used."""
        path = self.path(key)
        if not path.exists():
            return None
        try:
            value = load(path)
        except damaged as e:
            warnings.warn(f"the cached {self.title} {path} are damaged ({first_line(e)}): they are made again",
                          CsmWarning, stacklevel=2)
            _remove(path)
            return None
        with suppress(OSError):
            os.utime(path)
        return value

    def write(self, key: str, save: Callable[[Path], None]) -> Path | None:
        """Entry `key`, which `save` writes to the path it is given (a file or a directory), renamed into place once
        whole; then the least recently used entries beyond the bound are removed, never this one. None, with a
        warning, if the cache cannot be written."""
        path = self.path(key)
        temporary = self.directory / f".{os.getpid()}.{path.name}"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            _remove(temporary)
            try:
                save(temporary)
                os.replace(temporary, path)
            finally:
                _remove(temporary)
        except (OSError, RuntimeError) as e:  # torch.save's failures (a full disk) are RuntimeErrors
            self.warn_unwritable(e)
            return None
        self.evict(keep=path)
        return path

    def warn_unwritable(self, error: Exception) -> None:
        reason = getattr(error, "strerror", None) or first_line(error)
        warnings.warn(f"cannot write the cached {self.title} to {self.directory} ({reason}): they are made again at "
                      "each start", CsmWarning, stacklevel=3)

    def entries(self) -> list[Entry]:
        """The entries, the least recently used first (temporary files of writers that died are removed)."""
        if not self.directory.is_dir():
            return []
        found = []
        for path in self.directory.iterdir():
            if path.name.startswith("."):
                if not _writer_alive(path):
                    _remove(path)
            elif path.name.endswith(self.suffix):
                with suppress(OSError):  # removed meanwhile
                    found.append(Entry(path, _size(path), datetime.fromtimestamp(path.stat().st_mtime)))
        return sorted(found, key=lambda entry: entry.last_used)

    def clear(self) -> list[Entry]:
        """Removes every entry; returns those removed."""
        removed = self.entries()
        for entry in removed:
            _remove(entry.path)
        return removed

    def evict(self, keep: Path) -> None:
        """Removes the least recently used entries beyond the bound, never `keep`."""
        if self.max_bytes is None:
            return
        entries = self.entries()
        total = sum(entry.bytes for entry in entries)
        for entry in entries:
            if total <= self.max_bytes:
                return
            if entry.path != keep:
                _remove(entry.path)
                total -= entry.bytes


# An entry of tensors that torch.load or `read_tensors`' checks fail on: truncated, another file, other tensors.
DAMAGED_TENSORS = (RuntimeError, OSError, ValueError, EOFError, pickle.UnpicklingError)


def read_tensors(path: Path, expected: dict[str, "torch.Tensor"]) -> dict[str, "torch.Tensor"]:
    """The tensors torch.save wrote to `path`, memory-mapped (pages are read as they are used; torch.save aligns each
    tensor to 64 bytes, as the int8 kernel needs), checked against the names, dtypes and shapes of `expected` (tensors
    of any device, meta included)."""
    import torch

    state = torch.load(path, mmap=True, weights_only=True, map_location="cpu")
    if not isinstance(state, dict) or state.keys() != expected.keys():
        names = sorted(state.keys() ^ expected.keys()) if isinstance(state, dict) else []
        raise ValueError(f"it holds other tensors than expected ({', '.join(names[:3])})")
    for name, tensor in expected.items():
        if (state[name].dtype, state[name].shape) != (tensor.dtype, tensor.shape):
            raise ValueError(f"{name} is {state[name].dtype} {list(state[name].shape)}, not {tensor.dtype} "
                             f"{list(tensor.shape)}")
    return state


# CSM-1B's int8 weights take 2.0 GB: three models' (or versions of csm's), and no more.
INT8_WEIGHTS = CacheFolder("int8-weights", "int8 weights", ".pt", max_bytes=6 * 2**30)
VOICE_CODES = CacheFolder("voice-codes", "voice codes", ".npy")  # 100 kB for 30 s
# The backbone's keys and values of voice prompts' rows: CSM-1B's two default voices (996 rows) take 65 MB in
# float32 (a CPU's), 33 MB in bfloat16; a model, mode and voice each, and no more than 1 GB of them.
VOICE_ROWS = CacheFolder("voice-rows", "prefilled voice rows", ".pt", max_bytes=2**30)
BENCH_MODELS = CacheFolder("bench-models", "bench models of random weights", "", max_bytes=0)  # the last one only
# torch.compile's caches (inductor's FX graphs and kernels, AOTAutograd's) of one model's weights each: the depth
# decoder's compiled code holds its weights, packed (CSM-1B: 115 MB a graph, one for a lone stream and one more for
# several); some eight models'.
COMPILED = CacheFolder("compiled", "compiled frame steps", "", max_bytes=2 * 2**30)
FOLDERS = (INT8_WEIGHTS, VOICE_CODES, VOICE_ROWS, BENCH_MODELS, COMPILED)


def use_compiled_cache(key: str) -> None:
    """Points torch.compile's caches at `COMPILED`'s entry `key` before anything compiles (inductor reads
    TORCHINDUCTOR_CACHE_DIR whenever it looks up or writes), marks it used and removes the least recently used
    others beyond the bound; where the cache cannot be written, at a temporary folder, with a warning."""
    entry = COMPILED.path(key)
    try:
        entry.mkdir(parents=True, exist_ok=True)
        os.utime(entry)
    except OSError as e:  # inductor needs a folder to build its code in: one of this process's, removed at exit
        COMPILED.warn_unwritable(e)
        entry = Path(tempfile.mkdtemp(prefix="csm-compiled-"))
        atexit.register(shutil.rmtree, entry, ignore_errors=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(entry)
    COMPILED.evict(keep=entry)
