"""The frame step compiled by torch.compile on the CPU (`--compile`): its logits within the int8 mode's accuracy of the
eager step's, `csm say --compile` speaking into a valid file with its code in csm's cache, and a failed compile a
one-line warning with the step run eagerly."""

import contextlib
import copy
import io
import warnings
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from test_cli import assert_valid_speech, model_args
from typer.testing import CliRunner

from csm_cli.cli import app
from csm_cli.errors import CsmError
from csm_cli.generation.compiled import weights_key
from csm_cli.generation.engine import FrameEngine, Prompt
from csm_cli.generation.generator import StreamingGenerator
from csm_cli.loading.cache import COMPILED
from csm_cli.loading.generator import LoadOptions, load_generator
from csm_cli.threads import MODEL_THREAD

runner = CliRunner()


# this file's compiles and test_bench's share the session's cache on one worker (`make test`: --dist loadgroup)
pytestmark = pytest.mark.xdist_group("compiled")


@dataclass
class Compiled:
    generator: StreamingGenerator
    stderr: str  # what the compile wrote to sys.stderr
    warnings: list[str]  # and the warnings it gave that Python shows by default (not deprecations)


@pytest.fixture(scope="module")
def compiled(transformers_dir, mimi_file) -> Compiled:
    """The tiny model in int8 with its step compiled: a cold compile in the session's cache (tens of seconds: the
    decoder's products are autotuned), which this file's tests run first."""
    written = io.StringIO()
    # sys.stderr and the warnings filters are the process's, not a thread's: the model thread compiles
    with contextlib.redirect_stderr(written), warnings.catch_warnings(record=True) as given:
        warnings.simplefilter("always")
        generator = load_generator(LoadOptions(str(transformers_dir), codec=mimi_file, device="cpu", quantize="int8",
                                               compile=True))
    shown = [str(warning.message) for warning in given if not issubclass(warning.category, DeprecationWarning)]
    return Compiled(generator, written.getvalue(), shown)


class Recorder:
    """A sampler that records each codebook's logits and draws the codes it is given (teacher forcing), or the best
    ones when given none."""

    def __init__(self, codes: torch.Tensor | None = None) -> None:
        self.codes = codes
        self.logits: list[torch.Tensor] = []

    def __call__(self, codebook: int, logits: torch.Tensor) -> torch.Tensor:
        self.logits.append(logits.float())
        return logits.argmax(-1, keepdim=True) if self.codes is None else self.codes[:, codebook : codebook + 1]


def test_the_compiled_decoder_gives_the_eager_logits_within_the_int8_modes_accuracy(compiled):
    """The compiled depth decoder against the eager one on the same state, two frames in a row: every codebook's
    logits (teacher-forced with the eager codes), cosine >= 0.999 (the int8 mode itself is 0.997 from float32)."""
    generator = compiled.generator
    engine, model = generator.engine, generator.model
    assert engine.compile_s is not None and engine.compile_s > 0
    assert "autotune" not in compiled.stderr.lower(), compiled.stderr  # inductor prints its timings unless told
    assert not compiled.warnings
    eager = FrameEngine(model, generator.codec, 1)
    tokens, mask = generator.prompt_rows("I am fine, thank you.", 0, [])
    eager.join("a", Prompt(tokens, mask, 4, 1, 1.0, 1, False))
    with torch.inference_mode():
        for _ in range(2):
            eager.step()  # a frame sampled and fed back through the backbone
            decoder_caches = eager._bucket_caches[1][1]
            last_h = eager.last_h[:1].clone()
            want = Recorder()
            codes = model.frame_codes(last_h, decoder_caches, want)
            got = Recorder(codes)
            model.frame_codes(last_h, decoder_caches, got, engine.decoder_hidden)
            for codebook, (a, b) in enumerate(zip(got.logits, want.logits, strict=True)):
                assert F.cosine_similarity(a, b).item() >= 0.999, codebook


