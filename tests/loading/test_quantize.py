"""Int8 weights on the CPU: the modes, their defaults and errors, the layers they replace, `csm say` with each, and a
prefill converted to 16-bit."""

import pytest
import torch
import torch.nn.functional as F
from test_bench import TINY
from test_cli import assert_one_line_error, assert_valid_speech, model_args
from typer.testing import CliRunner

from csm_cli.bench import random_model
from csm_cli.cli import app
from csm_cli.errors import CsmError
from csm_cli.generation.prompt import audio_rows
from csm_cli.loading.generator import resolve_precision
from csm_cli.loading.quantize import (
    DynamicInt8Linear,
    Int8Linear,
    Quantization,
    quantization_of,
    quantize,
    set_dequantized_rows,
)

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
runner = CliRunner()


def test_a_cpu_quantizes_to_int8_unless_a_dtype_is_given_and_cuda_does_not():
    assert resolve_precision(None, None, CPU) == (Quantization.INT8, torch.bfloat16)
    assert resolve_precision(None, "float32", CPU) == (Quantization.NONE, torch.float32)
    assert resolve_precision("int8-dynamic", None, CPU) == (Quantization.INT8_DYNAMIC, torch.float32)
    assert resolve_precision("int8", "bfloat16", CPU) == (Quantization.INT8, torch.bfloat16)
    assert resolve_precision(None, None, CUDA) == (Quantization.NONE, torch.bfloat16)


@pytest.mark.parametrize(("quantize", "dtype", "device", "message"), [
    ("int4", None, CPU, "unknown quantization 'int4' (choose from none, int8, int8-dynamic)"),
    ("int8", "float32", CPU, "--quantize int8 computes in bfloat16: leave --dtype out or give --dtype bfloat16"),
    ("int8-dynamic", "bfloat16", CPU, "--quantize int8-dynamic computes in float32"),
    ("int8", None, CUDA, "--quantize int8 runs on the CPU only: use --quantize none on cuda"),
])
def test_impossible_combinations_say_what_to_do(quantize, dtype, device, message):
    with pytest.raises(CsmError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve_precision(quantize, dtype, device)


@pytest.mark.parametrize(("mode", "layer"), [(Quantization.INT8, Int8Linear),
                                             (Quantization.INT8_DYNAMIC, DynamicInt8Linear)])
def test_every_transformer_linear_is_replaced_and_stays_close(mode, layer):
    dtype = torch.bfloat16 if mode is Quantization.INT8 else torch.float32
    reference = random_model(TINY, CPU, torch.float32)
    model = random_model(TINY, CPU, dtype, quantization=mode)
    assert quantization_of(reference) is Quantization.NONE and quantization_of(model) is mode
    for transformer in (model.backbone, model.decoder):
        assert not any(isinstance(m, torch.nn.Linear) for m in transformer.modules())
        assert sum(isinstance(m, layer) for m in transformer.modules()) == 4 * len(transformer.layers)
    x = torch.randn(3, TINY.backbone.dim)
    want = reference.backbone.layers[0].mlp.w13(x)
    got = model.backbone.layers[0].mlp.w13(x.to(dtype)).float()
    assert F.cosine_similarity(got, want, dim=-1).min() > 0.99


def test_quantize_none_leaves_the_model_alone():
    model = random_model(TINY, CPU, torch.float32)
    quantize(model, Quantization.NONE)
    assert quantization_of(model) is Quantization.NONE


@pytest.mark.parametrize("mode", ["int8", "int8-dynamic", "none"])
def test_say_speaks_with_each_mode(tmp_path, transformers_dir, mimi_file, mode):
    out = tmp_path / "speech.wav"
    result = runner.invoke(app, ["say", "Hello there.", "--quantize", mode, "--out", str(out), "--no-play", "--seed",
                                 "1", "--max-seconds", "0.5", *model_args(transformers_dir, mimi_file)])
    assert result.exit_code == 0, result.stderr
    assert_valid_speech(out)


def test_say_rejects_an_unknown_mode_before_loading(tmp_path, transformers_dir, mimi_file):
    result = runner.invoke(app, ["say", "Hi", "--quantize", "int3", "--out", str(tmp_path / "x.wav"), "--no-play",
                                 *model_args(transformers_dir, mimi_file)])
    assert result.exit_code == 1
    assert_one_line_error(result.stderr, "unknown quantization 'int3'")


def test_a_prefill_converted_to_16_bit_stays_within_the_int8_modes_accuracy():
    reference = random_model(TINY, CPU, torch.float32)
    model = random_model(TINY, CPU, torch.bfloat16, quantization=Quantization.INT8)
    tokens, mask = audio_rows(torch.randint(0, 2048, (32, 299), generator=torch.Generator().manual_seed(0)))
    want = reference.codebook0_head(reference.prefill(tokens, mask, 0, reference.backbone.new_caches(1), padded=False))
    logits = {}
    for rows in (None, 1):  # the int8 kernel, the weights converted at each call
        set_dequantized_rows(model, rows)
        last_h = model.prefill(tokens, mask, 0, model.backbone.new_caches(1), padded=False)
        logits[rows] = model.codebook0_head(last_h).float()
    assert F.cosine_similarity(logits[1], logits[None]).item() > 0.9999
    for got in logits.values():
        assert F.cosine_similarity(got, want).item() > 0.9999
