"""The published sesame/csm-1b repository (both layouts beside one config) from a local directory, from the Hugging
Face cache offline and through a loopback hub: one layout fetched, speech equal to the transformers reference."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from checkpoints import HUB_CONFIG_KEYS, HUB_FILES, ORIGINAL_FILES, TRANSFORMERS_FILES
from fake_hub import failing_hub, serving_hub
from reference import reference_speech
from test_cli import assert_one_line_error, put_in_hub_cache, run_csm

from csm_cli.errors import CsmError
from csm_cli.generation.prompt import Segment
from csm_cli.loading.config import Layout
from csm_cli.loading.generator import LoadOptions, load_generator
from csm_cli.loading.repository import load_local
from csm_cli.loading.voice import DEFAULT_VOICES, known_transcripts, load_voice_prompt

REPO_ID = "sesame/csm-1b"
TEXT = "Hello there."
FRAMES = 13  # 1.04 s: "Hello there." stays one utterance
SAY = ["say", TEXT, "--no-play", "--topk", "1", "--max-seconds", str(FRAMES / 12.5), "--quiet", "--quantize", "none"]
# What one layout needs: the original weights, the tokenizer and the voice prompts (and config.json, read first).
ORIGINAL_FETCH = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                  *(name for name in HUB_FILES if name.startswith("prompts/"))}


def run_in(args: list[str], env: dict[str, str], cwd: Path):
    """`csm ARGS` as a subprocess whose caches (voice codes) are under `cwd`."""
    return run_csm(args, {"XDG_CACHE_HOME": str(cwd / "cache"), **env}, cwd)


def files_of(directory: Path) -> set[str]:
    return {p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()}


def copy_without(source: Path, target: Path, left_out: set[str]) -> Path:
    for name in files_of(source) - left_out:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source / name, target / name)
    return target


def voice_prompt(generator, hub_copy_dir: Path, name: str, speaker: int) -> Segment:
    """A prompt of the hub copy as a segment with codes, encoded by the generator's Mimi."""
    audio = load_voice_prompt(hub_copy_dir / "prompts" / f"{name}.wav")
    return generator.encode_segment(Segment(speaker, known_transcripts()[name], audio=audio))


@pytest.fixture(scope="module")
def reference(generator, hf_model, hub_copy_dir) -> np.ndarray:
    """The reference's speech with the default voices: speaker 0 conversational_a, speaker 1 conversational_b."""
    voices = [voice_prompt(generator, hub_copy_dir, name, speaker) for speaker, name in DEFAULT_VOICES.items()]
    return reference_speech(generator, hf_model, TEXT, 0, FRAMES, voices)


def assert_reference_speech(path: Path, reference: np.ndarray) -> None:
    """The WAV holds whole frames of the reference's greedy speech, to 16-bit precision."""
    samples, _ = sf.read(path, dtype="float32")
    assert 1920 <= len(samples) <= len(reference) and len(samples) % 1920 == 0
    np.testing.assert_allclose(samples, np.clip(reference[: len(samples)], -1, 1), atol=1.5 / 32768)


def test_the_copy_holds_every_file_of_the_published_repository(hub_copy_dir):
    assert files_of(hub_copy_dir) == set(HUB_FILES)
    config = json.loads((hub_copy_dir / "config.json").read_text())
    assert set(config) >= HUB_CONFIG_KEYS
    assert (config["model_type"], config["backbone_flavor"], config["decoder_flavor"]) == ("csm", "llama-1B",
                                                                                          "llama-100M")
    index = json.loads((hub_copy_dir / config["transformers_weights"]).read_text())
    assert set(index["weight_map"].values()) == TRANSFORMERS_FILES - {config["transformers_weights"]}
    assert any(name.startswith("codec_model.") for name in index["weight_map"])


def test_a_config_of_both_layouts_loads_the_original_weights(hub_copy_dir):
    repository = load_local(hub_copy_dir)
    assert repository.layout is Layout.ORIGINAL
    assert repository.weights == [hub_copy_dir / "model.safetensors"]
    assert repository.has_tokenizer
    assert [p.stem for p in repository.voice_files] == sorted(p.split("/")[1][:-4] for p in HUB_FILES
                                                             if p.startswith("prompts/"))


