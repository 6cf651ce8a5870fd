"""The one exception type for mistakes a user can make (bad files, bad values, bad inputs).

The CLI turns a UserError into one line on stderr and exit code 2; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input: the message is one sentence that says what and where."""

    exit_code = 2
