"""`csm bench` on the CPU with the tiny checkpoint, and the random-weights path with tiny shapes."""

import json
from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf
import torch
from checkpoints import BACKBONE, DECODER
from rich.console import Console
from terminal import run_on_terminal
from test_cli import assert_one_line_error, model_args
from typer.testing import CliRunner

from csm_cli.bench import (
    PREFILL_FORMS,
    RANDOM_WEIGHTS,
    BenchOptions,
    BenchReport,
    ConversationFigures,
    PathFigures,
    Percentiles,
    StreamsFigures,
    SyntheticTokenizer,
    load_random_weights,
    random_model,
    render_table,
    run_bench,
)
from csm_cli.cli import app
from csm_cli.cold_start import MIMI_FILE, random_repository
from csm_cli.generation.args import CsmArgs
from csm_cli.generation.engine import FrameEngine, Prompt
from csm_cli.loading.cache import VOICE_CODES, cache_dir
from csm_cli.loading.generator import LoadOptions
from csm_cli.loading.quantize import dequantized_rows
from csm_cli.loading.tokenizer import TextTokenizer
from csm_cli.loading.voice import DEFAULT_VOICES
from csm_cli.progress import LoadProgress

runner = CliRunner()
TINY = CsmArgs(backbone=BACKBONE, decoder=DECODER, text_vocab_size=512)
FIGURES = {"path", "warmup_s", "compile_s", "time_to_first_audio_ms", "steady_ms_per_frame", "mimi_ms_per_frame",
           "realtime_factor", "underruns"}
SETUP = {"device", "dtype", "quantization", "torch", "weights", "synthetic_tokens", "texts", "frames",
         "context_seconds", "load_s", "peak_gpu_memory_mib", "peak_rss_mib", "conversation", "streams", "prefill"}


def assert_sane_figures(figures: dict) -> None:
    assert set(figures) >= FIGURES
    assert figures["path"] == "eager"
    for name in ("warmup_s", "mimi_ms_per_frame", "realtime_factor"):
        assert isinstance(figures[name], float) and figures[name] > 0, name
    for name in ("time_to_first_audio_ms", "steady_ms_per_frame"):
        assert 0 < figures[name]["p50"] <= figures[name]["p95"], name
    assert figures["realtime_factor"] == pytest.approx(figures["steady_ms_per_frame"]["p50"] / 80)
    assert isinstance(figures["underruns"], int) and figures["underruns"] >= 0


def test_bench_json_has_every_figure(transformers_dir, mimi_file):
    result = runner.invoke(app, ["bench", "--frames", "20", "--prefill", "16,130", "--json", "-q",
                                 *model_args(transformers_dir, mimi_file)])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report) == SETUP | FIGURES | {"compare"}
    assert_sane_figures(report)
    assert report["device"].startswith("cpu") and (report["dtype"], report["quantization"]) == ("bfloat16", "int8")
    assert report["torch"] == torch.__version__ and report["weights"] == str(transformers_dir)
    assert (report["frames"], report["texts"], report["context_seconds"]) == (20, 3, 0.0)
    assert report["load_s"] > 0 and report["synthetic_tokens"] is False
    assert report["peak_gpu_memory_mib"] is None and report["compare"] is None and report["conversation"] is None
    assert report["streams"] is None
    assert report["peak_rss_mib"] > 100
    prefill = report["prefill"]
    assert prefill["rows"] == [16, 130] and list(prefill["ms_per_row"]) == list(PREFILL_FORMS)
    assert all(len(ms) == 2 and min(ms) > 0 for ms in prefill["ms_per_row"].values())
    assert prefill["dequantized_rows"] == dequantized_rows() and prefill["kept_copy_mib"] > 0


def test_bench_speaks_a_conversation_with_and_without_the_prefix_cache(transformers_dir, mimi_file):
    result = runner.invoke(app, ["bench", "--frames", "3", "--conversation", "3", "--context-seconds", "2",
                                 "--quantize", "none", "--json", "-q", *model_args(transformers_dir, mimi_file)])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["dtype"], report["quantization"]) == ("float32", "none")
    conversation = report["conversation"]
    assert (conversation["lines"], conversation["frames_per_line"]) == (3, 3)
    for name in ("whole_prefill_first_audio_ms", "prefix_cache_first_audio_ms"):
        assert len(conversation[name]) == 3 and all(ms > 0 for ms in conversation[name])


def test_bench_on_a_cpu_shows_no_gpu_fields_and_takes_context(transformers_dir, mimi_file):
    result = runner.invoke(app, ["bench", "--frames", "2", "--context-seconds", "1", "-q", "--threads", "1",
                                 *model_args(transformers_dir, mimi_file)], terminal_width=200)
    assert result.exit_code == 0, result.stderr
    for expected in ("cpu (1 threads)", "1 s of context", "warm-up ", "first audio p50 / p95", "eager"):
        assert expected in result.stdout, expected
    for gpu_only in ("GPU", "capture", "cuda-graphs", "eager / "):
        assert gpu_only not in result.stdout, gpu_only


