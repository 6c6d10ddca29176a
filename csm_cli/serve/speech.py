"""What every protocol of `csm serve` (HTTP, WebSocket, Wyoming) speaks with: the voices a client may name, OpenAI's
voice names among them, the checks of what a client sends (as `csm say` checks its options), and a stream's events
handed from the model thread to the event loop."""

import asyncio
import re
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass, replace
from typing import Any

from ..checks import whole_number
from ..errors import CsmError
from ..generation.codec import Codec
from ..generation.generator import MAX_SEED, MAX_SPEAKER
from ..generation.prompt import Segment
from ..loading.voice import DEFAULT_VOICES, Voice, choose_voices, voice_segment
from .scheduler import Event

SPEAKERS = (0, 1)  # listed as voices; any non-negative speaker id is accepted
NAMED_VOICE_SPEAKER = 0  # `csm say --voice NAME` speaks as --speaker, 0 unless given
DEFAULT_VOICE = "0"  # the voice of a WebSocket or Wyoming request that names none: speaker 0, as `csm say`
# The voices OpenAI's speech API offers, which its clients send (pipecat refuses any other before sending).
OPENAI_VOICES = ("alloy", "ash", "ballad", "cedar", "coral", "echo", "fable", "marin", "nova", "onyx", "sage",
                 "shimmer", "verse")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


class UnknownVoice(CsmError):
    """A request named a voice this server does not have; the message lists those it has."""


class InvalidText(CsmError):
    """Text to speak that is not text."""


def checked_text(text: str, what: str) -> str:
    """`text`, unless it holds a lone surrogate (JSON's "\\ud800"): not a character, and nothing a tokenizer reads."""
    if found := _LONE_SURROGATE.search(text):
        raise InvalidText(f"{what} holds a lone surrogate ({found[0]!r} at character {found.start()}), which is not "
                          "text: send valid Unicode")
    return text


def checked_seed(seed: int | str | None) -> int | None:
    """A request's seed as `csm say --seed` takes it: a whole number from 0 to 2^64-1 (in ASCII digits, when it comes
    as text)."""
    if isinstance(seed, str):
        if not re.fullmatch("[0-9]{1,20}", seed):
            raise CsmError(f"seed must be a whole number from 0 to {MAX_SEED}, got {seed!r}")
        seed = int(seed)
    return None if seed is None else whole_number("seed", seed, 0, MAX_SEED)


@dataclass(frozen=True)
class SpeakingVoice:
    """What a request's `voice` names: the speaker who says its text, and the voice prompts its context starts with."""

    name: str  # a voice's name or a speaker id, as GET /v1/audio/voices lists it (an alias: the voice it names)
    speaker: int
    prompts: tuple[Segment, ...]


def is_speaker_id(name: str) -> bool:
    return name.isascii() and name.isdigit()


def parse_voice_aliases(options: list[str]) -> dict[str, str]:
    """`--voice-alias NAME=VOICE` options -> {NAME: VOICE}, checked for their form (their voices are checked once the
    model's are known)."""
    aliases = {}
    for option in options:
        name, equals, voice = (part.strip() for part in option.partition("="))
        if not equals or not name or not voice:
            raise CsmError(f"--voice-alias {option!r} is not NAME=VOICE: give, say, "
                           "--voice-alias alloy=conversational_b")
        if is_speaker_id(name):
            raise CsmError(f"--voice-alias {option!r}: {name} is a speaker id, not a name an alias can take")
        aliases[name] = voice
    return aliases