def test_without_the_original_weights_the_transformers_shards_load(tmp_path, hub_copy_dir):
    repository = load_local(copy_without(hub_copy_dir, tmp_path, {"model.safetensors", "ckpt.pt"}))
    assert repository.layout is Layout.TRANSFORMERS
    assert [p.name for p in repository.weights] == sorted(TRANSFORMERS_FILES - {"transformers.safetensors.index.json"})


def test_a_missing_shard_is_named(tmp_path, hub_copy_dir):
    directory = copy_without(hub_copy_dir, tmp_path, {"model.safetensors", "transformers-00002-of-00002.safetensors"})
    with pytest.raises(CsmError, match=r"lacks transformers-00002-of-00002\.safetensors of its transformers weights"):
        load_local(directory)


def test_a_config_without_its_weights_says_what_it_expected(tmp_path, hub_copy_dir):
    directory = copy_without(hub_copy_dir, tmp_path, ORIGINAL_FILES | TRANSFORMERS_FILES)
    with pytest.raises(CsmError, match=r"no weights .* expected model\.safetensors or "
                                       r"transformers\.safetensors\.index\.json"):
        load_local(directory)


def test_a_local_copy_speaks_like_the_reference(tmp_path, hub_copy_dir, mimi_file, reference):
    out = tmp_path / "speech.wav"
    result = run_in([*SAY, "--out", str(out), "--model", str(hub_copy_dir), "--codec", str(mimi_file)], {}, tmp_path)
    assert result.returncode == 0, result.stderr
    assert_reference_speech(out, reference)


def test_the_transformers_shards_speak_like_the_reference(tmp_path, hub_copy_dir, mimi_file, reference):
    model_dir = copy_without(hub_copy_dir, tmp_path, ORIGINAL_FILES | {"ckpt.pt"})
    generator = load_generator(LoadOptions(str(model_dir), codec=mimi_file, device="cpu", quantize="none"))
    voices = [voice_prompt(generator, model_dir, name, speaker) for speaker, name in DEFAULT_VOICES.items()]
    speech = np.concatenate(list(generator.stream(TEXT, speaker=0, context=voices, topk=1,
                                                  max_seconds=FRAMES / 12.5)))
    np.testing.assert_allclose(speech, reference[: len(speech)], atol=1e-5)
    assert len(speech) == len(reference)


def mimi_repo(tmp_path: Path, mimi_file: Path) -> tuple[str, Path]:
    """moshi's Mimi repository, as a directory holding the (random) Mimi under its real name."""
    from moshi.models import loaders

    directory = tmp_path / "mimi-repo"
    directory.mkdir()
    shutil.copy(mimi_file, directory / loaders.MIMI_NAME)
    return loaders.DEFAULT_REPO, directory


def test_the_default_model_downloads_one_layout_from_the_hub(tmp_path, hub_copy_dir, mimi_file, reference):
    codec_repo, codec_dir = mimi_repo(tmp_path, mimi_file)
    env = {"HF_HUB_CACHE": str(tmp_path / "hub")}
    out = tmp_path / "speech.wav"
    with serving_hub({REPO_ID: hub_copy_dir, codec_repo: codec_dir}) as hub:
        result = run_in([*SAY, "--out", str(out)], {**env, "HF_ENDPOINT": hub.endpoint}, tmp_path)
    assert result.returncode == 0, result.stderr
    assert hub.downloaded(REPO_ID) == ORIGINAL_FETCH
    assert hub.downloaded(codec_repo) == files_of(codec_dir)
    assert_reference_speech(out, reference)


