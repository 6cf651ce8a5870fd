"""tokenizer.json through the `tokenizers` library (no transformers).

Special tokens come from the tokenizer's own post-processor ([CLS] text [SEP], [CLS] q [SEP] c [SEP]).
Inputs longer than the model reads follow the caller's policy: "truncate" (with a
TruncationWarning that says how many tokens were dropped) or "error" (InputTooLongError). For a
question and its context, only the context is cut. The tokenizer objects are configured once, when
loaded, and never changed afterwards, so one TextTokenizer can serve several threads.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path

from tokenizers import Encoding, Tokenizer

from modernbert_edge.runtime.errors import (
    EmptyInputError,
    InputError,
    InputTooLongError,
    ModelFolderError,
    TruncationWarning,
)

TOKENIZER_FILE = "tokenizer.json"
TRUNCATION = ("truncate", "error")


def _special_tokens(folder: Path) -> dict[str, str]:
    """{'mask_token': '[MASK]', ...} from special_tokens_map.json, then tokenizer_config.json."""
    found: dict[str, str] = {}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):  # the later file wins
        path = folder / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ModelFolderError(f"{path} could not be read ({e}); the folder may be corrupt.") from None
        for key, value in data.items() if isinstance(data, dict) else ():
            if key.endswith("_token") and isinstance(value, dict):
                value = value.get("content")
            if key.endswith("_token") and isinstance(value, str):
                found[key] = value
    return found


class TextTokenizer:
    """Encodes texts and (question, context) pairs to at most max_length tokens."""

    def __init__(self, tokenizer: Tokenizer, max_length: int, special_tokens: dict[str, str]) -> None:
        self.max_length = max_length
        self._plain = Tokenizer.from_str(tokenizer.to_str())
        self._plain.no_truncation()
        self._plain.no_padding()
        # Clones that cut to max_length, used only for inputs found too long.
        self._single = Tokenizer.from_str(self._plain.to_str())
        self._single.enable_truncation(max_length, strategy="longest_first")
        self._pair = Tokenizer.from_str(self._plain.to_str())
        self._pair.enable_truncation(max_length, strategy="only_second")

        def token_id(key: str, *fallbacks: str) -> tuple[str | None, int | None]:
            for token in (special_tokens.get(key), *fallbacks):
                if token is not None and self._plain.token_to_id(token) is not None:
                    return token, self._plain.token_to_id(token)
            return None, None

        self.mask_token, self.mask_id = token_id("mask_token", "[MASK]", "<mask>")
        self.cls_token, self.cls_id = token_id("cls_token", "[CLS]", "<s>")
        self.unk_token, self.unk_id = token_id("unk_token", "[UNK]", "<unk>")
        self.continuing_subword_prefix: str | None = getattr(self._plain.model, "continuing_subword_prefix", None)
        self.max_id = max(self._plain.get_vocab(with_added_tokens=True).values(), default=-1)

    @classmethod
    def from_folder(cls, folder: Path, max_length: int, expected: Sequence[str] = ()) -> TextTokenizer | None:
        """The folder's tokenizer.json, or None when it has none (and the manifest expects none)."""
        path = folder / TOKENIZER_FILE
        if not path.is_file():
            if TOKENIZER_FILE in expected:
                raise ModelFolderError(
                    f"{folder} has no {TOKENIZER_FILE}, though its manifest lists one: the folder is "
                    "incomplete; export it again."
                )
            return None
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises plain Exception for bad files
            raise ModelFolderError(f"{path} could not be read by tokenizers ({e}); the file may be corrupt.") from None
        return cls(tokenizer, max_length, _special_tokens(folder))

    def num_special_tokens(self, pair: bool = False) -> int:
        return self._plain.num_special_tokens_to_add(pair)

    def encode(self, texts: Sequence[object], truncation: str = "truncate") -> list[Encoding | InputError]:
        """Each text with special tokens, or the InputError that says why it cannot be used."""
        out: list[Encoding | InputError] = [_check_text(t, i, "") for i, t in enumerate(texts)]
        todo = [i for i, r in enumerate(out) if r is None]
        for i, enc in zip(todo, self._plain.encode_batch([texts[i] for i in todo]), strict=True):
            n = len(enc.ids)
            if n <= self.max_length:
                out[i] = enc
            elif truncation == "error":
                out[i] = InputTooLongError(
                    f"has {n} tokens, more than the {self.max_length} this model reads "
                    "(shorten it, or let it be truncated).",
                    i,
                )
            else:
                cut = self._single.encode(texts[i])
                _warn_truncated(i, n, n - len(cut.ids), self.max_length, "")
                out[i] = cut
        return out

    def encode_pairs(
        self, pairs: Sequence[tuple[object, object]], truncation: str = "truncate"
    ) -> list[Encoding | InputError]:
        """Each (question, context) as [CLS] question [SEP] context [SEP]; only the context is cut."""
        out: list[Encoding | InputError] = []
        for i, (question, context) in enumerate(pairs):
            out.append(_check_text(question, i, "question") or _check_text(context, i, "context"))
        todo = [i for i, r in enumerate(out) if r is None]
        encoded = self._plain.encode_batch([(pairs[i][0], pairs[i][1]) for i in todo])
        for i, enc in zip(todo, encoded, strict=True):
            n = len(enc.ids)
            if n <= self.max_length:
                out[i] = enc
                continue
            question_tokens = sum(1 for s in enc.sequence_ids if s == 0)
            room = self.max_length - self.num_special_tokens(pair=True) - question_tokens
            if room <= 0:
                out[i] = InputTooLongError(
                    f"has a question of {question_tokens} tokens, which leaves no room for the context "
                    f"within the {self.max_length} tokens this model reads.",
                    i,
                )
            elif truncation == "error":
                out[i] = InputTooLongError(
                    f"has {n} tokens (question and context), more than the {self.max_length} this model "
                    "reads (shorten the context, or let it be truncated).",
                    i,
                )
            else:
                cut = self._pair.encode(pairs[i][0], pairs[i][1])
                _warn_truncated(i, n, n - len(cut.ids), self.max_length, "its context ")
                out[i] = cut
        return out

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self._plain.decode(list(ids), skip_special_tokens=skip_special_tokens)


def _check_text(text: object, index: int, what: str) -> InputError | None:
    """None for a usable text; `what` names the part of a pair ('question', 'context')."""
    if not isinstance(text, str):
        reason = f"has a {what} that is not a string" if what else "is not a string"
        return InputError(f"{reason} (got {type(text).__name__}).", index)
    if not text.strip():
        return EmptyInputError(f"has an empty {what}." if what else "is empty (or only whitespace).", index)
    return None


def _warn_truncated(index: int, tokens: int, dropped: int, max_length: int, what: str) -> None:
    reason = (
        f"has {tokens} tokens, more than the {max_length} this model reads: {what}truncated, {dropped} tokens dropped."
    )
    warnings.warn(TruncationWarning(reason, index, tokens, dropped), stacklevel=4)
