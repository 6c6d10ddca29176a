"""csm: speak text aloud with Sesame's CSM-1B, streaming audio while it is generated.

`StreamingGenerator` and `Segment` are imported lazily, so that the CLI starts without loading torch.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .generator import Speech, StreamingGenerator
    from .prompt import Segment

__all__ = ["Segment", "Speech", "StreamingGenerator"]


def __getattr__(name: str) -> Any:
    if name in ("StreamingGenerator", "Speech"):
        from . import generator

        return getattr(generator, name)
    if name == "Segment":
        from .prompt import Segment

        return Segment
    raise AttributeError(f"module 'csm_cli' has no attribute {name!r}")
