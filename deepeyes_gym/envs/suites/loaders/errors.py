"""Exceptions and warnings raised by the dataset loaders."""

from __future__ import annotations

from typing import Iterable

__all__ = ["DataLoadError", "MissingColumnsError", "MissingDependencyError", "DataLoadWarning"]


class DataLoadError(ValueError):
    """A dataset file could not be turned into tasks (missing, unreadable, malformed, bad row)."""


class MissingColumnsError(DataLoadError):
    """Required columns/fields are absent; the message names them and lists what was found."""

    def __init__(self, path: str, missing: Iterable[str], found: Iterable[str], hint: str = "") -> None:
        self.path = path
        self.missing = tuple(missing)
        self.found = tuple(found)
        msg = (
            f"{path}: missing required column(s) {', '.join(repr(m) for m in self.missing)}; "
            f"found {', '.join(repr(f) for f in self.found) or 'no columns'}"
        )
        super().__init__(msg + (f" ({hint})" if hint else ""))


class MissingDependencyError(ImportError):
    """An optional dependency (pyarrow, ...) is needed for this format and is not installed."""


class DataLoadWarning(UserWarning):
    """Rows were skipped while loading (broken images, malformed rows); see ``LoadResult.skipped``."""