class Voices:
    """The voices a request may name, given as `csm say` gives them:
    - a voice of the model by name, as `--voice NAME`: speaker 0 says the text, that voice's prompt as context;
    - a speaker id, as `--speaker N`: speaker N says the text, with the model's default voices as context
      (conversational_a as speaker 0, conversational_b as speaker 1), so 0 and 1 speak with those voices;
    - an alias, which names one of those: OpenAI's voice names by default, taking the voices with a known transcript
      in turn (alloy conversational_a, ash conversational_b, ballad conversational_a, ...), or the speakers 0 and 1
      in turn when the model has none; `aliases` (--voice-alias) adds names or changes what they name.
    The voices with a known transcript are offered; their prompts are encoded here, once (and cached on disk)."""

    def __init__(self, voices: Mapping[str, Voice], codec: Codec, aliases: Mapping[str, str] | None = None) -> None:
        self.offered = {name: voice for name, voice in voices.items() if voice.text}
        self.untranscribed = [name for name in voices if name not in self.offered]
        self._prompts = {name: voice_segment(voice, NAMED_VOICE_SPEAKER, codec) for name, voice in self.offered.items()}
        targets = list(self.offered) or [str(speaker) for speaker in SPEAKERS]
        self.aliases = {name: targets[i % len(targets)] for i, name in enumerate(OPENAI_VOICES)
                        if name not in voices}  # a voice of the model keeps its name
        for name, voice in (aliases or {}).items():
            if name in voices:
                raise CsmError(f"--voice-alias {name}={voice}: {name} is a voice of the model already")
            target = self.aliases.get(voice, voice)  # an alias of an alias names what that one names
            if target not in self.offered and not is_speaker_id(target):
                raise CsmError(f"--voice-alias {name}={voice}: {self.unknown(voice)}")
            self.aliases[name] = target

    def listing(self) -> list[dict[str, Any]]:
        named = [{"id": name, "name": name, "speaker": NAMED_VOICE_SPEAKER, "seconds": round(voice.seconds, 2)}
                 for name, voice in self.offered.items()]
        speakers = [{"id": str(speaker), "name": f"speaker {speaker}", "speaker": speaker,
                     "voice": DEFAULT_VOICES[speaker] if DEFAULT_VOICES.get(speaker) in self.offered else None}
                    for speaker in SPEAKERS]
        aliases = [{"id": name, "name": name, "alias_of": voice, "speaker": self.resolve(voice).speaker}
                   for name, voice in self.aliases.items()]
        return named + speakers + aliases

    def resolve(self, voice: str | int) -> SpeakingVoice:
        name = str(voice).strip()
        name = self.aliases.get(name, name)
        if is_speaker_id(name):  # as `csm say --speaker N`
            speaker = int(name)
            if speaker > MAX_SPEAKER:
                raise UnknownVoice(f"voice {name[:40]!r}: a speaker id is a whole number from 0 to {MAX_SPEAKER}")
            chosen = choose_voices(self.offered, None, None, speaker, has_context=False)
        elif name in self.offered:  # as `csm say --voice NAME`
            speaker = NAMED_VOICE_SPEAKER
            chosen = choose_voices(self.offered, name, None, speaker, has_context=False)
        else:
            raise UnknownVoice(self.unknown(voice))
        return SpeakingVoice(name, speaker, tuple(replace(self._prompts[v.name], speaker=n) for n, v in chosen))

    def unknown(self, voice: str | int) -> str:
        names = ", ".join(self.offered) or "none (the model has no voice prompts with a known transcript)"
        ids = ", ".join(str(speaker) for speaker in SPEAKERS)
        aliases = f", the aliases {', '.join(self.aliases)}" if self.aliases else ""
        unusable = (f"; {', '.join(self.untranscribed)} have no known transcript, so they cannot be prompts"
                    if self.untranscribed else "")
        return (f"unknown voice {voice!r}: this server's voices are {names}{aliases}, or a speaker id ({ids}, ...)"
                f"{unusable}; see GET /v1/audio/voices")


class StreamEvents:
    """A stream's events, handed from the model thread to the event loop of the request or connection."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[Any] = asyncio.Queue()

    def put(self, event: Event) -> None:
        with suppress(RuntimeError):  # the loop is closed: the server is shutting down
            self._loop.call_soon_threadsafe(self._queue.put_nowait, event)

    def put_now(self, message: Any) -> None:
        """From the event loop's own thread."""
        self._queue.put_nowait(message)

    async def get(self) -> Any:
        return await self._queue.get()
