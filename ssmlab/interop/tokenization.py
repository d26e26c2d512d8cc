"""Text to tokens and back for a saved language model, as ``ssmlab generate`` uses them.

A checkpoint directory says how its model reads text, in this order:

1. ``tokenizer.json`` in the directory (a Hugging Face ``tokenizers`` file), as published
   transformers checkpoints have;
2. the tokeniser recorded in config.json when the model was saved with its task
   (``model.task_info["tokenizer"]``): ``"bytes"`` (token ``t`` is byte ``t`` of UTF-8
   text, the byte-level tasks) or ``"ids"`` (the prompt is token ids written as integers
   separated by spaces or commas, for tasks whose tokens have no text);
3. otherwise bytes, when the vocabulary has at least 256 tokens.

:meth:`Tokenizer.stream` turns tokens into text as they come: it prints what the
tokens so far decode to beyond what was printed, and holds back an incomplete UTF-8
character until its last byte arrives.
"""

from __future__ import annotations

import re
from pathlib import Path


class Tokenizer:
    """``encode(text) -> ids`` and ``decode(ids) -> text``; ``kind``: ``"bytes"``, ``"ids"``, ``"tokenizer.json"``."""

    def __init__(self, kind: str, file: Path | None = None):
        self.kind = kind
        self._hf = None
        if kind == "tokenizer.json":
            try:
                from tokenizers import Tokenizer as HFTokenizer
            except ImportError as exc:
                raise ImportError(f"{file} needs the tokenizers package: pip install tokenizers") from exc
            self._hf = HFTokenizer.from_file(str(file))
        elif kind not in ("bytes", "ids"):
            raise ValueError(f"unknown tokenizer type {kind!r}; expected 'bytes' or 'ids'")

    def encode(self, text: str) -> list[int]:
        if self._hf is not None:
            return self._hf.encode(text).ids
        if self.kind == "bytes":
            return list(text.encode("utf-8"))
        words = [w for w in re.split(r"[\s,]+", text.strip()) if w]
        if not all(re.fullmatch(r"\d+", w) for w in words):
            raise ValueError(f"this model's tokens are ids with no text: give the prompt as integers separated by "
                             f"spaces, e.g. '3 17 5', not {text!r}")
        return [int(w) for w in words]

    def decode(self, ids: list[int]) -> str:
        if self._hf is not None:
            return self._hf.decode(ids)
        if self.kind == "bytes":
            return bytes(t for t in ids if t < 256).decode("utf-8", errors="replace")
        return " ".join(str(t) for t in ids)

    def stream(self, prompt_ids: list[int]) -> TextStream:
        """A :class:`TextStream` that starts with the prompt."""
        return TextStream(self, prompt_ids)


class TextStream:
    """Incremental decoding: ``push(id)`` returns the new text that the token completes."""

    def __init__(self, tokenizer: Tokenizer, prompt_ids: list[int]):
        self.tokenizer, self.ids, self.shown = tokenizer, list(prompt_ids), ""

    def _emit(self, text: str) -> str:
        new = text[len(self.shown):]
        self.shown = text
        return new

    def start(self) -> str:
        """The prompt's text."""
        return self.push()

    def push(self, *ids: int) -> str:
        self.ids.extend(ids)
        text = self.tokenizer.decode(self.ids)
        # A trailing replacement character may be a multi-byte character not yet complete.
        return self._emit(text.rstrip("\ufffd"))

    def end(self) -> str:
        """What is left to show once generation stops."""
        return self._emit(self.tokenizer.decode(self.ids))


def tokenizer_for(path, model) -> Tokenizer:
    """The tokeniser of the checkpoint directory ``path`` whose model is ``model`` (see the module docstring)."""
    path = Path(path)
    if (path / "tokenizer.json").is_file():
        return Tokenizer("tokenizer.json", path / "tokenizer.json")
    recorded = ((getattr(model, "task_info", None) or {}).get("tokenizer") or {}).get("type")
    vocab = model.encoder.vocab_size
    if recorded is not None:
        if recorded == "bytes" and vocab < 256:
            raise ValueError(f"{path}: byte-level tokens need a vocabulary of 256, this model has {vocab}")
        return Tokenizer(recorded)
    if vocab < 256:
        raise ValueError(f"{path} has no tokenizer.json, no tokeniser in config.json (save the model with its task) "
                         f"and a vocabulary of {vocab} < 256 tokens, too small for byte-level tokens")
    return Tokenizer("bytes")
