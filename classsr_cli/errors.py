"""Errors a user can cause. The CLI prints them as one line, `error: ...`, and exits with code 2."""


class ClasssrError(Exception):
    """Base class: anything the user can fix (bad input, options, weights, data)."""


class InputError(ClasssrError):
    """The input image or folder is missing, unreadable, not an image, truncated or too large."""


class OutputError(ClasssrError):
    """The output path cannot be written, already exists, or has an unknown type."""


class ModelError(ClasssrError):
    """Unknown family, bad widths or class count, or an architecture that does not fit."""


class WeightsError(ClasssrError):
    """A weights file is missing, corrupt, tampered with, hostile, or does not fit the model."""


class DataError(ClasssrError):
    """A dataset folder or prepared index is missing or malformed."""


class DependencyError(ClasssrError):
    """An optional package that a command needs is not installed (the message says which extra has it)."""


class ReportedElsewhere(ClasssrError):
    """Another process of the same torchrun launch reports this failure; this one only exits with code 2."""


# How an error message tells the user to replace what exists, for the CLI and the Python API alike.
OVERWRITE_HINT = "pass --overwrite (overwrite=True in Python)"
