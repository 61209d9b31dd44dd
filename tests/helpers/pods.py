"""The pods of a rendered charts/edm StatefulSet, run here as processes, as a kubelet would.

``pods_of(manifests, root)`` reads the StatefulSet and its ConfigMap and returns one ``Pod`` per
replica. A pod's process gets what its container would:

- the container's ``command`` (the image's ``edm``: the project under test, ``python -m edm_runner``)
  + ``args``, with every path under a volume mount replaced by the
  directory standing for that volume here (the longest mount path first);
- its ``env`` in order: ``value`` with Kubernetes' ``$(VAR)`` expansion of the variables defined
  before it (``$$`` escapes), ``valueFrom.fieldRef`` filled in (``metadata.name``: the pod name
  ``<statefulset>-<ordinal>``, ``metadata.namespace``, ``status.podIP``: 127.0.0.<ordinal + 1>,
  so every pod binds its own address as it would its own IP); nothing of the test's environment
  but PATH;
- its volumes: the ConfigMap's keys written to files at their ``items`` paths (a directory
  mount, as the chart makes it), the volumeClaimTemplate's volume kept across restarts of the
  pod (a PersistentVolumeClaim), an ``emptyDir`` new at each start (a recreated pod gets a new one);
- its probes: ``probe(kind)`` runs the container's startup, liveness or readiness ``httpGet``
  as the kubelet does (the pod's IP, the named port, success = 200..399 within timeoutSeconds).

``stop()`` sends SIGTERM and waits at most ``terminationGracePeriodSeconds`` (the kubelet then
sends SIGKILL: here the test fails).
"""
from __future__ import annotations

import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' expansion of ``$(VAR)`` in an env value: defined variables only, ``$$`` is ``$``."""
    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))
    return _REF.sub(sub, value)


@dataclass
class Pod:
    name: str
    ordinal: int
    namespace: str
    container: dict[str, Any]
    spec: dict[str, Any]
    configmaps: dict[str, dict[str, str]]
    claim_names: list[str]
    root: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    logs: list[Path] = field(default_factory=list)

    @property
    def ip(self) -> str:
        return f"127.0.0.{self.ordinal + 1}"

    @property
    def grace_s(self) -> int:
        return int(self.spec["terminationGracePeriodSeconds"])

    def _volumes(self) -> dict[str, Path]:
        """Volume name -> the directory standing for it, made as the kubelet makes them."""
        dirs: dict[str, Path] = {}
        for claim in self.claim_names:  # PersistentVolumeClaim <claim>-<pod>: survives restarts
            dirs[claim] = self.root / "pvc" / f"{claim}-{self.name}"
            dirs[claim].mkdir(parents=True, exist_ok=True)
        for volume in self.spec["volumes"]:
            path = self.root / "pods" / self.name / f"start{self.starts}" / volume["name"]
            if "configMap" in volume:
                data = self.configmaps[volume["configMap"]["name"]]
                items = volume["configMap"].get("items") or [{"key": k, "path": k} for k in data]
                for item in items:
                    target = path / item["path"]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_text(data[item["key"]])
            elif "emptyDir" in volume:
                path.mkdir(parents=True)
            else:
                raise AssertionError(f"the simulation has no stand-in for volume {volume}")
            dirs[volume["name"]] = path
        return dirs

    def _env(self) -> dict[str, str]:
        fields = {"metadata.name": self.name, "metadata.namespace": self.namespace, "status.podIP": self.ip}
        env: dict[str, str] = {}
        for var in self.container.get("env", []):
            if "value" in var:
                env[var["name"]] = expand(var["value"], env)
            elif "fieldRef" in var.get("valueFrom", {}):
                env[var["name"]] = fields[var["valueFrom"]["fieldRef"]["fieldPath"]]
            else:
                raise AssertionError(f"the simulation has no stand-in for {var}")
        return env

    def command(self) -> tuple[list[str], dict[str, str]]:
        """The process the container runs (its paths moved to this pod's volumes) and its env."""
        mounts = {m["mountPath"]: m["name"] for m in self.container["volumeMounts"]}
        dirs = self._volumes()

        def here(arg: str) -> str:
            for mount in sorted(mounts, key=len, reverse=True):
                if arg == mount or arg.startswith(mount.rstrip("/") + "/"):
                    return str(dirs[mounts[mount]]) + arg[len(mount):]
            return arg

        argv = [here(a) for a in [*self.container["command"], *self.container.get("args", [])]]
        # The image's `edm` is the project under test, run by this interpreter.
        assert argv[0] == "edm", f"the simulation runs the edm image's command, not {argv[0]}"
        env = {**self._env(), "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin"}
        return [sys.executable, "-m", "edm_runner", *argv[1:]], env

    def start(self) -> None:
        argv, env = self.command()
        log = self.root / "pods" / self.name / f"start{self.starts}.log"
        self.starts += 1
        self.logs.append(log)
        with log.open("wb") as err:
            self.proc = subprocess.Popen(argv, env=env, cwd=self.root, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=err)

    # The interface of helpers.kafka_flow.Runner, for helpers.serve_flow's waits.
    def stderr(self) -> str:
        return self.logs[-1].read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def probe(self, kind: str) -> bool:
        """The container's ``<kind>Probe`` (startup, liveness, readiness) once, as the kubelet runs it."""
        spec = self.container[f"{kind}Probe"]["httpGet"]
        ports = {p["name"]: p["containerPort"] for p in self.container["ports"]}
        port = ports.get(spec["port"], spec["port"])
        url = f"{spec.get('scheme', 'HTTP').lower()}://{self.ip}:{port}{spec['path']}"
        try:
            with urllib.request.urlopen(url, timeout=self.container[f"{kind}Probe"]["timeoutSeconds"]) as answer:
                return 200 <= answer.status < 400
        except urllib.error.HTTPError as e:
            return 200 <= e.code < 400
        except OSError:
            return False

    def stop(self) -> int:
        """SIGTERM, as the kubelet stops a container; its exit status within the grace period."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(self.grace_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"{self.name} was still running after the grace period "
                                 f"({self.grace_s} s): the kubelet would SIGKILL it\n{self.stderr()}") from None

    def kill(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(10)


def pods_of(manifests: list[dict[str, Any]], root: Path) -> list[Pod]:
    """One ``Pod`` per replica of the (single) StatefulSet of ``manifests``."""
    (sts,) = [m for m in manifests if m["kind"] == "StatefulSet"]
    configmaps = {m["metadata"]["name"]: m["data"] for m in manifests if m["kind"] == "ConfigMap"}
    spec = sts["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    claims = [c["metadata"]["name"] for c in sts["spec"].get("volumeClaimTemplates", [])]
    namespace = sts["metadata"].get("namespace", "apps")
    return [Pod(f"{sts['metadata']['name']}-{i}", i, namespace, container, spec, configmaps, claims, root)
            for i in range(sts["spec"]["replicas"])]
