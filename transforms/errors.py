"""Errors raised for bad definitions (as opposed to bad events, which are dead-lettered)."""

from __future__ import annotations


class MLFSError(Exception):
    """Base class of errors MLFS reports to users as one line, without a traceback."""


class DefinitionError(MLFSError):
    """A feature definition is invalid; names the view and, once known, the file."""

    def __init__(self, view: str | None, message: str, file: str | None = None) -> None:
        self.view = view
        self.message = message
        self.file = file
        super().__init__(self._text())

    def _text(self) -> str:
        parts = []
        if self.file:
            parts.append(self.file)
        if self.view:
            parts.append(f"view {self.view!r}")
        parts.append(self.message)
        return ": ".join(parts)

    def in_file(self, file: str) -> DefinitionError:
        """The same error, now naming the file it was found in."""
        return DefinitionError(self.view, self.message, file)


class EngineUnavailable(MLFSError):
    """The requested engine is not part of this build."""
