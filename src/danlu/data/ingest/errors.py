"""The two expected outcomes besides success: a file that failed (bad input) and a file skipped on purpose."""

from __future__ import annotations


class IngestFailure(Exception):
    """The file is meant to be imported but cannot be: the message says why (corrupt, binary, empty ...)."""


class SkipFile(Exception):
    """The file is deliberately not imported (not a document format, an alias page ...): the message says why."""
