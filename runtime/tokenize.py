"""tokenizer.json through the `tokenizers` library (no transformers).

Special tokens come from the tokenizer's own post-processor ([CLS] text [SEP], [CLS] q [SEP] c [SEP]).
Inputs longer than the model reads follow the caller's policy: "truncate" (with a
TruncationWarning that says how many tokens were dropped) or "error" (InputTooLongError). For a
question and its context, only the context is cut. The tokenizer objects are configured once, when
made (the truncating clones on first use), and never changed afterwards, so one TextTokenizer can
serve several threads.

Tokenization is bounded before it happens: a text (or context) longer than `max_chars`
(CHARS_PER_TOKEN characters per token the model reads) is cut to that many characters before the
tokenizer sees it, and counts as too long whatever its token count (truncated with a warning, or
InputTooLongError with truncation="error"). Texts are tokenized in groups of at most ENCODE_CHARS
characters, and each input fails on its own: a text that is not valid Unicode (a lone surrogate)
or that makes the tokenizer raise (a panic included) becomes that input's InputError.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import TypeVar

from tokenizers import Encoding, Tokenizer

from modernbert_edge.runtime.errors import (
    EmptyInputError,
    InputError,
    InputTooLongError,
    ModelFolderError,
    TruncationWarning,
)
from modernbert_edge.runtime.options import TRUNCATION  # noqa: F401 - re-exported

TOKENIZER_FILE = "tokenizer.json"
T = TypeVar("T")
# A token of any tokenizer we know spans far fewer characters than this (English averages about 4),
# so a text cut at CHARS_PER_TOKEN * max_length characters keeps every token the model reads unless it
# is mostly characters the tokenizer drops (whitespace, control characters).
CHARS_PER_TOKEN = 64
ENCODE_CHARS = 1 << 18  # characters per encode_batch call: tokenizers peaks at about 300 bytes per character
# A pre-tokenizer regex is probed on PROBE_CHARS repeats of each character it names: Oniguruma (the
# tokenizers library's engine) stops exponential backtracking (retry-limit-in-match) but not
# polynomial. Measured (one-off, 2026-12-05, tokenizers on this machine): on 160 characters,
# `a*a*a*[^a]` 415 ms (16 s on 400), `a*a*[^a]` 7.8 ms, GPT-2's pattern and `\w+|[^\w\s]+` 0.04 ms.
PROBE_CHARS = 160
PROBE_LIMIT_S = 0.005  # the fastest of up to three tries; linear patterns take ~100x less


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
        """`tokenizer` becomes this object's (its truncation and padding are turned off): pass a copy to keep yours."""
        self.max_length = max_length
        self.max_chars = CHARS_PER_TOKEN * max_length  # longer texts are cut to this before tokenization
        self._plain = tokenizer
        self._plain.no_truncation()
        self._plain.no_padding()

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

    # Clones that cut to max_length, used only for inputs found too long: made on first use (each clone
    # parses the whole tokenizer again: a third of load()'s time, scripts/load_time.py). Two
    # threads that race here each build an identical clone, and one is kept.
    @cached_property
    def _single(self) -> Tokenizer:
        return self._clone(strategy="longest_first")

    @cached_property
    def _pair(self) -> Tokenizer:
        return self._clone(strategy="only_second")

    def _clone(self, strategy: str) -> Tokenizer:
        clone = Tokenizer.from_str(self._plain.to_str())
        clone.enable_truncation(self.max_length, strategy=strategy)
        return clone

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
        check_split_regexes(path)
        _check_unique_ids(path, tokenizer)
        return cls(tokenizer, max_length, _special_tokens(folder))

    def num_special_tokens(self, pair: bool = False) -> int:
        return self._plain.num_special_tokens_to_add(pair)

    def encode(self, texts: Sequence[object], truncation: str = "truncate") -> list[Encoding | InputError]:
        """Each text with special tokens, or the InputError that says why it cannot be used."""
        out: list[Encoding | InputError] = [_check_text(t, i, "") for i, t in enumerate(texts)]
        todo = [i for i, r in enumerate(out) if r is None]
        bounded = {i: texts[i][: self.max_chars] for i in todo}  # type: ignore[index]
        for i, enc in self._encode_all(todo, bounded):
            if isinstance(enc, InputError):
                out[i] = enc
                continue
            cut_chars = len(texts[i]) > self.max_chars  # type: ignore[arg-type]
            n = len(enc.ids)
            if n <= self.max_length and not cut_chars:
                out[i] = enc
            elif truncation == "error":
                out[i] = InputTooLongError(self._too_long(n, cut_chars), i, "it")
            else:
                cut = _guarded(lambda i=i: self._single.encode(bounded[i]), i)
                if not isinstance(cut, InputError):
                    _warn_truncated(i, self._too_long(n, cut_chars), n, n - len(cut.ids), "", cut_chars)
                out[i] = cut
        return out

    def encode_pairs(
        self,
        pairs: Sequence[tuple[object, object]],
        truncation: str = "truncate",
        names: tuple[str, str] = ("question", "context"),
    ) -> list[Encoding | InputError]:
        """Each (question, context) as [CLS] question [SEP] context [SEP]; only the context is cut.
        `names` are what messages call the two parts (rerank: query and document)."""
        first, second = names
        out: list[Encoding | InputError] = []
        for i, (question, context) in enumerate(pairs):
            error = _check_text(question, i, first) or _check_text(context, i, second)
            if error is None and len(question) > self.max_chars:  # type: ignore[arg-type]
                error = InputTooLongError(
                    f"has a {first} of more than {self.max_chars} characters, which leaves no room for the "
                    f"{second} within the {self.max_length} tokens this model reads.",
                    i,
                )
            out.append(error)
        todo = [i for i, r in enumerate(out) if r is None]
        bounded = {i: (pairs[i][0], pairs[i][1][: self.max_chars]) for i in todo}  # type: ignore[index]
        for i, enc in self._encode_all(todo, bounded):
            if isinstance(enc, InputError):
                out[i] = enc
                continue
            cut_chars = len(pairs[i][1]) > self.max_chars  # type: ignore[arg-type]
            n = len(enc.ids)
            if n <= self.max_length and not cut_chars:
                out[i] = enc
                continue
            question_tokens = sum(1 for s in enc.sequence_ids if s == 0)
            room = self.max_length - self.num_special_tokens(pair=True) - question_tokens
            if room <= 0:
                out[i] = InputTooLongError(
                    f"has a {first} of {question_tokens} tokens, which leaves no room for the {second} "
                    f"within the {self.max_length} tokens this model reads",
                    i,
                )
            elif truncation == "error":
                out[i] = InputTooLongError(
                    self._too_long(n, cut_chars, f"{first} and {second}"),
                    i,
                    f"the {second}",
                )
            else:
                cut = _guarded(lambda i=i: self._pair.encode(*bounded[i]), i)
                if not isinstance(cut, InputError):
                    _warn_truncated(i, self._too_long(n, cut_chars), n, n - len(cut.ids), f"its {second} ", cut_chars)
                out[i] = cut
        return out

    def _encode_all(self, todo: list[int], inputs: dict[int, object]) -> Iterator[tuple[int, Encoding | InputError]]:
        """(i, encoding) for each input i of todo, encoded in groups of at most ENCODE_CHARS characters;
        when the tokenizer fails on a group, each of its inputs is encoded alone, and one that fails
        again gets its InputError instead of an encoding."""
        group: list[int] = []
        chars = 0
        for k, i in enumerate(todo):
            group.append(i)
            chars += _chars(inputs[i])
            if chars >= ENCODE_CHARS or k == len(todo) - 1:
                batch = _guarded(lambda g=group: self._plain.encode_batch([inputs[j] for j in g]), None)
                if not isinstance(batch, InputError):
                    yield from zip(group, batch, strict=True)
                else:  # find the input that fails; the others still run
                    for j in group:
                        yield j, _guarded(lambda j=j: self._plain.encode(inputs[j]), j)
                group, chars = [], 0

    def _too_long(self, tokens: int, cut_chars: bool, what: str = "") -> str:
        what = f" ({what})" if what else ""
        if cut_chars:
            return (
                f"has more than {self.max_chars} characters{what}, more than the {self.max_length} tokens this "
                f"model reads can hold at {CHARS_PER_TOKEN} characters per token"
            )
        return f"has {tokens} tokens{what}, more than the {self.max_length} this model reads"

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self._plain.decode(list(ids), skip_special_tokens=skip_special_tokens)


