"""csm: speak text aloud with Sesame's CSM-1B, streaming audio while it is generated.

`load_generator`, `LoadOptions`, `StreamingGenerator`, `Speech`, `Segment` and `load_voice_prompt` are imported
lazily, so that the CLI starts without loading torch.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .generation.generator import Speech, StreamingGenerator
    from .generation.prompt import Segment
    from .loading.generator import LoadOptions, load_generator
    from .loading.voice import load_voice_prompt

__all__ = ["LoadOptions", "Segment", "Speech", "StreamingGenerator", "load_generator", "load_voice_prompt"]


def __getattr__(name: str) -> Any:
    if name in ("StreamingGenerator", "Speech"):
        from .generation import generator

        return getattr(generator, name)
    if name in ("LoadOptions", "load_generator"):
        from .loading import generator as loading

        return getattr(loading, name)
    if name == "Segment":
        from .generation.prompt import Segment

        return Segment
    if name == "load_voice_prompt":
        from .loading.voice import load_voice_prompt

        return load_voice_prompt
    raise AttributeError(f"module 'csm_cli' has no attribute {name!r}")
