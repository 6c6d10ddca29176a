"""The voices a request may name: OpenAI's names as aliases, on a model without voice prompts (the tiny checkpoint of
the transformers layout); a model with them is served in test_server.py."""

import pytest

from csm_cli.errors import CsmError
from csm_cli.loading.generator import load_voices
from csm_cli.serve.speech import OPENAI_VOICES, Voices, parse_voice_aliases


@pytest.fixture(scope="module")
def model_voices(transformers_dir):
    return load_voices(str(transformers_dir))


def test_without_voice_prompts_openai_names_take_the_speakers_in_turn(generator, model_voices):
    assert not model_voices
    voices = Voices(model_voices, generator.codec)
    assert [voices.resolve(name).speaker for name in OPENAI_VOICES[:4]] == [0, 1, 0, 1]
    assert voices.resolve("alloy").prompts == ()
    listed = {voice["id"]: voice for voice in voices.listing()}
    assert (listed["alloy"]["alias_of"], listed["ash"]["alias_of"]) == ("0", "1")


def test_aliases_given_change_or_add_names(generator, model_voices):
    voices = Voices(model_voices, generator.codec, parse_voice_aliases(["alloy=1", " narrator = 0 ", "host=alloy"]))
    assert [voices.resolve(name).speaker for name in ("alloy", "narrator", "ash", "host")] == [1, 0, 1, 1]


@pytest.mark.parametrize(("options", "message"), [
    (["alloy"], "--voice-alias 'alloy' is not NAME=VOICE"),
    (["=1"], "--voice-alias '=1' is not NAME=VOICE"),
    (["7=1"], "7 is a speaker id"),
])
def test_malformed_aliases_are_refused(options, message):
    with pytest.raises(CsmError, match=message):
        parse_voice_aliases(options)


def test_an_alias_of_no_voice_is_refused(generator, model_voices):
    with pytest.raises(CsmError, match="--voice-alias alloy=nobody: unknown voice 'nobody'"):
        Voices(model_voices, generator.codec, {"alloy": "nobody"})
