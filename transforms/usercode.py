"""Where a user's function lives: engines ship a feature repository's modules to their workers,
which cannot import them (they are neither installed nor part of MLFS)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType
from typing import Any

MLFS_PACKAGES = ("featurestore", "transforms", "registry", "backfill")

# What a call into user code (a repository's module, an event transform, a model stage's function
# or handler) may raise that MLFS turns into a dead letter or a definition error: any exception,
# and ``sys.exit``. Only Ctrl-C (KeyboardInterrupt) goes through.
USER_CODE_ERRORS = (Exception, SystemExit)


def plan_functions(plan: Any) -> list[Any]:
    """Every piece of user code a ``TransformPlan`` calls: its event transform and what its model
    stages reference (input, output and key functions, model classes)."""
    functions = [] if plan.event_transform is None else [plan.event_transform]
    for stage in (*plan.event_stages, *plan.row_stages):
        functions += stage.functions()
    return functions


def user_module(fn: Any) -> ModuleType | None:
    """The module defining ``fn`` when it is user code: not installed and not part of MLFS."""
    module = sys.modules.get(getattr(fn, "__module__", "") or "")
    path = getattr(module, "__file__", None) or ""
    if module is None or not path or "site-packages" in Path(path).parts:
        return None
    if module.__name__.split(".")[0] in MLFS_PACKAGES:
        return None
    return module


def import_root(module: ModuleType) -> Path:
    """The folder that must be on ``sys.path`` to import ``module`` by its name."""
    folder = Path(str(module.__file__)).resolve().parent
    for _ in range(module.__name__.count(".")):
        folder = folder.parent
    return folder
