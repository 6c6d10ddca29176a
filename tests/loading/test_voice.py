import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from reference import reference_speech
from typer.testing import CliRunner

from csm_cli.audio import SAMPLE_RATE
from csm_cli.cli import app
from csm_cli.errors import CsmError
from csm_cli.generation.prompt import Segment
from csm_cli.loading.cache import VOICE_CODES
from csm_cli.loading.voice import (
    Voice,
    choose_voices,
    known_transcripts,
    load_voice_prompt,
    model_voices,
)

TONE_HZ = 440.0


def _tone(rate: int, seconds: float = 1.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.float32)


def _peak_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum)) * rate / len(samples)


@pytest.mark.parametrize(
    ("name", "rate", "channels", "subtype"),
    [
        ("stereo.wav", 44_100, 2, "PCM_16"),
        ("mono.flac", 16_000, 1, "PCM_16"),
        ("vorbis.ogg", 48_000, 1, "VORBIS"),
        ("eight_bit.wav", 22_050, 1, "PCM_U8"),
        ("twenty_four_bit.wav", 8_000, 3, "PCM_24"),
    ],
)
def test_voice_prompt_is_24khz_mono_float32_of_the_same_duration_and_pitch(
    tmp_path: Path, name: str, rate: int, channels: int, subtype: str
) -> None:
    tone = _tone(rate)
    path = tmp_path / name
    sf.write(path, np.repeat(tone[:, None], channels, axis=1), rate, subtype=subtype)

    prompt = load_voice_prompt(path)

    assert prompt.dtype == np.float32
    assert prompt.ndim == 1
    assert abs(len(prompt) - len(tone) * SAMPLE_RATE / rate) <= 1
    assert abs(_peak_hz(prompt, SAMPLE_RATE) - TONE_HZ) <= 2
    assert 0.45 < np.abs(prompt).max() < 0.55


def test_voice_prompt_mixes_channels_to_their_mean(tmp_path: Path) -> None:
    tone = _tone(SAMPLE_RATE)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([tone, 0.5 * tone], axis=1), SAMPLE_RATE, subtype="FLOAT")

    np.testing.assert_allclose(load_voice_prompt(path), 0.75 * tone, atol=1e-7)


def _error(path: Path) -> str:
    with pytest.raises(CsmError) as error:
        load_voice_prompt(path)
    message = str(error.value)
    assert str(path) in message
    assert "\n" not in message
    return message


def test_missing_voice_prompt(tmp_path: Path) -> None:
    assert "does not exist" in _error(tmp_path / "nobody.wav")


def test_directory_as_voice_prompt(tmp_path: Path) -> None:
    assert "cannot read" in _error(tmp_path)


def test_undecodable_voice_prompt_names_the_supported_formats(tmp_path: Path) -> None:
    path = tmp_path / "notes.wav"
    path.write_text("not audio at all\n")
    message = _error(path)
    assert "cannot decode" in message
    assert all(name in message for name in ("WAV", "FLAC", "OGG"))


@pytest.mark.parametrize("samples", [np.zeros(SAMPLE_RATE), np.full(SAMPLE_RATE, 5e-5)])
def test_silent_voice_prompt(tmp_path: Path, samples: np.ndarray) -> None:
    path = tmp_path / "silence.wav"
    sf.write(path, samples, SAMPLE_RATE, subtype="FLOAT")
    assert "is silent" in _error(path)


def test_empty_voice_prompt(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0), SAMPLE_RATE)
    assert "is empty" in _error(path)


# --- the model's voices, chosen per speaker, their codes cached; through the CLI --------------------------------

FRAMES = 13
SAY = ["say", "Hello there.", "--no-play", "--topk", "1", "--max-seconds", str(FRAMES / 12.5), "--quiet"]
runner = CliRunner()