def test_download_fetches_one_layout_once_and_say_then_works_offline(tmp_path, hub_copy_dir, mimi_file, reference):
    codec_repo, codec_dir = mimi_repo(tmp_path, mimi_file)
    env = {"HF_HUB_CACHE": str(tmp_path / "hub")}
    with serving_hub({REPO_ID: hub_copy_dir, codec_repo: codec_dir}) as hub:
        result = run_in(["download"], {**env, "HF_ENDPOINT": hub.endpoint}, tmp_path)
        assert result.returncode == 0, result.stderr
        assert hub.downloaded(REPO_ID) == ORIGINAL_FETCH
        assert hub.downloaded(codec_repo) == files_of(codec_dir)
        size = sum((hub_copy_dir / name).stat().st_size for name in ORIGINAL_FETCH) + mimi_file.stat().st_size
        assert f"{REPO_ID}: original layout, {len(ORIGINAL_FETCH) + 1} files, {size:,} bytes" in result.stdout
        [int8] = [line for line in result.stdout.splitlines() if line.startswith("int8 weights for the CPU: ")]

        hub.requests.clear()
        again = run_in(["download"], {**env, "HF_ENDPOINT": hub.endpoint}, tmp_path)
        assert again.returncode == 0, again.stderr
        assert hub.downloaded(REPO_ID) == set() and hub.downloaded(codec_repo) == set()
        assert int8 in again.stdout.splitlines()  # the same entry, known by the files' blobs

    out = tmp_path / "speech.wav"
    result = run_in([*SAY, "--out", str(out)], {**env, "HF_HUB_OFFLINE": "1"}, tmp_path)
    assert result.returncode == 0, result.stderr
    assert_reference_speech(out, reference)


def test_a_model_without_tokenizer_takes_the_ungated_copy_of_llamas(tmp_path, hub_copy_dir, tokenizer_dir, mimi_file):
    model_dir = copy_without(hub_copy_dir, tmp_path / "model", {"tokenizer.json", "tokenizer_config.json"})
    with serving_hub({"someone/csm": model_dir, "unsloth/Llama-3.2-1B": tokenizer_dir}) as hub:
        result = run_in(["download", "--model", "someone/csm", "--codec", str(mimi_file)],
                        {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_ENDPOINT": hub.endpoint}, tmp_path)
    assert result.returncode == 0, result.stderr
    assert hub.downloaded("unsloth/Llama-3.2-1B") == {"tokenizer.json", "tokenizer_config.json"}


def test_the_gated_tokenizer_error_names_the_ungated_copy(tmp_path, hub_copy_dir, mimi_file):
    model_dir = copy_without(hub_copy_dir, tmp_path / "model", {"tokenizer.json", "tokenizer_config.json"})
    with failing_hub(401, "GatedRepo") as endpoint:
        result = run_in(["download", "--model", str(model_dir), "--codec", str(mimi_file),
                         "--tokenizer", "meta-llama/Llama-3.2-1B"],
                        {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_ENDPOINT": endpoint}, tmp_path)
    assert result.returncode == 1
    assert_one_line_error(result.stderr, "meta-llama/Llama-3.2-1B is gated: accept its terms at "
                                         "https://huggingface.co/meta-llama/Llama-3.2-1B, then log in with "
                                         "`hf auth login` or set HF_TOKEN, or use the ungated copy of its "
                                         "tokenizer: --tokenizer unsloth/Llama-3.2-1B")


def test_a_repository_without_config_on_the_hub(tmp_path, hub_copy_dir):
    model_dir = copy_without(hub_copy_dir, tmp_path / "model", {"config.json"})
    with serving_hub({"someone/not-csm": model_dir}) as hub:
        result = run_in([*SAY, "--out", str(tmp_path / "x.wav"), "--model", "someone/not-csm"],
                         {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_ENDPOINT": hub.endpoint}, tmp_path)
    assert result.returncode == 1
    assert_one_line_error(result.stderr, "someone/not-csm has no config.json")


def test_the_default_model_speaks_from_the_cache_offline(tmp_path, hub_copy_dir, mimi_file, reference):
    cache = tmp_path / "hub"
    put_in_hub_cache(cache, REPO_ID, [hub_copy_dir / name for name in ORIGINAL_FETCH], root=hub_copy_dir)
    codec_repo, codec_dir = mimi_repo(tmp_path, mimi_file)
    put_in_hub_cache(cache, codec_repo, list(codec_dir.iterdir()))
    out = tmp_path / "speech.wav"
    result = run_in([*SAY, "--out", str(out)], {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}, tmp_path)
    assert result.returncode == 0, result.stderr
    assert_reference_speech(out, reference)
