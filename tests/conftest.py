"""Session fixtures: tiny random checkpoints in both layouts, a tiny copy of the hub repository, a tiny tokenizer and a
random Mimi, built once."""

import signal
from pathlib import Path

import pytest
from checkpoints import (
    TINY_FLAVORS,
    build_transformers_model,
    save_hub_copy,
    save_original_layout,
    save_random_mimi,
    save_tokenizer,
    save_transformers_layout,
)

pytest_plugins = ["pulse"]


def pytest_configure(config: pytest.Config) -> None:
    """A run started in a shell's background (`make test &`), by nohup or by a runner may ignore the stop signals, and
    a process started ignoring a signal keeps ignoring it: the processes the tests stop get them as a user's do."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) == signal.SIG_IGN:
            signal.signal(signum, signal.SIG_DFL)


@pytest.fixture(scope="session", autouse=True)
def tiny_flavors():
    """The original layout names torchtune flavors; the tiny ones are known to in-process tests."""
    from csm_cli.loading import config

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(config, "FLAVORS", {**config.FLAVORS, **TINY_FLAVORS})
        yield


@pytest.fixture(scope="session", autouse=True)
def csm_cache(tmp_path_factory) -> Path:
    """csm's cache (int8 weights, voice codes) in a directory of the session's, never the user's; a test that needs
    an empty one sets XDG_CACHE_HOME itself."""
    directory = tmp_path_factory.mktemp("xdg-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(directory))
        yield directory


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("tokenizer")
    save_tokenizer(directory)
    return directory


@pytest.fixture(scope="session")
def hf_model(tokenizer_dir):
    """The transformers reference model with the tiny random weights every checkpoint here holds."""
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")).get_vocab_size()
    return build_transformers_model(vocab)


@pytest.fixture(scope="session")
def transformers_dir(tmp_path_factory, hf_model) -> Path:
    directory = tmp_path_factory.mktemp("csm-transformers")
    save_transformers_layout(hf_model, directory)
    return directory


@pytest.fixture(scope="session")
def original_dir(tmp_path_factory, hf_model) -> Path:
    directory = tmp_path_factory.mktemp("csm-original")
    save_original_layout(hf_model, directory)
    return directory


@pytest.fixture(scope="session")
def hub_copy_dir(tmp_path_factory, hf_model) -> Path:
    """The published sesame/csm-1b repository, file for file, with the weights of `hf_model`."""
    directory = tmp_path_factory.mktemp("csm-1b")
    save_hub_copy(hf_model, directory)
    return directory


@pytest.fixture(scope="session")
def mimi_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("mimi") / "mimi.safetensors"
    save_random_mimi(path)
    return path


@pytest.fixture(scope="session")
def generator(transformers_dir, mimi_file):
    from csm_cli.loading.generator import LoadOptions, load_generator

    return load_generator(LoadOptions(str(transformers_dir), codec=mimi_file, device="cpu", quantize="none"))
