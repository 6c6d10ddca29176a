import numpy as np
import pytest
import torch

from csm_cli.audio import SAMPLES_PER_FRAME
from csm_cli.errors import CsmError
from csm_cli.generation.codec import Codec


@pytest.fixture(scope="module")
def codec(generator) -> Codec:
    return generator.codec


def decode_alone(codec: Codec, codes: torch.Tensor) -> np.ndarray:
    """Codes [C, T] decoded frame by frame on a decoder of one row."""
    decoder = codec.decoder(1)
    with torch.inference_mode(), decoder.bound():
        return np.concatenate([decoder.decode(codes[None, :, i], torch.ones(1, dtype=torch.bool))[0].numpy()
                               for i in range(codes.shape[1])])


def test_streamed_decode_equals_whole_sequence_decode(codec):
    codes = torch.randint(0, 2048, (32, 10), generator=torch.Generator().manual_seed(0))
    whole = codec.decode(codes)
    streamed = decode_alone(codec, codes)
    assert whole.shape == streamed.shape == (10 * SAMPLES_PER_FRAME,)
    np.testing.assert_allclose(streamed, whole, atol=1e-5)


def test_streams_decoded_together_each_continue_their_own_state(codec):
    """Three streams on the rows of one decoder, starting at different steps (a row reset when its stream starts,
    and only the rows advancing advanced) decode as each does alone, up to float rounding; a whole decode beside
    them is not disturbed."""
    generator = torch.Generator().manual_seed(1)
    codes = [torch.randint(0, 2048, (32, 4), generator=generator) for _ in range(3)]
    starts = [0, 2, 1]
    alone = [decode_alone(codec, stream) for stream in codes]
    decoder = codec.decoder(3)
    decoded: list[list[np.ndarray]] = [[], [], []]
    for step in range(6):
        rows = [row for row, start in enumerate(starts) if start <= step < start + 4]
        frame = torch.zeros(3, 32, dtype=torch.long)
        advancing = torch.zeros(3, dtype=torch.bool)
        for row in rows:
            if step == starts[row]:
                decoder.reset(torch.arange(3) == row)
            frame[row] = codes[row][:, step - starts[row]]
            advancing[row] = True
        with torch.inference_mode(), decoder.bound():
            samples = decoder.decode(frame, advancing)
        assert codec.decode(codes[0]).shape == (4 * SAMPLES_PER_FRAME,)  # Mimi is not left streaming
        for row in rows:
            decoded[row].append(samples[row].numpy())
    for row in range(3):
        np.testing.assert_allclose(np.concatenate(decoded[row]), alone[row], atol=1e-5)


def test_codes_past_the_codec_vocabulary_are_clamped(codec):
    codes = torch.full((32, 2), 2050)
    np.testing.assert_array_equal(codec.decode(codes), codec.decode(torch.full((32, 2), 2047)))


def test_encode_gives_one_frame_of_32_codes_per_1920_samples(codec):
    samples = np.random.default_rng(0).standard_normal(5 * SAMPLES_PER_FRAME).astype(np.float32) * 0.1
    codes = codec.encode(samples)
    assert codes.shape == (32, 5)
    assert int(codes.min()) >= 0 and int(codes.max()) < 2048


def test_a_file_that_is_not_mimi_is_refused(tmp_path):
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"weight": torch.zeros(2, 2)}, str(other))
    with pytest.raises(CsmError, match="is not a Mimi checkpoint"):
        Codec.load(other, torch.device("cpu"))
    text = tmp_path / "notes.safetensors"
    text.write_text("hello")
    with pytest.raises(CsmError, match="is not a Mimi checkpoint"):
        Codec.load(text, torch.device("cpu"))
    with pytest.raises(CsmError, match="does not exist"):
        Codec.load(tmp_path / "missing.safetensors", torch.device("cpu"))


def test_mimi_loads_what_moshis_loader_loads_without_drawing_weights_first(mimi_file):
    """Built empty and given the file's tensors: the weights, buffers and codes of moshi's own loader."""
    from moshi.models import loaders

    ours = Codec.load(mimi_file, torch.device("cpu")).mimi
    moshis = loaders.get_mimi(mimi_file, device="cpu", num_codebooks=32)
    theirs = moshis.state_dict()
    assert ours.state_dict().keys() == theirs.keys()
    assert all(torch.equal(tensor, theirs[name]) for name, tensor in ours.state_dict().items())
    assert not any(tensor.is_meta for tensor in (*ours.parameters(), *ours.buffers()))
    assert not ours.training
    samples = torch.randn(1, 1, 2 * SAMPLES_PER_FRAME, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        assert torch.equal(ours.encode(samples), moshis.encode(samples))