def _check_unique_ids(path: Path, tokenizer: Tokenizer) -> None:
    """A ModelFolderError for a vocabulary that gives two tokens one id: tokenizers loads it, but its
    id -> token map keeps one of them, so decoding (and a copy of the tokenizer) fails on the other."""
    seen: dict[int, str] = {}
    for token, i in sorted(tokenizer.get_vocab(with_added_tokens=False).items()):
        if i in seen:
            raise ModelFolderError(
                f"{path} gives two tokens the id {i} ({seen[i]!r} and {token!r}): each token of a vocabulary "
                "needs its own id; the file may be corrupt."
            )
        seen[i] = token


def check_split_regexes(path: Path) -> None:
    """A ModelFolderError for a tokenizer.json whose Split pre-tokenizer regex backtracks polynomially
    (it would let one input of a few thousand characters take minutes)."""
    from tokenizers import Regex, pre_tokenizers

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return  # tokenizers read it; nothing more to learn here
    for pattern in _split_patterns(data.get("pre_tokenizer") if isinstance(data, dict) else None):
        try:
            split = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
        except Exception:  # tokenizers loaded the file, so it compiles; be safe
            continue
        probes = {c for c in pattern if c.isalnum() or c in " .,'-_"} | {" ", "a", "0", "."}
        for c in sorted(probes):
            seconds = _time_split(split, c * PROBE_CHARS)
            for _ in range(2):  # a slow try on a busy machine is tried again
                if seconds <= PROBE_LIMIT_S:
                    break
                seconds = min(seconds, _time_split(split, c * PROBE_CHARS))
            if seconds > PROBE_LIMIT_S:
                raise ModelFolderError(
                    f"{path}'s pre-tokenizer regex {pattern[:80]!r} backtracks polynomially ({1000 * seconds:.0f} ms "
                    f"on {PROBE_CHARS} characters {c!r}): it would let one long input run for minutes; "
                    "use a tokenizer without it."
                )


