"""The dead-letter sink: rejected events as JSON lines, with the raw input, the reason and the view."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from transforms.events import DeadLetter


def write_dead_letters(path: Path, letters: Iterable[DeadLetter]) -> int:
    """Write ``letters`` to ``path`` as JSON lines, replacing the file atomically; returns the count.

    An empty batch removes the file, so a re-run that fixed its input leaves no stale letters.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [letter.to_json() for letter in letters]
    if not lines:
        path.unlink(missing_ok=True)
        return 0
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return len(lines)