@pytest.mark.parametrize("args", [["--compare", "eager"], ["--compare", "eager", "--eager"]])
def test_comparing_eager_with_eager_is_refused(transformers_dir, mimi_file, args):
    result = runner.invoke(app, ["bench", *args, "-q", *model_args(transformers_dir, mimi_file)])
    assert result.exit_code == 1
    assert_one_line_error(result.stderr, "every frame runs eagerly (on a CPU without --compile, or with --eager): "
                                         "leave --compare out")


def test_bench_shows_its_progress_on_a_terminal(transformers_dir, mimi_file):
    output = run_on_terminal(["bench", "--frames", "10", *model_args(transformers_dir, mimi_file)])
    assert "benchmarking eager: frames" in output
    assert "real-time factor" in output


@pytest.mark.parametrize(("args", "message"), [
    (["--frames", "1"], "--frames must be a whole number from 2 to 2048, got 1"),
    (["--frames", "100000"], "--frames must be a whole number from 2 to 2048, got 100000"),
    (["--context-seconds", "-1"], "--context-seconds must be a number from 0 to 163.84 seconds, got -1"),
    (["--context-seconds", "nan"], "--context-seconds must be a number from 0 to 163.84 seconds, got nan"),
    (["--context-seconds", "inf"], "--context-seconds must be a number from 0 to 163.84 seconds, got inf"),
    (["--model-device", "mps"], "--model-device mps is not supported"),
    (["--conversation", "-1"], "--conversation must be a whole number from 0 to 2048, got -1"),
    (["--streams", "65"], "--streams must be a whole number from 0 to 64, got 65"),
    (["--quantize", "int4"], "unknown quantization 'int4'"),
    (["--quantize", "int8", "--dtype", "float32"], "--quantize int8 computes in bfloat16"),
    (["--frames", "100", "--context-seconds", "160"], "lower --context-seconds or --frames"),
    (["--prefill", "64,x"], "--prefill takes whole numbers separated by commas (64,512), got '64,x'"),
    (["--prefill", "0"], "--prefill must be a whole number from 1 to 2048, got 0"),
    (["--prefill", "64", "--quantize", "none"], "--prefill times the forms of the int8 product"),
    (["--cold-start", "--streams", "2"], "--cold-start runs csm say in new processes, on its own"),
])
def test_bad_bench_options_are_one_line(transformers_dir, mimi_file, args, message):
    result = runner.invoke(app, ["bench", *args, "-q", *model_args(transformers_dir, mimi_file)])
    assert result.exit_code == 1
    assert_one_line_error(result.stderr, message)


def report_of_every_kind() -> BenchReport:
    """A report with CUDA graphs and eager, a conversation and batched streams."""
    def figures(path: str, scale: float) -> PathFigures:
        return PathFigures(path, 1.5, None, Percentiles(40 * scale, 50 * scale), Percentiles(4 * scale, 5 * scale), 1.0,
                           0.05 * scale, 0)

    return BenchReport("NVIDIA H100", "bfloat16", "none", "2.11.0", RANDOM_WEIGHTS, True, 3, 125, 20.0, 3.0, 5000.0,
                         900.0, figures("cuda-graphs", 1), figures("eager", 10), ConversationFigures(5, 25, [900.0],
                                                                                                      [80.0]),
                         StreamsFigures(4, 125, Percentiles(300.0, 520.0), Percentiles(120.0, 130.0), 33.3,
                                        Percentiles(100.0, 110.0), 10.0, 3.33))


def test_the_table_shows_both_paths_and_the_ratio():
    report = report_of_every_kind()
    console = Console(width=200, record=True)
    console.print(render_table(report))
    text = console.export_text()
    for expected in ("NVIDIA H100", "cuda-graphs", "eager / cuda-graphs", "10.0x", "40 / 50 ms", "4.0 / 5.0 ms",
                     "synthetic token ids", "5,000 MiB", "20 s of context", "line 5 of a conversation", "80 / 900 ms",
                     "4 streams started together", "300 / 520 ms", "120.0 / 130.0 ms", "33.3 / 10.0 (3.33x)"):
        assert expected in text, expected
    assert report.to_dict()["compare"]["speedup"] == {"time_to_first_audio": 10.0, "steady_ms_per_frame": 10.0}


def test_synthetic_token_ids_are_steady_and_as_many_as_a_real_tokenizer_gives():
    tokenizer = SyntheticTokenizer(128_256)
    text = "The quick brown fox jumps over the lazy dog while the morning sun climbs slowly above the quiet hills."
    ids = tokenizer.encode(0, text)
    assert ids == tokenizer.encode(0, text) != tokenizer.encode(1, text)
    assert 20 <= len(ids) <= 40 and all(0 <= i < 128_256 for i in ids)


