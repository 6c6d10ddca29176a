"""A model repository: its config, the weight files of ONE layout, its tokenizer and its voice prompts, from a local
directory or from the Hugging Face hub through huggingface_hub's cache.

The published `sesame/csm-1b` holds both layouts beside one config.json (the original `model.safetensors` and the
transformers shards that `"transformers_weights"` names): the layout is chosen from the config and the file list
before any weight file is fetched, and only that layout's files are downloaded.
"""

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CsmError
from ..progress import LoadProgress
from .config import DEFAULT_TOKENIZER, CsmArgs, Layout, layouts, parse_config

CONFIG_FILE = "config.json"
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json"]
VOICES_DIR = "prompts"
DOWNLOAD_HINT = "run `csm download` once online"
# A hub that does not take a connection in this time is unreachable (a network that drops packets): the cache serves,
# or the error comes, instead of a wait without end. Answers still get huggingface_hub's HF_HUB_ETAG_TIMEOUT.
HUB_CONNECT_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class ModelRepository:
    """What `csm` uses of a model repository, as local files."""

    directory: Path
    layout: Layout
    args: CsmArgs
    weights: list[Path]  # safetensors files of `layout`, shards in order
    has_tokenizer: bool
    voice_files: list[Path]  # prompts/*.wav, by name

    @property
    def weights_bytes(self) -> int:
        return sum(file.stat().st_size for file in self.weights)

    @property
    def tokenizer_files(self) -> list[Path]:
        return [self.directory / name for name in TOKENIZER_FILES if (self.directory / name).is_file()]


@dataclass(frozen=True)
class ModelFiles:
    """Everything a generator is loaded from, as local files."""

    repository: ModelRepository
    tokenizer_dir: Path
    codec: Path

    @property
    def paths(self) -> list[Path]:
        tokenizer = [] if self.repository.has_tokenizer else [self.tokenizer_dir / name for name in TOKENIZER_FILES]
        r = self.repository
        return [r.directory / CONFIG_FILE, *r.weights, *r.tokenizer_files, *r.voice_files, *tokenizer, self.codec]


def fetch_model_files(model: str, tokenizer: str, codec: Path | None, progress: LoadProgress) -> ModelFiles:
    """The model's files (one layout), the tokenizer's if the model has none, and the codec, from local paths or
    the hub cache, downloading what the cache lacks. Cheap checks come first: the config before any weight."""
    from moshi.models import loaders

    repository = resolve_model(model, progress)
    tokenizer_dir = repository.directory if repository.has_tokenizer else resolve_repo(tokenizer, TOKENIZER_FILES,
                                                                                        progress)
    codec_path = codec or resolve_hub_file(loaders.DEFAULT_REPO, loaders.MIMI_NAME, progress)
    return ModelFiles(repository, tokenizer_dir, codec_path)


@contextmanager
def hub_errors(repo_id: str) -> Iterator[None]:
    """Turns huggingface_hub's failures into one line that says what to do."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    try:
        yield
    except GatedRepoError:
        raise CsmError(
            f"{repo_id} is gated: accept its terms at https://huggingface.co/{repo_id}, then log in with "
            "`hf auth login` or set HF_TOKEN" + _ungated_alternative(repo_id)
        ) from None
    except RepositoryNotFoundError:
        raise CsmError(
            f"{repo_id} is neither a local directory nor a model on the Hugging Face hub "
            "(if it is private, log in with `hf auth login` or set HF_TOKEN)"
        ) from None
    except HFValidationError:
        raise CsmError(f"{repo_id} is neither a local directory nor a valid hub id (owner/name)") from None
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the hub cannot be reached"
        raise CsmError(
            f"{why} and {repo_id} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}): "
            f"{DOWNLOAD_HINT}, or pass a local directory"
        ) from None
    except HfHubHTTPError as e:
        raise CsmError(f"downloading {repo_id} failed: {str(e).splitlines()[0]}") from None


def _ungated_alternative(repo_id: str) -> str:
    if repo_id.lower().startswith("meta-llama/llama-3.2"):
        return f", or use the ungated copy of its tokenizer: --tokenizer {DEFAULT_TOKENIZER}"
    return ""


def _looks_like_path(source: str) -> bool:
    return source.startswith(("/", ".", "~")) or source.count("/") > 1 or "\\" in source


def _local_directory(source: str) -> Path | None:
    """`source` as a local directory, None if it names a hub repository; a missing directory is an error."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if _looks_like_path(source):
        raise CsmError(f"directory {source} does not exist")
    return None


