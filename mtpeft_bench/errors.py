"""Errors meant for the person at the keyboard.

A :class:`UserError` carries one line that says what is wrong and how to fix it. The CLI prints
that line (no traceback) and exits with status 2; the Python API lets it propagate.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: an unknown name, a missing file, an invalid value."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(message.split()) if "\n" not in message else message)
