"""The text tokenizer of a model repository: a Llama-3 `tokenizer.json` and the BOS/EOS tokens of its config."""

from pathlib import Path

from ..errors import CsmError, first_line
from .repository import read_json_object

_DEFAULT_BOS = "<|begin_of_text|>"
_DEFAULT_EOS = "<|end_of_text|>"


class TextTokenizer:
    """A Llama-3 `tokenizer.json` with the BOS/EOS ids the reference wraps every text segment in."""

    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer

        file = path / "tokenizer.json"
        try:
            self._tokenizer = Tokenizer.from_file(str(file))
        except Exception as e:  # tokenizers raises a bare Exception
            raise CsmError(f"cannot read the tokenizer {file} ({first_line(e)}): copy or download it again") from None
        bos, eos = _special_tokens(path)
        self.bos_id = self._token_id(bos)
        self.eos_id = self._token_id(eos)

    def _token_id(self, token: str) -> int:
        token_id = self._tokenizer.token_to_id(token)
        if token_id is None:
            raise CsmError(f"the tokenizer has no {token} token")
        return token_id

    def encode(self, speaker: int, text: str) -> list[int]:
        ids = self._tokenizer.encode(f"[{speaker}]{text}", add_special_tokens=False).ids
        return [self.bos_id, *ids, self.eos_id]


def _special_tokens(path: Path) -> tuple[str, str]:
    config_file = path / "tokenizer_config.json"
    config = read_json_object(config_file) if config_file.is_file() else {}

    def content(key: str, default: str) -> str:
        token = config.get(key)
        if isinstance(token, dict):
            token = token.get("content")
        if token is not None and not isinstance(token, str):
            raise CsmError(f"{config_file} has no valid {key} ({token!r}): copy or download it again")
        return token or default

    return content("bos_token", _DEFAULT_BOS), content("eos_token", _DEFAULT_EOS)