def resolve_repo(source: str, files: list[str], progress: LoadProgress) -> Path:
    """A local directory as is, or the snapshot of a hub repo holding those of `files` it has."""
    path = _local_directory(source)
    if path is not None:
        return path
    with hub_errors(source):
        return _fetch_snapshot(source, lambda names, fetch: [name for name in files if name in names], progress)


def resolve_hub_file(repo_id: str, filename: str, progress: LoadProgress) -> Path:
    with hub_errors(repo_id):
        return _fetch_snapshot(repo_id, lambda names, fetch: [filename], progress) / filename


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON file holding an object; a file that cannot be read or is damaged is a CsmError naming it."""
    try:
        content = json.loads(path.read_bytes())
    except OSError as e:
        raise CsmError(f"cannot read {path} ({e.strerror})") from None
    except ValueError as e:  # JSONDecodeError, or bytes that are not text
        raise CsmError(f"{path} is not valid JSON ({e}): copy or download it again") from None
    if not isinstance(content, dict):
        raise CsmError(f"{path} is not a JSON object: copy or download it again")
    return content


def read_config(model_dir: Path) -> dict[str, Any]:
    config_file = model_dir / CONFIG_FILE
    if not config_file.is_file():
        raise CsmError(f"{model_dir} has no config.json: it is not a CSM checkpoint")
    return read_json_object(config_file)


def choose_weights(config: dict[str, Any], has_file: Callable[[str], bool]) -> tuple[Layout, str]:
    """The layout to load and its weights entry (one safetensors file, or an index naming shards), from the config
    and which files the repository holds: the config's preferred layout whose weights are there."""
    for layout in layouts(config):
        for name in _weights_entries(config, layout):
            if has_file(name):
                return layout, name
    expected = " or ".join(name for layout in layouts(config) for name in _weights_entries(config, layout))
    raise CsmError(f"the repository has no weights for its config.json: expected {expected}")


def _weights_entries(config: dict[str, Any], layout: Layout) -> list[str]:
    if layout is Layout.ORIGINAL:
        return ["model.safetensors"]
    named = config.get("transformers_weights")  # transformers loads this file instead of model.safetensors
    if named is not None:
        if not isinstance(named, str) or not named.endswith((".safetensors", ".safetensors.index.json")):
            raise CsmError(f"config.json names transformers_weights {named!r}: not a safetensors file or index")
        return [named]
    return ["model.safetensors.index.json", "model.safetensors"]


def _shards(index_file: Path) -> list[str]:
    """The shard names an index's weight_map points to, in order."""
    try:
        weight_map = read_json_object(index_file)["weight_map"]
        return sorted(set(weight_map.values()))
    except (KeyError, TypeError, AttributeError) as e:
        raise CsmError(f"{index_file} is not a safetensors index ({e!r})") from None


def load_local(directory: Path, missing_hint: str = "copy the missing files into it") -> ModelRepository:
    """A model repository already on disk: a directory of the user's, or a snapshot in the hub cache."""
    config = read_config(directory)
    args = parse_config(config)
    layout, entry = choose_weights(config, lambda name: (directory / name).is_file())
    names = _shards(directory / entry) if entry.endswith(".index.json") else [entry]
    weights = [directory / name for name in names]
    missing = [name for name, path in zip(names, weights, strict=True) if not path.is_file()]
    if missing:
        raise CsmError(f"{directory} lacks {', '.join(missing)} of its {layout.value} weights: {missing_hint}")
    voice_files = sorted((directory / VOICES_DIR).glob("*.wav"))
    return ModelRepository(directory, layout, args, weights, (directory / TOKENIZER_FILES[0]).is_file(), voice_files)


