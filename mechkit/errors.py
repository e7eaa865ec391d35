"""Errors raised for bad input: one sentence naming the input and what to do.

All subclass `MechkitError`, itself a `ValueError`, so callers can catch either; the CLI turns them into one
line on stderr and exit code 2.
"""


class MechkitError(ValueError):
    """Bad input detected before any heavy work started."""


class UnknownModelError(MechkitError):
    """A model id that is neither registered, a local directory, nor a tiny/native config."""


class ModelNotFetchedError(MechkitError):
    """A registered model whose weights are not in the cache yet."""


class ChecksumMismatchError(MechkitError):
    """A cached or downloaded file whose sha256 differs from the pinned or manifest value."""


class ContextTooLongError(MechkitError):
    """An input longer than the model's context window."""


class HeadSpecError(MechkitError):
    """A head specification that cannot be parsed or lies outside the model."""


class OutputPathError(MechkitError):
    """An output location that cannot be written."""