def _split_patterns(node: object) -> Iterator[str]:
    """The Regex patterns of the Split pre-tokenizers in a pre_tokenizer section (Sequence included)."""
    if isinstance(node, dict):
        if node.get("type") == "Split" and isinstance(node.get("pattern"), dict):
            regex = node["pattern"].get("Regex")
            if isinstance(regex, str):
                yield regex
        for child in node.get("pretokenizers") or ():
            yield from _split_patterns(child)


def _time_split(split: object, text: str) -> float:
    import time

    start = time.perf_counter()
    try:
        split.pre_tokenize_str(text)
    except KeyboardInterrupt:
        raise
    except BaseException:  # noqa: BLE001 - a panic (Oniguruma's retry limit) ends the match: not slow
        pass
    return time.perf_counter() - start


def _check_text(text: object, index: int, what: str) -> InputError | None:
    """None for a usable text; `what` names the part of a pair ('question', 'context')."""
    if not isinstance(text, str):
        reason = f"has a {what} that is not a string" if what else "is not a string"
        return InputError(f"{reason} (got {type(text).__name__}).", index)
    if not text.strip():
        return EmptyInputError(f"has an empty {what}." if what else "is empty (or only whitespace).", index)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate: "\ud800" in JSON, or an undecodable byte from the OS
        where = f"its {what} " if what else ""
        return InputError(
            f"is not valid Unicode: {where}has a lone surrogate (U+{ord(text[e.start]):04X} at character "
            f"{e.start + 1}).",
            index,
        )
    return None


def _chars(value: object) -> int:
    return sum(len(v) for v in value) if isinstance(value, tuple) else len(value)  # type: ignore[arg-type]


def is_panic(error: BaseException) -> bool:
    """Whether error is a PyO3 PanicException (a Rust panic in tokenizers): a BaseException, so it is
    recognised by its type's name and module, never by catching BaseException broadly."""
    return any(c.__name__ == "PanicException" and c.__module__ == "pyo3_runtime" for c in type(error).__mro__)


def _guarded(encode: Callable[[], T], index: int | None) -> T | InputError:
    """encode(), or the InputError that says the tokenizer failed on input `index`."""
    try:
        return encode()
    except Exception as e:  # tokenizers raises TypeError, ValueError and plain Exception for odd inputs
        error: BaseException = e
    except BaseException as e:  # a Rust panic; KeyboardInterrupt and SystemExit go on up
        if not is_panic(e):
            raise
        error = e
    first = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
    detail = f"{type(error).__name__}: {first}" if first else type(error).__name__
    return InputError(f"could not be tokenized ({detail}).", index)


def _warn_truncated(index: int, reason: str, tokens: int, dropped: int, what: str, cut_chars: bool) -> None:
    """tokens and dropped are as counted: lower bounds when the text was first cut to max_chars."""
    dropped_text = f"at least {dropped}" if cut_chars else str(dropped)
    warnings.warn(
        TruncationWarning(f"{reason}: {what}truncated, {dropped_text} tokens dropped.", index, tokens, dropped),
        stacklevel=4,
    )