def resolve_model(source: str, progress: LoadProgress) -> ModelRepository:
    """A local directory, or a hub repository with one layout's weights, its tokenizer and its voice prompts
    fetched into the cache (what is there already is not fetched again)."""
    path = _local_directory(source)
    if path is not None:
        return load_local(path)
    with hub_errors(source):
        return load_local(_fetch_snapshot(source, _model_files(source), progress), missing_hint=DOWNLOAD_HINT)


def resolve_voice_files(source: str, progress: LoadProgress) -> list[Path]:
    """The voice prompts (prompts/*.wav) of a local or hub model repository, without its weights."""
    path = _local_directory(source)
    if path is None:
        with hub_errors(source):
            path = _fetch_snapshot(source, lambda names, fetch: _voice_names(names), progress)
    voices_dir = path / VOICES_DIR
    return sorted(voices_dir.glob("*.wav")) if voices_dir.is_dir() else []


def _voice_names(names: set[str]) -> list[str]:
    return sorted(name for name in names if name.startswith(f"{VOICES_DIR}/") and name.endswith(".wav"))


# Picks the files to have from a repository's file names; it may fetch small files (by name) to decide.
Chooser = Callable[[set[str], Callable[[str], Path]], list[str]]


def _model_files(repo_id: str) -> Chooser:
    """config.json, then the weights of the layout it and the file list choose, the tokenizer and the voices."""

    def choose(names: set[str], fetch: Callable[[str], Path]) -> list[str]:
        if CONFIG_FILE not in names:
            raise CsmError(f"{repo_id} has no config.json: it is not a CSM checkpoint")
        _, entry = choose_weights(read_config(fetch(CONFIG_FILE).parent), names.__contains__)
        weights = _shards(fetch(entry)) if entry.endswith(".index.json") else [entry]
        return [CONFIG_FILE, *weights, *(name for name in TOKENIZER_FILES if name in names), *_voice_names(names)]

    return choose


def _fetch_snapshot(repo_id: str, choose: Chooser, progress: LoadProgress) -> Path:
    """The cache's snapshot of `repo_id` with the files `choose` picks. Online, the files the cache lacks are
    downloaded under one bar of their total size; offline, or when the hub cannot be reached or refuses, the cached
    snapshot serves if it holds them."""
    from httpx2 import HTTPError, Timeout
    from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    timeout = Timeout(constants.HF_HUB_ETAG_TIMEOUT, connect=HUB_CONNECT_TIMEOUT_S)
    try:
        info = HfApi().model_info(repo_id, files_metadata=True, timeout=timeout)
    except (OfflineModeIsEnabled, HTTPError, HfHubHTTPError) as error:
        return _cached_snapshot(repo_id, choose, error)
    sizes = {sibling.rfilename: sibling.size or 0 for sibling in info.siblings or []}
    wanted = choose(set(sizes), lambda name: Path(hf_hub_download(repo_id, name)))
    _download(repo_id, info.sha, {name: sizes.get(name, 0) for name in wanted}, progress)
    return Path(snapshot_download(repo_id, revision=info.sha, local_files_only=True))


def _cached_snapshot(repo_id: str, choose: Chooser, error: Exception) -> Path:
    """The cached snapshot when the hub cannot be asked; the hub's refusal stands if nothing is cached."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        snapshot = Path(snapshot_download(repo_id, local_files_only=True))
    except LocalEntryNotFoundError:
        if isinstance(error, HfHubHTTPError):
            raise error from None
        raise
    local = {p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()}
    missing = [name for name in choose(local, snapshot.joinpath) if name not in local]
    if missing:
        raise CsmError(f"{repo_id} is only partly in the Hugging Face cache (no {', '.join(missing)}): {DOWNLOAD_HINT}")
    return snapshot


def _download(repo_id: str, commit: str | None, sizes: dict[str, int], progress: LoadProgress) -> None:
    """Fetches the files of `sizes` that the cache lacks at `commit`, under one bar of their total bytes."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    missing = [name for name in sizes
               if not isinstance(try_to_load_from_cache(repo_id, name, revision=commit), str)]
    if not missing:
        return
    with progress.download_task(f"downloading {repo_id}", sum(sizes[name] for name in missing)) as tqdm_class:
        for name in missing:
            hf_hub_download(repo_id, name, tqdm_class=tqdm_class)
