"""The one exception type for mistakes a user can make (bad files, bad values, bad inputs).

The CLI turns a UserError into one line on stderr and exit code 2; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import re
from collections.abc import Callable


class UserError(Exception):
    """A problem with the user's input: the message is one sentence that says what and where."""

    exit_code = 2


class OptionError(UserError):
    """A bad option value, or an option the call does not take. The message names options by their Python
    names (`top_k must be …`), as the library and the server's JSON call them; the CLI shows them as
    its flags (`--top-k must be …`): `options` lists the names the message uses."""

    def __init__(self, message: str, *options: str) -> None:
        super().__init__(message)
        self.options = options

    def __reduce__(self) -> tuple:  # pickles (Ray) with the names
        return type(self), (str(self), *self.options)

    def as_flags(self) -> str:
        """The message with each option's name as its flag (top_k -> --top-k), for the CLI."""
        return self.renamed(lambda name: "--" + name.replace("_", "-"))

    def as_fields(self) -> str:
        """The message with each option's name quoted as a JSON field ("top_k"), for the server."""
        return self.renamed(lambda name: f'"{name}"')

    def renamed(self, rename: Callable[[str], str]) -> str:
        if not self.options:
            return str(self)
        names = "|".join(re.escape(o) for o in sorted(self.options, key=len, reverse=True))
        return re.sub(rf"(?<![\w\-\"])({names})(?![\w\-\"])", lambda m: rename(m[1]), str(self))