def test_random_model_has_the_shapes_and_generates(generator):
    model = random_model(TINY, torch.device("cpu"), torch.float32)
    assert model.audio_head.shape == (31, DECODER.dim, 2051)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert 0.015 < model.audio_head.std() < 0.025 and bool((model.backbone.norm.weight == 1).all())
    tokens = torch.zeros(5, 33, dtype=torch.long)
    mask = torch.zeros(5, 33, dtype=torch.bool)
    mask[..., -1] = True
    engine = FrameEngine(model, generator.codec)
    engine.join("bench", Prompt(tokens, mask, 1, 50, 0.9, 0, stop_at_end=False))
    [delivery] = engine.step()
    assert delivery.frames[0].codes.shape == (32,) and delivery.ended


def test_random_weights_take_a_tokenizer_when_there_is_one(tokenizer_dir):
    generator = load_random_weights(TINY, LoadOptions(tokenizer=str(tokenizer_dir), device="cpu"),
                                    LoadProgress(enabled=False))
    assert isinstance(generator.tokenizer, TextTokenizer) and generator.engine.graphs is None


def test_random_weights_bench_with_synthetic_token_ids_and_batched_streams(tmp_path):
    generator = load_random_weights(TINY, LoadOptions(tokenizer=str(tmp_path / "no-tokenizer"), device="cpu"),
                                    LoadProgress(enabled=False))
    assert isinstance(generator.tokenizer, SyntheticTokenizer)
    report = run_bench(lambda: generator, RANDOM_WEIGHTS, BenchOptions(frames=2, streams=2),
                       LoadProgress(enabled=False))
    assert report.weights == RANDOM_WEIGHTS and report.synthetic_tokens
    assert report.figures.path == "eager" and np.isfinite(report.figures.realtime_factor)
    batched = report.streams
    assert (batched.streams, batched.frames) == (2, 2)
    assert 0 < batched.per_frame_ms.p50 <= batched.per_frame_ms.p95 and batched.single_frames_per_second > 0
    assert 0 < batched.first_audio_ms.p50 <= batched.first_audio_ms.p95
    assert batched.ratio == pytest.approx(batched.frames_per_second / batched.single_frames_per_second)
    assert report.to_dict()["streams"]["streams"] == 2


# --- --cold-start: csm say in new processes ------------------------------------------------------------------------

def test_cold_start_runs_say_twice_on_a_cache_of_its_own(transformers_dir, mimi_file):
    before = sorted(cache_dir().rglob("*"))
    result = runner.invoke(app, ["bench", "--cold-start", "--json", "-q", "--threads", "1",
                                 *model_args(transformers_dir, mimi_file)])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["weights"] == str(transformers_dir) and report["say"][-2:] == ["--threads", "1"]
    for run in (report["first"], report["second"]):
        assert 0 < run["launch_to_first_audio_s"] < run["process_s"]
    assert report["cache_bytes"] > 0  # the int8 weights the first run made
    assert sorted(cache_dir().rglob("*")) == before  # the user's cache is left alone


def test_the_repository_of_random_weights_is_the_published_layout_with_the_default_voices(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    progress = LoadProgress(enabled=False)
    repository = random_repository(progress, "tiny-backbone", "tiny-decoder", TINY.text_vocab_size, voice_seconds=0.5)
    assert {path.name for path in repository.iterdir()} == {"config.json", "model.safetensors", "tokenizer.json",
                                                            "tokenizer_config.json", "prompts", MIMI_FILE}
    written = (repository / "model.safetensors").stat().st_mtime_ns
    assert random_repository(progress, "tiny-backbone", "tiny-decoder", TINY.text_vocab_size, 0.5) == repository
    assert (repository / "model.safetensors").stat().st_mtime_ns == written  # written once
    out = tmp_path / "speech.wav"
    result = runner.invoke(app, ["say", "Hello there.", "--out", str(out), "--no-play", "--max-seconds", "0.24", "-q",
                                 *model_args(repository, repository / MIMI_FILE)])
    assert result.exit_code == 0, result.stderr
    assert sf.info(str(out)).frames == 3 * 1920
    assert len(list(VOICE_CODES.directory.iterdir())) == len(DEFAULT_VOICES)  # both voices spoke before


@pytest.mark.xdist_group("compiled")  # after test_compiled.py, on its worker
def test_bench_compile_reports_the_compile_apart_beside_eager(transformers_dir, mimi_file):
    """The compiled step's code comes from the session's cache, which test_compiled.py filled (seconds)."""
    result = runner.invoke(app, ["bench", "--compile", "--compare", "eager", "--frames", "2", "--json", "-q",
                                 *model_args(transformers_dir, mimi_file)])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["path"] == "compiled" and report["compile_s"] > 0, result.stderr
    eager = report["compare"]["eager"]
    assert eager["path"] == "eager" and eager["compile_s"] is None
    assert report["compare"]["speedup"]["steady_ms_per_frame"] > 0


def test_the_table_shows_the_compile_apart():
    report = report_of_every_kind()
    compiled = replace(report, figures=replace(report.figures, path="compiled", compile_s=58.4))
    console = Console(width=200, record=True)
    console.print(render_table(compiled))
    text = console.export_text()
    assert "compile of the frame step" in text and "58.4 s" in text and "eager / compiled" in text
