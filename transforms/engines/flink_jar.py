"""MLFS's Java code for Flink (``flink_java/``): the exact aggregate functions (``flink_exact``) and
the file source's split assigner that reads files in name order (``NameOrderAssigner``).

The jar is compiled on first use (``javac`` from a JDK 17, against PyFlink's own jars) into a cache
keyed by the sources and the Flink version, so nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path

from transforms.errors import MLFSError

SOURCES = Path(__file__).with_name("flink_java")
CACHE_ENV = "MLFS_CACHE_DIR"
# PyFlink's jars the sources compile against.
CLASSPATH = ("flink-dist-*.jar", "flink-table-api-java-uber-*.jar", "flink-connector-files-*.jar")


def _pyflink_lib() -> Path:
    spec = importlib.util.find_spec("pyflink")  # found, not imported: importing it is slow and noisy
    if spec is None or not spec.submodule_search_locations:
        raise MLFSError("the Flink engine needs PyFlink (apache-flink) installed")
    return Path(next(iter(spec.submodule_search_locations))) / "lib"


def _cache_dir() -> Path:
    configured = os.environ.get(CACHE_ENV)
    return Path(configured) if configured else Path.home() / ".cache" / "mlfs"


def _javac() -> str:
    home = os.environ.get("JAVA_HOME")
    found = shutil.which("javac") or (home and shutil.which("javac", path=str(Path(home) / "bin")))
    if not found:
        raise MLFSError(
            "the Flink engine compiles MLFS's Java functions with javac: install a JDK 17 "
            "(apt-get install openjdk-17-jdk-headless) or set JAVA_HOME to one"
        )
    return found


def mlfs_jar() -> Path:
    """The jar of MLFS's Flink code, compiled here the first time (and after a change)."""
    sources = sorted(SOURCES.rglob("*.java"))
    lib = _pyflink_lib()
    classpath = sorted(jar for pattern in CLASSPATH for jar in lib.glob(pattern))
    digest = hashlib.sha256()
    for path in [*sources, *classpath]:
        digest.update(path.name.encode())
        if path.suffix == ".java":
            digest.update(path.read_bytes())
    jar = _cache_dir() / f"mlfs-flink-{digest.hexdigest()[:16]}.jar"
    if jar.is_file():
        return jar
    jar.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mlfs-javac-") as work:
        classes = Path(work) / "classes"
        command = [_javac(), "--release", "17", "-nowarn", "-d", str(classes)]
        command += ["-cp", os.pathsep.join(map(str, classpath)), *map(str, sources)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"compiling MLFS's Flink code failed:\n{done.stderr.strip()}")
        partial = Path(work) / jar.name
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\n")
            for path in sorted(classes.rglob("*.class")):
                archive.write(path, path.relative_to(classes).as_posix())
        # Moved beside the jar (the cache may be on another file system), then renamed into place;
        # another process may have built the same jar meanwhile: either copy is the same.
        staged = jar.with_name(f".{jar.name}.{os.getpid()}")
        shutil.move(str(partial), staged)
        os.replace(staged, jar)
    return jar
