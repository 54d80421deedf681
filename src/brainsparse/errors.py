"""Errors raised by brainsparse for bad input; the CLI prints them as one line."""

from __future__ import annotations


class BrainsparseError(ValueError):
    """Invalid user input or an unusable resource, with a message that names the bad value."""


class DataNotFoundError(BrainsparseError, FileNotFoundError):
    """A dataset is missing or unreadable; the message says how to obtain it."""
