"""csm's cache folders: entries written whole, the least recently used removed beyond a bound, writers that die, a
cache that cannot be written; what identifies a model file without reading it; `csm download` filling the int8
weights, `csm cache` showing and clearing them."""

import os
import shutil
import time
from pathlib import Path

import pytest
import torch
from rich.filesize import decimal
from test_cli import model_args
from typer.testing import CliRunner

from csm_cli.cli import app
from csm_cli.errors import CsmWarning
from csm_cli.loading.cache import INT8_WEIGHTS, CacheFolder, cache_dir, file_identity

THINGS = CacheFolder("things", "things", ".bin", max_bytes=250)
runner = CliRunner()


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return cache_dir()


def put(key: str, size: int = 100) -> Path | None:
    return THINGS.write(key, lambda path: path.write_bytes(b"x" * size))


def test_an_entry_is_read_back_and_the_least_recently_used_go_beyond_the_bound():
    assert THINGS.read("a", Path.read_bytes, damaged=(OSError,)) is None
    put("a")
    put("b")
    old = time.time() - 60
    for key in ("a", "b"):
        os.utime(THINGS.path(key), (old, old))
    assert THINGS.read("a", Path.read_bytes, damaged=(OSError,)) == b"x" * 100  # a is used, b is not
    put("c")  # 300 bytes: b, the least recently used, goes
    assert [entry.path.name for entry in THINGS.entries()] == ["a.bin", "c.bin"]
    put("d", 400)  # over the bound alone: kept, every other one goes
    assert [entry.path.name for entry in THINGS.entries()] == ["d.bin"]


def test_a_writer_that_dies_leaves_no_entry_and_no_partial_file():
    def dies(path: Path) -> None:
        path.write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        THINGS.write("a", dies)
    assert list(THINGS.directory.iterdir()) == []
    # What a writer killed by SIGKILL leaves: its partial file goes once its process is gone.
    (THINGS.directory / f".{2**30}.b.bin").write_bytes(b"half")
    (THINGS.directory / f".{os.getpid()}.c.bin").write_bytes(b"being written")
    assert THINGS.entries() == []
    assert [path.name for path in THINGS.directory.iterdir()] == [f".{os.getpid()}.c.bin"]


def test_a_cache_that_cannot_be_written_is_a_warning(own_cache):
    def full_disk(path: Path) -> None:
        path.write_bytes(b"half")
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")  # torch.save's

    with pytest.warns(CsmWarning, match=r"cannot write the cached things to .* \(PytorchStreamWriter failed writing "
                                        r"file data/0: file write failed\): they are made again at each start"):
        assert THINGS.write("a", full_disk) is None
    assert list(THINGS.directory.iterdir()) == []
    shutil.rmtree(own_cache)
    own_cache.write_text("a file where the cache's directory would be")
    with pytest.warns(CsmWarning, match=r"cannot write the cached things to .* \(Not a directory\)"):
        assert put("a") is None


def test_a_hub_file_is_known_by_its_blob_and_a_local_file_by_what_a_rewrite_changes(tmp_path):
    sha256 = "a" * 64
    blob = tmp_path / "models--sesame--csm-1b" / "blobs" / sha256
    blob.parent.mkdir(parents=True)
    blob.write_bytes(b"weights")
    snapshot = tmp_path / "models--sesame--csm-1b" / "snapshots" / "0123" / "model.safetensors"
    snapshot.parent.mkdir(parents=True)
    snapshot.symlink_to(blob)
    assert file_identity(snapshot) == {"blob": sha256, "size": 7}
    os.utime(blob, (0, 0))
    assert file_identity(snapshot) == {"blob": sha256, "size": 7}

    local = tmp_path / "model.safetensors"
    local.write_bytes(b"weights")
    before = file_identity(local)
    assert before["path"] == str(local) and before["size"] == 7
    stat = local.stat()
    time.sleep(0.02)  # past the kernel's clock tick for file times
    local.write_bytes(b"WEIGHTS")  # rewritten in place, same size, times put back as `cp -p` does
    os.utime(local, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert file_identity(local) != before


# --- `csm download` quantizes for the CPU; `csm cache` shows and clears -----------------------------------------

def test_download_quantizes_for_the_cpu_and_csm_cache_shows_and_clears_it(transformers_dir, mimi_file):
    files = model_args(transformers_dir, mimi_file)
    skipped = runner.invoke(app, ["download", "--no-int8", "-q", *files])
    assert skipped.exit_code == 0, skipped.stderr
    assert "int8" not in skipped.stdout and INT8_WEIGHTS.entries() == []
    default = [] if not torch.cuda.is_available() else ["--int8"]  # what a machine without CUDA does by default
    result = runner.invoke(app, ["download", "-q", *default, *files])
    assert result.exit_code == 0, result.stderr
    [entry] = INT8_WEIGHTS.entries()
    assert f"int8 weights for the CPU: {entry.bytes:,} bytes in {entry.path}\n" in result.stdout

    shown = runner.invoke(app, ["cache"], terminal_width=200)
    assert shown.exit_code == 0, shown.stderr
    rows = {line.split("│")[1].strip(): [cell.strip() for cell in line.split("│")[2:-1]]
            for line in shown.stdout.splitlines() if line.count("│") == 5}
    assert rows["int8 weights (at most 6.4 GB)"][:2] == ["1", decimal(entry.bytes)]
    assert rows["voice codes"] == ["0", "0 bytes", ""]
    assert str(cache_dir()) in shown.stdout

    cleared = runner.invoke(app, ["cache", "--clear"])
    assert cleared.exit_code == 0, cleared.stderr
    assert cleared.stdout == f"removed 1 entry, {decimal(entry.bytes)}, from {cache_dir()}\n"
    assert INT8_WEIGHTS.entries() == []
