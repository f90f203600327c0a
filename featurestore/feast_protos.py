"""Feast's protobuf modules without importing the ``feast`` package.

``import feast`` takes seconds (it imports pandas, torch and every data source), and a command that
only reads the registry file or writes Feast's online layout needs none of it: the registry is a
``Registry`` protobuf message and the online values are ``Value`` messages. Python imports a
module's parent packages first, so the protos are loaded under a stand-in ``feast`` package that
is removed after; a later ``import feast`` runs Feast's own ``__init__`` and finds these modules
already loaded.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
import types
from typing import Any

_GUARD = threading.Lock()


def feast_proto(name: str) -> Any:
    """The module ``feast.protos.feast.<name>`` (for example ``core.Registry_pb2``)."""
    full = f"feast.protos.feast.{name}"
    with _GUARD:
        if full in sys.modules:
            return sys.modules[full]
        if "feast" in sys.modules:  # Feast itself is loaded: nothing to avoid
            return importlib.import_module(full)
        spec = importlib.util.find_spec("feast")
        if spec is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError("feast is not installed")
        stand_in = types.ModuleType("feast")
        stand_in.__path__ = list(spec.submodule_search_locations)
        sys.modules["feast"] = stand_in
        try:
            return importlib.import_module(full)
        finally:
            if sys.modules.get("feast") is stand_in:
                del sys.modules["feast"]
