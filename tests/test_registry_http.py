"""`mlfs registry serve` in a subprocess, checked with a real HTTP client (requests) and a real
headless browser (Debian's chromium): lookups, pagination, 4xx errors, bearer-token writes, and the
registry page."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from conftest import AS_OF, free_port
from repo_helpers import generated_registry

from featurestore.cli import main

pytestmark = pytest.mark.slow

MLFS = str(Path(sys.executable).with_name("mlfs"))
TOKEN = "test-token-not-a-secret"


def start_server(repo: Path, token: str | None) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFS_REGISTRY_TOKEN"}
    if token:
        env["MLFS_REGISTRY_TOKEN"] = token
    proc = subprocess.Popen(
        [MLFS, "registry", "serve", "--port", str(port), "--refresh", "0.2", "--repo", str(repo)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        try:
            requests.get(f"{url}/api/health", timeout=2).raise_for_status()
            return proc, url
        except requests.ConnectionError:
            assert time.monotonic() < deadline, "the registry server did not start"
            time.sleep(0.2)


def stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    proc.wait(timeout=20)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("http") / "repo"
    assert main(["init", str(path), "--as-of", AS_OF.isoformat(), "--events", "300"]) == 0
    assert main(["apply", "--repo", str(path)]) == 0
    return path


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[str]:
    proc, url = start_server(repo, TOKEN)
    yield url
    stop(proc)


def test_lookups_pagination_and_errors(server: str) -> None:
    views = requests.get(f"{server}/api/views", timeout=10).json()
    assert views["total"] == 3 and views["next_offset"] is None
    assert [v["name"] for v in views["items"]] == [
        "merchant_amount_1h",
        "user_last_payment_fail",
        "user_payment_stats_7d",
    ]
    page = requests.get(f"{server}/api/views", params={"limit": 2}, timeout=10).json()
    assert len(page["items"]) == 2 and page["next_offset"] == 2
    rest = requests.get(f"{server}/api/views", params={"offset": 2, "limit": 2}, timeout=10).json()
    assert [v["name"] for v in rest["items"]] == ["user_payment_stats_7d"] and rest["next_offset"] is None
    risk = requests.get(f"{server}/api/views", params={"tag": "team=risk", "entity": "user"}, timeout=10)
    assert [v["name"] for v in risk.json()["items"]] == ["user_last_payment_fail", "user_payment_stats_7d"]

    view = requests.get(f"{server}/api/views/user_payment_stats_7d", timeout=10).json()
    assert view["window"] == "sliding 7d" and view["history"][0]["version"] == 1
    feature = requests.get(f"{server}/api/features/user_payment_stats_7d:amount_sum_7d", timeout=10).json()
    assert feature["aggregation"] == "sum(amount)"
    entity = requests.get(f"{server}/api/entities/merchant", timeout=10).json()
    assert entity["join_keys"] == ["merchant_id"]
    hits = requests.get(f"{server}/api/search", params={"q": "fail", "kind": "views"}, timeout=10).json()
    assert {h["name"] for h in hits["items"]} == {"user_last_payment_fail", "user_payment_stats_7d"}
    graph = requests.get(f"{server}/api/lineage/source:payments", timeout=10).json()
    assert sum(n["kind"] == "view" for n in graph["nodes"]) == 3
    status = requests.get(f"{server}/api/views/merchant_amount_1h/status", timeout=10).json()
    assert status["backfill"] is None and status["dead_letters"]["records"] == 0

    for path, params, code, message in [
        ("/api/views/user_payment_stats", {}, 404, "did you mean user_payment_stats_7d"),
        ("/api/widgets", {}, 404, "unknown kind 'widgets'"),
        ("/api/views", {"limit": 0}, 400, "limit: Input should be greater than or equal to 1"),
        ("/api/views", {"offset": "ten"}, 400, "offset: Input should be a valid integer"),
        ("/api/sources", {"owner": "x"}, 400, "unknown parameter(s): owner"),
        ("/api/search", {}, 400, "q: Field required"),
        ("/api/search", {"q": "x", "kind": "widgets"}, 400, "kind.0: Input should be 'views'"),
        ("/api/search", {"q": ""}, 400, "q: String should have at least 1 character"),
        ("/api/lineage/nothing", {}, 404, "no registered view named 'nothing'"),
    ]:
        answer = requests.get(f"{server}{path}", params=params, timeout=10)
        assert answer.status_code == code, (path, answer.text)
        assert message in answer.json()["error"], (path, answer.text)

    openapi = requests.get(f"{server}/openapi.json", timeout=10).json()
    assert {"/api/views", "/api/features/{name}", "/api/search", "/api/apply"} <= set(openapi["paths"])
    assert all("422" not in op["responses"] for ops in openapi["paths"].values() for op in ops.values())


def test_writes_need_the_token_and_reads_never_run_registered_code(repo: Path, server: str) -> None:
    marker = repo / "imported.txt"
    features = repo / "features.py"
    original = features.read_text()
    changed = original.replace("timedelta(days=7)", "timedelta(days=14)", 1)
    features.write_text(f"open({str(marker)!r}, 'a').write('imported\\n')\n{changed}")
    try:
        for path in ("/api/views", "/api/views/user_payment_stats_7d", "/api/search?q=user", "/"):
            assert requests.get(f"{server}{path}", timeout=10).ok
        assert not marker.exists()  # reads answer from the stored definitions only

        assert requests.post(f"{server}/api/apply", timeout=30).status_code == 401
        wrong = requests.post(f"{server}/api/apply", headers={"Authorization": "Bearer nope"}, timeout=30)
        assert wrong.status_code == 403 and not marker.exists()
        done = requests.post(f"{server}/api/apply", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120)
        assert done.status_code == 200, done.text
        (change,) = done.json()["changes"]
        assert change.startswith("~ view user_payment_stats_7d") and "plan.window.size_ms" in change
        assert marker.exists()  # an authorised apply loads the repository
        view = requests.get(f"{server}/api/views/user_payment_stats_7d", timeout=10).json()
        assert view["window"] == "sliding 14d" and [h["version"] for h in view["history"]] == [1, 2]
    finally:
        features.write_text(original)
        marker.unlink(missing_ok=True)

    # An apply by someone else (here, this process) shows up once the server has reloaded.
    assert main(["apply", "--repo", str(repo)]) == 0

    def reloaded() -> bool:
        view = requests.get(f"{server}/api/views/user_payment_stats_7d", timeout=10).json()
        return bool(view["window"] == "sliding 7d" and len(view["history"]) == 3)

    deadline = time.monotonic() + 30
    while not reloaded():
        assert time.monotonic() < deadline, "the server never showed the registry's new version"
        time.sleep(0.2)


def test_a_server_without_a_token_is_read_only(repo: Path) -> None:
    proc, url = start_server(repo, None)
    try:
        answer = requests.post(f"{url}/api/apply", headers={"Authorization": "Bearer anything"}, timeout=30)
        assert answer.status_code == 403 and "read-only" in answer.json()["error"]
    finally:
        stop(proc)


def test_health_and_readiness_follow_the_registry(tmp_path: Path) -> None:
    """``/healthz`` answers while the process does; ``/readyz`` is 503 with the cause while the
    registry cannot be read (the catalog held is still served) and 200 once it can again."""
    repo = tmp_path / "repo"
    assert main(["init", str(repo), "--as-of", AS_OF.isoformat(), "--events", "100"]) == 0
    assert main(["apply", "--repo", str(repo)]) == 0
    registry = repo / "data" / "registry.db"
    assert registry.is_file()
    good = registry.read_bytes()
    proc, url = start_server(repo, None)
    try:
        assert requests.get(f"{url}/healthz", timeout=10).json() == {"status": "ok"}
        ready = requests.get(f"{url}/readyz", timeout=10)
        assert ready.status_code == 200 and ready.json()["status"] == "ready" and ready.json()["views"] == 3

        registry.write_bytes(b"not a registry")
        deadline = time.monotonic() + 30
        while (answer := requests.get(f"{url}/readyz", timeout=10)).status_code == 200:
            assert time.monotonic() < deadline, "readiness never noticed the unreadable registry"
            time.sleep(0.2)
        assert answer.status_code == 503 and answer.json()["error"].startswith("registry not reachable: ")
        assert requests.get(f"{url}/api/views", timeout=10).json()["total"] == 3  # the catalog held
        assert requests.get(f"{url}/healthz", timeout=10).status_code == 200

        registry.write_bytes(good)
        deadline = time.monotonic() + 30
        while requests.get(f"{url}/readyz", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, "readiness did not come back with the registry"
            time.sleep(0.2)
    finally:
        stop(proc)


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_registry_page_in_a_headless_browser(server: str, tmp_path: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "chromium is not installed (scripts/test.sh installs it)"
    page = f"{server}/#/view/user_payment_stats_7d"
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000"]
    common.append(f"--user-data-dir={tmp_path / 'profile'}")
    dom = subprocess.run([*common, "--dump-dom", page], capture_output=True, text=True, timeout=120).stdout
    assert 'data-ready="true"' in dom, dom[-2000:]
    assert 'id="definition"' in dom and "sliding " in dom
    assert "sum(amount)" in dom and 'id="status"' in dom
    assert 'id="lineage"' in dom and 'data-id="source:payments"' in dom and 'data-id="store:online"' in dom
    searched = subprocess.run(
        [*common, "--dump-dom", f"{server}/#/search/merchant"], capture_output=True, text=True, timeout=120
    ).stdout
    assert "Search: merchant" in searched and "merchant_amount_1h" in searched

    shot = tmp_path / "registry-page.png"
    subprocess.run(
        [*common, f"--screenshot={shot}", "--window-size=1280,900", page],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert png_size(shot) == (1280, 900)
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one
    artifacts = os.environ.get("MLFS_TEST_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(artifacts) / shot.name)


def test_lookups_over_a_generated_registry_of_10k_views(tmp_path: Path) -> None:
    from registry.synthetic import TEAMS

    n = 10_000
    path = generated_registry(tmp_path / "repo", n)
    proc, url = start_server(path, None)
    try:
        session = requests.Session()
        names: list[str] = []
        offset: int | None = 0
        while offset is not None:  # every page of the tag filter, in order, without overlap
            page = session.get(
                f"{url}/api/views", params={"tag": "team=ops", "offset": offset, "limit": 500}, timeout=30
            )
            body = page.json()
            names += [v["name"] for v in body["items"]]
            offset = body["next_offset"]
        expected = [f"view_{i:05d}" for i in range(n) if TEAMS[i % len(TEAMS)] == "ops"]
        assert names == expected and body["total"] == len(expected)
        hits = session.get(
            f"{url}/api/search", params={"q": "view_0424", "kind": "views", "limit": 5}, timeout=30
        ).json()
        assert hits["total"] == 10 and [h["name"] for h in hits["items"]] == [
            f"view_0424{d}" for d in range(5)
        ]
        detail = session.get(f"{url}/api/views/view_04242", timeout=30).json()
        assert detail["owner"] == f"{TEAMS[4242 % len(TEAMS)]}@example.com"
        features = session.get(f"{url}/api/features", params={"view": "view_04242"}, timeout=30).json()
        assert features["total"] == 3
    finally:
        stop(proc)


def test_the_openapi_document_is_true(server: str, tmp_path: Path) -> None:
    """schemathesis (its CLI, against the running server) generates requests from the document and
    checks every answer against it: documented statuses and bodies, no server error, schema-valid
    requests accepted, invalid ones refused, the Allow header of a 405. Writes get no token here, so
    they are 401s, which the document lists."""
    st = str(Path(sys.executable).with_name("st"))
    done = subprocess.run(
        [st, "run", f"{server}/openapi.json", "--checks", "all", "--max-examples", "40", "--seed", "1"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,  # where it may leave its reports
    )
    assert done.returncode == 0, done.stdout[-5000:]
