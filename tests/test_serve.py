"""The request-response side (issue 10) on the embedded broker: real `edm run` processes,
real HTTP."""
from __future__ import annotations

import shutil
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from cli_helpers import ROOT, TOPOLOGIES, edm, ok
from helpers.kafka_flow import Runner
from helpers.serve_flow import get, serving_urls


def _with_http(path: Path, http: str) -> Path:
    path.write_text(path.read_text() + "\nhttp:\n" + http)
    return path


@pytest.fixture
def join_topology(tmp_path: Path) -> Path:
    """users-activity-join with its users table served, on any free port."""
    shutil.copytree(TOPOLOGIES / "users-activity-join", tmp_path / "t")
    return _with_http(tmp_path / "t" / "topology.yaml", '  listen: "127.0.0.1:0"\n  serve: [users-table]\n')


def test_run_serves_healthz_and_stops_on_sigterm(join_topology: Path) -> None:
    runner = Runner(join_topology)
    try:
        url = serving_urls(runner)["users-activity-join"]
        assert url.startswith("http://127.0.0.1:")
        status, headers, body = get(f"{url}/healthz")
        assert status == 200 and headers["Content-Type"].startswith("application/json")
        assert body["status"] == "ok" and body["service"] == "users-activity-join"
        status, _, body = get(f"{url}/no/such/path")
        assert (status, body["error"]) == (404, "unknown_path")
        status, _, body = get(f"{url}/healthz", method="POST")
        assert (status, body["error"]) == (405, "method_not_allowed")
    finally:
        code = runner.stop()
    assert code == 0, runner.stderr()
    assert "Traceback" not in runner.stderr()
    with pytest.raises(urllib.error.URLError):  # the port is released
        urllib.request.urlopen(f"{url}/healthz", timeout=5)


def test_business_topology_serves_every_service(tmp_path: Path) -> None:
    shutil.copytree(TOPOLOGIES / "payroll", tmp_path / "t" / "payroll")
    shutil.copytree(ROOT / "schemas", tmp_path / "schemas")
    for name in ("payments", "notifications"):
        _with_http(tmp_path / "t" / "payroll" / f"{name}.yaml", '  listen: "127.0.0.1:0"\n')
    runner = Runner(tmp_path / "t" / "payroll" / "payroll.yaml")
    try:
        urls = serving_urls(runner, 2)
        assert set(urls) == {"payments", "notifications"}
        assert len(set(urls.values())) == 2
        for service, url in urls.items():
            status, _, body = get(f"{url}/healthz")
            assert (status, body["service"]) == (200, service)
    finally:
        assert runner.stop() == 0, runner.stderr()


def test_a_port_in_use_is_a_clear_error(join_topology: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        join_topology.write_text(join_topology.read_text().replace("127.0.0.1:0", f"127.0.0.1:{port}"))
        result = edm("run", join_topology, "--until-idle")
    assert result.code == 1, result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert f"{join_topology}:" in result.stderr and "Traceback" not in result.stderr


def test_the_listen_address_is_templated(join_topology: Path) -> None:
    join_topology.write_text(join_topology.read_text().replace(
        '"127.0.0.1:0"', '"{{ env.EDM_TEST_HOST }}:{{ env.EDM_TEST_PORT | default(0) }}"'))
    result = edm("validate", join_topology, env={"EDM_TEST_HOST": "127.0.0.1", "PATH": ""})
    assert result.code == 0, result.stderr
    ok("validate", join_topology, env={"EDM_TEST_HOST": "127.0.0.1", "EDM_TEST_PORT": "8081", "PATH": ""})
