"""The top-level Dockerfile, checked without building an image (no container engine needed): it
parses, its stages are what the image promises (slim base, wheel built in a builder stage, no
compilers in the final stage, a fixed non-root UID, `edm` as the entrypoint, the state on a
volume), the wheel builds from exactly what the builder copies, and the image's command line
(entrypoint + default command: the one the chart runs) works from that wheel in a fresh venv on
the embedded broker, stopped by SIGTERM as Kubernetes stops a pod."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

from cli_helpers import ROOT, TOPOLOGIES

STATE_DIR = "/var/lib/edm"
TOPOLOGY_DIR = "/etc/edm"
COMPILERS = ("gcc", "g++", "clang", "build-essential", "make", "cc ")


def _stages() -> list[list[dict]]:
    """The Dockerfile's instructions, one list per stage (FROM first)."""
    stages: list[list[dict]] = []
    for instruction in DockerfileParser(str(ROOT / "Dockerfile")).structure:
        if instruction["instruction"] == "FROM":
            stages.append([])
        if stages and instruction["instruction"] != "COMMENT":
            stages[-1].append(instruction)
    return stages


def _values(stage: list[dict], name: str) -> list[str]:
    return [i["value"] for i in stage if i["instruction"] == name]


def _command_line() -> list[str]:
    final = _stages()[-1]
    [entrypoint], [cmd] = _values(final, "ENTRYPOINT"), _values(final, "CMD")
    return json.loads(entrypoint) + json.loads(cmd)


def test_the_dockerfile_builds_a_wheel_then_installs_it_as_a_non_root_user() -> None:
    parser = DockerfileParser(str(ROOT / "Dockerfile"))
    base = parser.args.get("PYTHON_IMAGE") or parser.baseimage
    assert base.startswith("python:") and "-slim" in base, base
    builder, final = _stages()
    assert _values(builder, "FROM")[0].endswith(" AS builder")
    assert any("pip wheel" in run for run in _values(builder, "RUN"))
    install = [run for run in _values(final, "RUN") if "pip install" in run]
    assert install and all("--no-index" in run and "from=builder" in run for run in install), install
    for run in _values(final, "RUN"):
        assert not any(tool in run for tool in COMPILERS), f"a compiler in the final stage: {run}"
    [user] = _values(final, "USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "a fixed, numeric, non-root UID (runAsNonRoot can check it)"
    assert any(f"--uid {uid}" in run for run in _values(final, "RUN"))
    assert json.loads(_values(final, "VOLUME")[0]) == [STATE_DIR]
    assert _command_line() == ["edm", "run", f"{TOPOLOGY_DIR}/topology.yaml", "--state-dir", STATE_DIR]
    ignored = (ROOT / ".dockerignore").read_text()
    assert ".venv" not in ignored or "*" in ignored.splitlines()  # the build context stays small


def _builder_sources(destination: Path) -> Path:
    """What the builder stage copies, laid out in ``destination`` as COPY does (a directory's
    contents go to the target; files go into a target ending in '/', or to it as named)."""
    for copy in _values(_stages()[0], "COPY"):
        *sources, target = copy.split()
        into = destination / target
        for source in sources:
            path = ROOT / source
            if path.is_dir():
                shutil.copytree(path, into, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                dest = into / path.name if target.endswith("/") else into
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, dest)
    return destination


def test_the_image_command_line_runs_from_the_wheel_in_a_fresh_venv(tmp_path: Path) -> None:
    sources = _builder_sources(tmp_path / "src")
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--wheel-dir", str(wheels),
                    str(sources)], check=True, capture_output=True, text=True, timeout=240)
    [wheel] = wheels.glob("edm_runner-*.whl")

    # A fresh venv with the wheel installed; its dependencies are this test run's own
    # (a .pth names their directory), so the test needs no index. The project comes from the wheel.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                    "--no-deps", "--no-index", str(wheel)], check=True, capture_output=True, timeout=240)
    python = str(venv / "bin" / "python")
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "_test_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    env.pop("EDM_BROKER", None)
    where = subprocess.run([python, "-c", "import edm_runner; print(edm_runner.__file__)"],
                           check=True, capture_output=True, text=True, cwd=tmp_path, env=env).stdout
    assert where.startswith(str(site)), where

    # The chart's mounts: the topology directory and the state volume, here under tmp_path.
    root = tmp_path / "root"
    topology_dir = root / TOPOLOGY_DIR.lstrip("/")
    shutil.copytree(TOPOLOGIES / "quickstart", topology_dir)
    shutil.copytree(ROOT / "schemas", root / "schemas")  # the quickstart's ../../schemas
    (root / STATE_DIR.lstrip("/")).mkdir(parents=True)
    command = [str(root / arg.lstrip("/")) if arg.startswith((TOPOLOGY_DIR, STATE_DIR)) else arg
               for arg in _command_line()]
    state = ["--state-dir", str(root / STATE_DIR.lstrip("/"))]
    topology = str(topology_dir / "topology.yaml")
    produced = subprocess.run(["edm", "produce", "orders", "-t", topology, "-f", str(topology_dir / "orders.jsonl"),
                               *state], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert produced.returncode == 0, produced.stderr

    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        seen = []
        assert proc.stderr is not None
        for line in proc.stderr:  # the quickstart logs each large order it writes
            seen.append(line)
            if sum("large order" in s for s in seen) == 3:
                break
        else:
            pytest.fail(f"`{' '.join(command)}` exited {proc.wait()} before its outputs:\n{''.join(seen)}")
        proc.send_signal(signal.SIGTERM)  # as the kubelet stops a pod
        rest = proc.stderr.read()
        assert proc.wait(timeout=60) == 0, "".join(seen) + rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = subprocess.run(["edm", "consume", "large-orders", "-t", topology, "--from-beginning", *state],
                         check=True, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120).stdout
    assert sorted(json.loads(line)["key"] for line in out.splitlines()) == ["o-2", "o-3", "o-5"]