@pytest.fixture
def voice_codes(tmp_path, monkeypatch) -> Path:
    """The voice codes cache, under this test's own cache directory."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return VOICE_CODES.directory


def offered(hub_copy_dir: Path) -> dict[str, Voice]:
    return model_voices((hub_copy_dir / "prompts").glob("*.wav"))


def test_the_model_voices_have_the_known_transcripts(hub_copy_dir):
    voices = offered(hub_copy_dir)
    assert list(voices) == ["conversational_a", "conversational_b", "read_speech_a", "read_speech_b",
                            "read_speech_c", "read_speech_d"]
    assert voices["conversational_a"].text.startswith("like revising for an exam")
    assert voices["conversational_b"].text.startswith("like a super Mario level")
    assert all(voices[name].text is None for name in voices if name.startswith("read_speech"))


def test_the_default_voices_are_those_of_the_reference_demo(hub_copy_dir):
    voices = offered(hub_copy_dir)
    chosen = choose_voices(voices, None, None, speaker=3, has_context=False)
    assert [(speaker, voice.name) for speaker, voice in chosen] == [(0, "conversational_a"), (1, "conversational_b")]
    assert choose_voices(voices, None, None, speaker=0, has_context=True) == []
    assert choose_voices(voices, "none", None, speaker=0, has_context=False) == []
    assert choose_voices({}, None, None, speaker=0, has_context=False) == []


def test_a_voice_is_given_to_the_speaker(tmp_path, hub_copy_dir):
    voices = offered(hub_copy_dir)
    [(speaker, voice)] = choose_voices(voices, "read_speech_b", "Some words.", speaker=2, has_context=True)
    assert (speaker, voice.name, voice.text) == (2, "read_speech_b", "Some words.")
    recording = hub_copy_dir / "prompts" / "read_speech_c.wav"
    [(speaker, voice)] = choose_voices(voices, str(recording), " Mine. ", speaker=1, has_context=False)
    assert (speaker, voice.path, voice.text) == (1, recording, "Mine.")


@pytest.mark.parametrize(("voice", "text", "message"), [
    ("nobody", None, "unknown voice 'nobody': the model's voices are conversational_a, conversational_b, "
                     "read_speech_a, read_speech_b, read_speech_c, read_speech_d (see `csm voices`)"),
    ("read_speech_a", None, "no transcript is known for voice read_speech_a: give what is said in it with "
                            "--voice-text"),
    ("none", "words", "--voice none takes no --voice-text"),
    (None, "words", "--voice-text needs --voice"),
    ("prompts/conversational_a.wav", None, "needs --voice-text"),
    ("missing.wav", "words", "voice prompt missing.wav does not exist"),
])
def test_voice_choices_that_cannot_be_kept(hub_copy_dir, monkeypatch, voice, text, message):
    monkeypatch.chdir(hub_copy_dir)
    with pytest.raises(CsmError, match=re.escape(message)):
        choose_voices(offered(hub_copy_dir), voice, text, speaker=0, has_context=False)


def test_csm_voices_lists_what_the_model_offers(hub_copy_dir):
    result = runner.invoke(app, ["voices", "--model", str(hub_copy_dir)])
    assert result.exit_code == 0, result.stderr
    rows = {line.split()[1]: line for line in result.stdout.splitlines() if "_" in line and "│" in line}
    assert list(rows) == list(offered(hub_copy_dir))
    assert "known" in rows["conversational_a"] and "speaker 0" in rows["conversational_a"]
    assert "speaker 1" in rows["conversational_b"]
    assert "--voice-text" in rows["read_speech_a"] and "speaker" not in rows["read_speech_a"]
    assert " 0.6 " in rows["conversational_a"]


@pytest.mark.parametrize(("name", "content"), [
    ("read_speech_a", b"not audio at all"),
    ("conversational_b", b"RIFF\x00\x00\x00\x00WAVEfmt "),
    ("read_speech_d", None),  # a directory named .wav
])
def test_csm_voices_lists_the_others_and_marks_an_unreadable_one(tmp_path, hub_copy_dir, name, content):
    model = tmp_path / "model"
    shutil.copytree(hub_copy_dir, model, ignore=shutil.ignore_patterns("*.safetensors", "*.pt"))
    broken = model / "prompts" / f"{name}.wav"
    broken.unlink()
    if content is None:
        broken.mkdir()
    else:
        broken.write_bytes(content)
    result = runner.invoke(app, ["voices", "--model", str(model)])
    assert result.exit_code == 0, result.stderr
    assert result.stderr.strip() == ""
    rows = {line.split()[1]: line for line in result.stdout.splitlines() if "_" in line and "│" in line}
    assert list(rows) == list(offered(hub_copy_dir))
    assert f"unreadable: {name}.wav is not an audio file" in rows[name] and "speaker" not in rows[name]
    assert all("unreadable" not in row for voice, row in rows.items() if voice != name)


def test_an_unknown_voice_is_one_line_naming_the_voices(tmp_path, hub_copy_dir):
    result = runner.invoke(app, [*SAY, "--out", str(tmp_path / "x.wav"), "--voice", "nobody",
                                 "--model", str(hub_copy_dir)])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("csm: error: unknown voice 'nobody'"), result.stderr
    assert "conversational_a, conversational_b, read_speech_a" in lines[0]
    assert not (tmp_path / "x.wav").exists()


def _truncated_flac(path: Path) -> None:
    sf.write(path, _tone(SAMPLE_RATE), SAMPLE_RATE, format="FLAC")
    path.write_bytes(path.read_bytes()[:2000])


def _non_finite(value: float) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        samples = _tone(SAMPLE_RATE)
        samples[100] = value
        sf.write(path, samples, SAMPLE_RATE, subtype="FLOAT")
    return write


@pytest.mark.parametrize(("write", "message"), [
    (lambda path: sf.write(path, np.zeros(8_000 * 600, np.int16), 8_000, subtype="PCM_U8"),
     "lasts 600.0 s, longer than the model's whole window of 163.84 s"),
    (_non_finite(np.nan), "holds samples that are not numbers (NaN or infinite)"),
    (_non_finite(np.inf), "holds samples that are not numbers (NaN or infinite)"),
    (_truncated_flac, "cannot decode voice prompt"),
    (lambda path: path.write_text("not audio\n"), "cannot decode voice prompt"),
], ids=["ten-minutes", "nan", "inf", "truncated", "not-audio"])
@pytest.mark.parametrize("option", ["--voice", "--context"])
def test_a_voice_prompt_that_cannot_be_used_is_one_line_before_decoding_much(tmp_path, transformers_dir, monkeypatch,
                                                                              write, message, option):
    """Refused before the model loads; a prompt too long for the window from its header alone, never decoded."""
    path = tmp_path / "prompt.wav"
    write(path)
    if "lasts" in message:
        monkeypatch.setattr(sf, "read", lambda *args, **kwargs: pytest.fail("a prompt too long was decoded"))
    text = "--voice-text" if option == "--voice" else "--context-text"
    result = runner.invoke(app, [*SAY, "--out", str(tmp_path / "x.wav"), option, str(path), text, "Hi.",
                                 "--model", str(transformers_dir)])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("csm: error: "), result.stderr
    assert str(path) in lines[0] and message in lines[0], result.stderr


def say_to(out: Path, model_dir: Path, mimi_file: Path, *args: str) -> np.ndarray:
    """`csm say` in float32, to compare with the float32 reference."""
    result = runner.invoke(app, [*SAY, "--out", str(out), "--model", str(model_dir), "--codec", str(mimi_file),
                                 "--quantize", "none", *args])
    assert result.exit_code == 0, result.stderr
    return sf.read(out, dtype="float32")[0]


def assert_same_speech(samples: np.ndarray, reference: np.ndarray) -> None:
    assert len(samples) == len(reference)
    np.testing.assert_allclose(samples, np.clip(reference, -1, 1), atol=1.5 / 32768)


def test_voice_none_speaks_without_a_prompt(tmp_path, hub_copy_dir, mimi_file, generator, hf_model, voice_codes):
    samples = say_to(tmp_path / "none.wav", hub_copy_dir, mimi_file, "--voice", "none")
    assert_same_speech(samples, reference_speech(generator, hf_model, "Hello there.", 0, FRAMES))
    assert not voice_codes.exists()


def test_a_voice_by_name_is_encoded_once_then_read_from_the_cache(tmp_path, hub_copy_dir, mimi_file, generator,
                                                                  hf_model, voice_codes):
    first = say_to(tmp_path / "first.wav", hub_copy_dir, mimi_file, "--voice", "conversational_b")
    prompt = Segment(0, known_transcripts()["conversational_b"],
                     audio=load_voice_prompt(hub_copy_dir / "prompts" / "conversational_b.wav"))
    assert_same_speech(first, reference_speech(generator, hf_model, "Hello there.", 0, FRAMES,
                                               [generator.encode_segment(prompt)]))
    [cached] = voice_codes.iterdir()
    assert np.load(cached).shape == (32, 7)  # 0.5 s of prompt
    # What the next run reads if it reads the cache rather than encoding: other codes, 40 frames long.
    np.save(cached, np.random.default_rng(0).integers(0, 2048, size=(32, 40)))
    second = say_to(tmp_path / "second.wav", hub_copy_dir, mimi_file, "--voice", "conversational_b")
    assert not np.array_equal(first, second)
    assert list(voice_codes.iterdir()) == [cached]


def test_a_recording_of_ones_own_with_its_text(tmp_path, hub_copy_dir, mimi_file, voice_codes):
    recording = tmp_path / "me.flac"
    sf.write(recording, _tone(16_000), 16_000)
    samples = say_to(tmp_path / "mine.wav", hub_copy_dir, mimi_file, "--voice", str(recording),
                     "--voice-text", "A tone.")
    assert len(samples) == FRAMES * 1920
    assert len(list(voice_codes.iterdir())) == 1
def test_the_package_exports_the_loader_the_readme_shows(tmp_path, generator):
    import csm_cli

    path = tmp_path / "how-are-you.wav"
    sf.write(path, np.stack([_tone(44_100), _tone(44_100)], axis=1), 44_100)
    voice = csm_cli.load_voice_prompt(str(path))
    assert voice.dtype == np.float32 and voice.ndim == 1 and len(voice) == SAMPLE_RATE
    context = [csm_cli.Segment(speaker=1, text="How are you?", audio=voice)]
    chunk = next(iter(generator.stream("Hello there.", speaker=0, context=context, seed=1, max_seconds=0.5)))
    assert chunk.dtype == np.float32 and chunk.ndim == 1
