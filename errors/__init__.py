"""Errors that are the user's to fix: a bad config, a missing or wrong file, an argument out of range.

The bottom layer: every package may import it and it imports nothing of the project, so core code raises the
same type that ``face3d`` (`experiments.cli`) prints as one line naming the problem and the fix. Any other
exception is a bug and keeps its traceback.

The subclasses keep the built-in type a caller may already catch (a missing file is still a
`FileNotFoundError`).
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in what the user gave (config, path, argument); the message names the problem and the fix."""


class InvalidInputError(UserError, ValueError):
    """A value, argument or file content that cannot be used as given."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named, or one that must be fetched or made first, is not there."""


class ExistingOutputError(UserError, FileExistsError):
    """An output that already exists and would be overwritten (a run's checkpoints, an export)."""


__all__ = ["ExistingOutputError", "InvalidInputError", "MissingFileError", "UserError"]