def test_say_compile_speaks_into_a_valid_file_with_its_code_cached(tmp_path, transformers_dir, mimi_file, compiled):
    """In the session's cache, which the fixture's compile filled: the compiled code is the entry of the model's
    weights, which csm cache lists."""
    out = tmp_path / "speech.wav"
    result = runner.invoke(app, ["say", "Hello there.", "--compile", "--out", str(out), "--no-play", "--seed", "1",
                                 "--max-seconds", "0.5", *model_args(transformers_dir, mimi_file)])
    assert result.exit_code == 0, result.stderr
    assert "warning" not in result.stderr
    assert_valid_speech(out)
    assert weights_key(compiled.generator.model) in [entry.path.name for entry in COMPILED.entries()]
    listed = runner.invoke(app, ["cache"])
    assert "compiled frame steps" in listed.stdout


def test_the_compiled_codes_entry_is_the_decoders_weights(compiled):
    """The frozen decoder's code holds its weights, which torch's caches do not key: the entry's key changes with any
    of them and only with them, so that another model's code is never read."""
    model = compiled.generator.model
    key = weights_key(model)
    changes = {"backbone": lambda m: m.backbone.layers[0].mlp.w2, "decoder": lambda m: m.decoder.layers[-1].mlp.w2,
               "projection": lambda m: m.projection}
    for part, layer in changes.items():
        other = copy.deepcopy(model)
        with torch.no_grad():
            layer(other).scales[0] += 1
        assert (weights_key(other) == key) == (part == "backbone"), part  # the backbone is not frozen


def test_without_a_compiler_the_step_runs_eagerly_after_one_warning(tmp_path, transformers_dir, mimi_file,
                                                                    monkeypatch):
    """A cache of its own (no compiled code to reuse) and no C++ compiler: inductor cannot build the step's code."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)  # the load points it at the cache above: restored
    out = tmp_path / "speech.wav"
    no_compiler = torch._inductor.config.patch({"cpp.cxx": (None, str(tmp_path / "no-such-g++"))})
    MODEL_THREAD.call(no_compiler.__enter__)  # inductor's settings are the thread's: the model thread compiles
    try:
        result = runner.invoke(app, ["say", "Hello there.", "--compile", "--out", str(out), "--no-play", "--seed",
                                     "1", "--max-seconds", "0.5", "--quantize", "none",
                                     *model_args(transformers_dir, mimi_file)])
    finally:
        MODEL_THREAD.call(no_compiler.__exit__, None, None, None)
    assert result.exit_code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and warnings[0].startswith("csm: warning: compiling the frame step failed ("), warnings
    assert warnings[0].endswith("): it runs eagerly")
    assert_valid_speech(out)


def test_where_the_cache_cannot_be_written_the_step_compiles_after_one_warning(tmp_path, transformers_dir, mimi_file,
                                                                             monkeypatch):
    """csm's cache is a file, not a folder: inductor builds the step's code in a folder of the process's, removed at
    exit, and says nothing more."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    (tmp_path / "csm").write_text("not a folder")
    out = tmp_path / "speech.wav"
    result = runner.invoke(app, ["say", "Hello there.", "--compile", "--out", str(out), "--no-play", "--seed", "1",
                                 "--max-seconds", "0.5", "--quantize", "none",
                                 *model_args(transformers_dir, mimi_file)])
    assert result.exit_code == 0, result.stderr
    warned = [line for line in result.stderr.splitlines() if "warning" in line]
    assert any(line.startswith("csm: warning: cannot write the cached compiled frame steps to ") for line in warned)
    assert not [line for line in warned if "compiling" in line], warned
    assert_valid_speech(out)


def test_compile_on_cuda_is_refused_before_loading():
    with pytest.raises(CsmError, match="--compile compiles the frame step on a CPU; on CUDA it replays as CUDA graphs"):
        StreamingGenerator.check_compiled(torch.device("cuda"), True)
