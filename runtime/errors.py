"""The runtime's exceptions: each a UserError (one sentence, exit code 2 in the CLI), specific
enough for API callers to catch.

An InputError keeps the bad input's position (`index`) and the reason apart, so the CLI can name
the input its own way ("line 12 of texts.txt") while the API says "input 12".
"""

from __future__ import annotations

from modernbert_edge.errors import UserError


class ModelFolderError(UserError):
    """The model folder is missing, incomplete or corrupt, or holds something this runtime cannot run."""


class MissingTokenizerError(UserError):
    """Text was passed to a model folder that has no tokenizer.json (token ids still work)."""


class TaskMismatchError(UserError):
    """A method (or --task) that the folder's model does not do."""


class InputError(UserError):
    """One input is unusable; `index` is its position in the call, `reason` the sentence without it."""

    def __init__(self, reason: str, index: int | None = None) -> None:
        self.reason = reason
        self.index = index
        super().__init__(f"input {index} {reason}" if index is not None else f"the input {reason}")

    def __reduce__(self) -> tuple:  # pickles (Ray) as it was made, not from its message
        return type(self), (self.reason, self.index)

    def named(self, label: str) -> str:
        """The message with the input called `label` (e.g. 'line 3 of texts.txt')."""
        return f"{label} {self.reason}"


class EmptyInputError(InputError):
    """An empty or whitespace-only text (or a text that is not a string)."""


class MissingMaskError(InputError):
    """A fill-mask text without the tokenizer's mask token."""


class InputTooLongError(InputError):
    """An input longer than the model reads, with truncation='error' (or a question that alone fills it).
    `what` is the reason without its remedy; `shorten` what to shorten ("it", "the context"; None: a
    question that alone fills the model), so that a front end can add its own way to truncate."""

    def __init__(self, what: str, index: int | None = None, shorten: str | None = None) -> None:
        self.what, self.shorten = what.rstrip("."), shorten
        remedy = f" (shorten {shorten}, or let it be truncated)" if shorten else ""
        super().__init__(f"{self.what}{remedy}.", index)

    def __reduce__(self) -> tuple:
        return type(self), (self.what, self.index, self.shorten)


class TruncationWarning(UserWarning):
    """An input was cut to the model's maximum length; `dropped` tokens were lost."""

    def __init__(self, reason: str, index: int, tokens: int, dropped: int) -> None:
        self.reason, self.index, self.tokens, self.dropped = reason, index, tokens, dropped
        super().__init__(f"input {index} {reason}")

    def named(self, label: str) -> str:
        return f"{label} {self.reason}"
