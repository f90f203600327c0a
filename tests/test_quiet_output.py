"""What a user sees: the quickstart's commands print MLFS's own lines only (no Python warning, Java
log line, progress bar left behind or DuckDB's exit report), and the engines' logs go to a file
the command names, or to the terminal with ``mlfs -v``."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import AS_OF

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
MLFS = str(BIN / "mlfs")
# What engines and libraries print on their own: warnings, log4j lines, the JVM's notes, tqdm
# bars, nanobind's leak report at exit, tracebacks.
NOISE = re.compile(
    r"Warning|WARN|log4j|setLogLevel|NativeCodeLoader|jdk\.incubator|nanobind|leaked|Traceback|it/s\]"
)


def run(args: list[str], cwd: Path) -> str:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def noise(output: str) -> list[str]:
    return [line for line in output.splitlines() if NOISE.search(line)]


def test_the_quickstart_prints_only_its_own_lines(tmp_path: Path) -> None:
    init = [MLFS, "init", "repo", "--as-of", AS_OF.isoformat(), "--events", "2000"]
    output = run([*init, "--with-embeddings", "--with-joins"], tmp_path)
    repo = tmp_path / "repo"
    for command in (["apply"], ["backfill"], ["registry", "list"]):
        output += run([MLFS, *command], repo)
    output += run([str(BIN / "python"), "read_features.py"], repo)
    assert "Backfilled 6 view(s)" in output and "Point-in-time features" in output
    assert not noise(output), "\n".join(noise(output))
    assert "engine log:" not in output  # the embedded engine starts no JVM


def test_spark_logs_go_to_the_file_the_backfill_names(tmp_path: Path) -> None:
    run([MLFS, "init", "repo", "--as-of", AS_OF.isoformat(), "--events", "300"], tmp_path)
    repo = tmp_path / "repo"
    run([MLFS, "apply"], repo)
    output = run([MLFS, "backfill", "merchant_amount_1h", "--engine", "spark"], repo)
    assert not noise(output), "\n".join(noise(output))
    (named,) = re.findall(r"^engine log: (.+)$", output, re.MULTILINE)
    log = Path(named)
    assert log.parent == repo / "data" / "work" / "logs" and "log4j" in log.read_text()


@pytest.mark.parametrize("verbose", [False, True])
def test_a_process_started_while_jvm_output_holds_writes_to_the_log_or_with_v_here(
    tmp_path: Path, verbose: bool, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What ``mlfs -v`` changes: the JVM's output (here a child process's) stays on the terminal."""
    from transforms import enginelogs

    monkeypatch.setenv(enginelogs.LOG_DIR_ENV, str(tmp_path / "logs"))
    if verbose:
        monkeypatch.setenv(enginelogs.VERBOSE_ENV, "1")
    with enginelogs.jvm_output("spark") as log:
        child = subprocess.Popen(["sh", "-c", "sleep 0.2; echo from the engine; echo on stderr >&2"])
    print("from mlfs")
    child.wait()
    out, err = capfd.readouterr()
    assert "from mlfs" in out
    if verbose:
        assert log is None and "from the engine" in out and "on stderr" in err
        assert not (tmp_path / "logs").exists()
    else:
        assert log is not None and log.read_text() == "from the engine\non stderr\n"
        assert "engine" not in out + err and log in enginelogs.written()
