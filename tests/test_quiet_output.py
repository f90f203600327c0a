"""What a user sees: the quickstart's commands print MLFS's own lines only (no Python warning, Java
log line, progress bar left behind or DuckDB's exit report), and the engines' logs go to a file
the command names, or to the terminal with ``mlfs -v``."""

from __future__ import annotations

import os
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


@pytest.mark.parametrize("verbose", [False, True])
def test_flinks_log_goes_under_the_work_path_or_with_v_to_the_terminal(tmp_path: Path, verbose: bool) -> None:
    """What PyFlink's JVM is told before it starts (in a process of its own: a JVM starts once)."""
    env = {
        **os.environ,
        "MLFS_ENGINE_LOG_DIR": str(tmp_path / "logs"),
        "MLFS_VERBOSE": "1" if verbose else "",
    }
    for name in ("FLINK_LOG_DIR", "FLINK_IDENT_STRING", "LOG4J_PROPERTIES"):
        env.pop(name, None)
    script = (
        "import os; from transforms import enginelogs; enginelogs.flink_logs(); "
        "print(os.environ.get('FLINK_LOG_DIR')); print(os.environ.get('LOG4J_PROPERTIES')); "
        "print(*enginelogs.written())"
    )
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    log_dir, log4j, written = done.stdout.splitlines()
    if verbose:
        assert log_dir == "None" and "CONSOLE" in Path(log4j).read_text() and not written
    else:
        assert log_dir == str(tmp_path / "logs") and log4j == "None"
        assert Path(written).parent == tmp_path / "logs" and Path(written).name.startswith("flink-")
