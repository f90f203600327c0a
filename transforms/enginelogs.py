"""Where the engines' own output goes: the JVMs of Spark and Flink (and the Python workers they
start) log to a file under the repository's work path, so a command prints only MLFS's lines;
``mlfs -v`` puts their warnings on the terminal instead.

The ``mlfs`` command says where (``MLFS_ENGINE_LOG_DIR``, set from the repository's settings, or
``MLFS_VERBOSE``); a library caller that sets neither keeps the engines' output on its terminal.
A JVM started while ``jvm_output`` holds writes to the log for the whole of its life.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

LOG_DIR_ENV = "MLFS_ENGINE_LOG_DIR"
VERBOSE_ENV = "MLFS_VERBOSE"

_written: list[Path] = []  # the logs this process's engines write to


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def log_dir() -> Path | None:
    """The directory engine logs go to (None: the terminal)."""
    directory = os.environ.get(LOG_DIR_ENV)
    return None if verbose() or not directory else Path(directory)


def written() -> list[Path]:
    """The log files this process's engines have written to."""
    return list(_written)


@contextmanager
def jvm_output(engine: str) -> Iterator[Path | None]:
    """While held, this process's stdout and stderr (file descriptors 1 and 2) point at a new log
    file ``<log_dir>/<engine>-<time>-<pid>.log``, which a process started meanwhile (a JVM) keeps
    writing to; yields its path, or None where ``log_dir`` says the terminal. Hold it only around
    the start of a process (nothing of MLFS's own prints meanwhile)."""
    directory = log_dir()
    if directory is None:
        yield None
        return
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    path = directory / f"{engine}-{stamp}-{os.getpid()}.log"
    sys.stdout.flush()
    sys.stderr.flush()
    saved = (os.dup(1), os.dup(2))
    log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(log, 1)
        os.dup2(log, 2)
        yield path
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (log, *saved):
            os.close(fd)
    _written.append(path)


_FLINK_CONSOLE = """rootLogger.level = WARN
rootLogger.appenderRef.console.ref = ConsoleAppender
appender.console.name = ConsoleAppender
appender.console.type = CONSOLE
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{yyyy-MM-dd HH:mm:ss,SSS} %-5p %-60c %x - %m%n
"""


def flink_logs() -> None:
    """Before PyFlink starts its JVM (the gateway, and a local mini-cluster in it): its log file
    (``FLINK_LOG_DIR``, named by ``FLINK_IDENT_STRING``) goes under ``log_dir``, not into the
    PyFlink package's own folder; with ``mlfs -v`` its warnings go to the terminal instead
    (``LOG4J_PROPERTIES``: a console configuration). Nothing where the JVM runs already."""
    from pyflink import java_gateway

    if getattr(java_gateway, "_gateway", None) is not None:
        return
    if verbose():
        handle, name = tempfile.mkstemp(prefix="mlfs-flink-log4j-", suffix=".properties")
        with os.fdopen(handle, "w") as file:
            file.write(_FLINK_CONSOLE)
        os.environ["LOG4J_PROPERTIES"] = name
        return
    directory = log_dir()
    if directory is None:
        return
    directory.mkdir(parents=True, exist_ok=True)
    ident = f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    os.environ["FLINK_LOG_DIR"] = str(directory)
    os.environ["FLINK_IDENT_STRING"] = ident
    path = directory / f"flink-{ident}-python-{socket.gethostname()}.log"
    if path not in _written:
        _written.append(path)
