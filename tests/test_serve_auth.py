"""Who may ask (issue 10): bearer tokens per scope (queries, ingest, metrics) from a file or an
environment variable, never inline; optional TLS. Real `edm run` processes, real HTTP(S)."""
from __future__ import annotations

import asyncio
import datetime
import http.client
import ipaddress
import ssl
import time
import uuid
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client.parser import text_string_to_metric_families

from cli_helpers import edm
from edm_runner.brokers.kafka import KafkaBroker
from helpers.http_calls import call, post_json
from helpers.kafka_flow import Runner
from helpers.reliability_flow import events, produce, reference_counts, write_topology
from helpers.serve_flow import serving_urls
from test_serve_ingest import click, write_ingest_topology

QUERY, INGEST, METRICS = "q-" + uuid.uuid4().hex, "i-" + uuid.uuid4().hex, "m-" + uuid.uuid4().hex


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, and its key (PEM files)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edm test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = directory / "tls.crt", directory / "tls.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def refused(url: str, token: str, **kwargs: object) -> dict[tuple[str, str], float]:
    """(scope, status) -> refused requests, from /metrics."""
    status, _, text = call(f"{url}/metrics", headers=bearer(token), **kwargs)
    assert status == 200, text
    return {(s.labels["scope"], s.labels["status"]): s.value for f in text_string_to_metric_families(text)
            for s in f.samples if s.name == "edm_http_refused_requests_total"}


def test_tokens_per_scope_from_a_file_and_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"auth-{uuid.uuid4().hex[:8]}"
    (tmp_path / "query-tokens").write_text(f"# tokens of the dashboards\n{QUERY}\n\n")
    (tmp_path / "metrics-tokens").write_text(f"{METRICS}\n")
    monkeypatch.setenv("EDM_TEST_INGEST_TOKENS", f"old-token, {INGEST}")
    topology = write_ingest_topology(tmp_path, name, None, http_extra="""\
  auth:
    queries: {tokens_file: query-tokens}
    ingest: {tokens_env: EDM_TEST_INGEST_TOKENS}
    metrics: {tokens_file: metrics-tokens}
""")
    runner = Runner(topology, "--state-dir", str(tmp_path / "state"))
    try:
        url = serving_urls(runner)[name]
        # Probes are open.
        assert call(f"{url}/healthz")[0] == 200
        # Ingestion: no token, a malformed header, an unknown token, another scope's token, its own.
        status, headers, body = post_json(f"{url}/clicks", click("u-1"))
        assert (status, body["error"]) == (401, "unauthorized") and headers["WWW-Authenticate"].startswith("Bearer")
        status, _, body = post_json(f"{url}/clicks", click("u-1"), headers={"Authorization": f"Basic {INGEST}"})
        assert (status, body["error"]) == (401, "unauthorized")
        status, _, body = post_json(f"{url}/clicks", click("u-1"), headers=bearer("guess"))
        assert (status, body["error"]) == (401, "invalid_token")
        status, _, body = post_json(f"{url}/clicks", click("u-1"), headers=bearer(METRICS))
        assert (status, body["error"]) == (403, "forbidden") and "ingest" in body["message"]
        assert post_json(f"{url}/clicks", click("u-1"), headers=bearer(INGEST))[0] == 200
        assert post_json(f"{url}/clicks", click("u-1"), headers=bearer("old-token"))[0] == 200
        # Queries: refused before the path is even looked at.
        status, _, body = call(f"{url}/stores/anything/keys/k")
        assert (status, body["error"]) == (401, "unauthorized")
        status, _, body = call(f"{url}/stores/anything/keys/k", headers=bearer(INGEST))
        assert status == 403
        assert call(f"{url}/stores/anything/keys/k", headers=bearer(QUERY))[0] == 404  # past auth
        # Metrics: protected too, and they count every refusal.
        status, _, body = call(f"{url}/metrics", headers=bearer(QUERY))
        assert (status, body["error"]) == (403, "forbidden")
        counts = refused(url, METRICS)
        assert counts == {("ingest", "401"): 3, ("ingest", "403"): 1, ("queries", "401"): 1,
                          ("queries", "403"): 1, ("metrics", "403"): 1}
    finally:
        assert runner.stop() == 0, runner.stderr()
    assert QUERY not in runner.stderr() and INGEST not in runner.stderr()  # tokens are never logged


def test_an_empty_token_source_refuses_to_start(tmp_path: Path) -> None:
    (tmp_path / "tokens").write_text("\n# nobody\n")
    topology = write_ingest_topology(tmp_path, f"auth-{uuid.uuid4().hex[:8]}", None, http_extra="""\
  auth: {ingest: {tokens_file: tokens}}
""")
    result = edm("run", topology, "--until-idle", "--state-dir", tmp_path / "state")
    assert result.code == 1, result.stderr
    assert "ingest tokens" in result.stderr and "are empty" in result.stderr and "Traceback" not in result.stderr


def test_tls(tmp_path: Path) -> None:
    name = f"tls-{uuid.uuid4().hex[:8]}"
    cert, key = self_signed(tmp_path)
    (tmp_path / "metrics-tokens").write_text(f"{METRICS}\n")
    topology = write_ingest_topology(tmp_path, name, None, http_extra="""\
  tls: {cert_file: tls.crt, key_file: tls.key}
  auth: {metrics: {tokens_file: metrics-tokens}}
""")
    runner = Runner(topology, "--state-dir", str(tmp_path / "state"))
    try:
        url = serving_urls(runner)[name]
        assert url.startswith("https://127.0.0.1:")
        trusted = ssl.create_default_context(cafile=str(cert))
        status, _, body = post_json(f"{url}/clicks", click("u-1"), context=trusted)
        assert status == 200, body
        assert refused(url, METRICS, context=trusted) == {}
        with pytest.raises(OSError, match="CERTIFICATE_VERIFY_FAILED"):  # not trusted: refused by the client
            call(f"{url}/healthz", context=ssl.create_default_context())
        with pytest.raises((OSError, http.client.HTTPException)):  # plain HTTP on the TLS port: no answer
            call(url.replace("https://", "http://") + "/healthz", timeout_s=5)
    finally:
        assert runner.stop() == 0, runner.stderr()


def test_a_missing_tls_file_is_reported_at_its_key(tmp_path: Path) -> None:
    """A literal path: `edm validate` says which file at its key; a templated one (a secret mounted
    where edm runs) passes validate and `edm run` reports it at its key, once rendered."""
    self_signed(tmp_path)
    topology = write_ingest_topology(tmp_path, f"tls-{uuid.uuid4().hex[:8]}", None, http_extra="""\
  tls:
    cert_file: tls.crt
    key_file: no-such.key
""")
    line = topology.read_text().splitlines().index("    key_file: no-such.key") + 1
    result = edm("validate", topology)
    assert result.code == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"{topology}:{line}:15: TLS private key file 'no-such.key' does not exist" in result.stderr
    assert "template its path" in result.stderr
    topology.write_text(topology.read_text().replace(
        "key_file: no-such.key", "key_file: \"{{ env.EDM_TLS_DIR | default('secrets') }}/tls.key\""))
    assert edm("validate", topology).code == 0
    result = edm("run", topology, "--until-idle", "--state-dir", tmp_path / "state")
    assert result.code == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"{topology}:{line}:15: TLS private key file http.tls.key_file does not exist" in result.stderr
    assert str(tmp_path / "secrets" / "tls.key") in result.stderr


@pytest.mark.kafka
def test_the_proxy_hop_authenticates_over_tls(tmp_path: Path, kafka_bootstrap: str) -> None:
    """Two instances on Kafka serving HTTPS with query tokens: a query for a key the other
    instance owns is forwarded with the client's token (counted as proxied), a hop header alone
    grants nothing, and a refused request is never forwarded."""
    name = f"hop-{uuid.uuid4().hex[:8]}"
    self_signed(tmp_path)
    (tmp_path / "query-tokens").write_text(f"{QUERY}\n")
    (tmp_path / "metrics-tokens").write_text(f"{METRICS}\n")
    topology = write_topology(tmp_path, name, kafka_bootstrap)
    topology.write_text(topology.read_text() + """\
http:
  listen: "127.0.0.1:0"
  serve: [counts]
  tls: {cert_file: tls.crt, key_file: tls.key}
  auth: {queries: {tokens_file: query-tokens}, metrics: {tokens_file: metrics-tokens}}
""")
    inputs = events()
    expected = reference_counts(inputs)
    asyncio.run(_produce(kafka_bootstrap, name, inputs))
    trusted = ssl.create_default_context(cafile=str(tmp_path / "tls.crt"))
    first = Runner(topology, "--state-dir", str(tmp_path / "a"), "--instance-id", "a")
    second = Runner(topology, "--state-dir", str(tmp_path / "b"), "--instance-id", "b")
    try:
        urls = [serving_urls(first)[name], serving_urls(second)[name]]
        deadline = time.monotonic() + 90
        while True:  # until both hold one task and every count is complete, asked of the first
            tasks = [call(f"{u}/readyz", context=trusted)[2].get("tasks", {}).get("active") for u in urls]
            answers = {key: call(f"{urls[0]}/stores/counts/keys/{key}", headers=bearer(QUERY), context=trusted)
                       for key in expected}
            if tasks == [1, 1] and all(a[0] == 200 and a[2]["value"] == expected[k] for k, a in answers.items()):
                break
            assert first.alive() and second.alive(), first.stderr() + second.stderr()
            assert time.monotonic() < deadline, (tasks, {k: a[:1] + a[2:] for k, a in answers.items()})
            time.sleep(0.2)  # processing in other processes: polled
        proxied = {s.labels["status"]: s.value for f in text_string_to_metric_families(
            call(f"{urls[0]}/metrics", headers=bearer(METRICS), context=trusted)[2])
            for s in f.samples if s.name == "edm_http_proxied_requests_total"}
        assert proxied.get("200", 0) > 0, proxied  # some keys live on the second instance
        key = next(iter(expected))
        status, _, body = call(f"{urls[1]}/stores/counts/keys/{key}", headers={"X-Edm-Hop": "1"}, context=trusted)
        assert (status, body["error"]) == (401, "unauthorized")  # the hop header grants nothing
        for token in (None, METRICS):
            for url in urls:
                status, _, _ = call(f"{url}/stores/counts/keys/{key}", context=trusted,
                                    headers=bearer(token) if token else {})
                assert status == (403 if token else 401)
        refused_second = refused(urls[1], METRICS, context=trusted)
        assert refused_second == {("queries", "401"): 2, ("queries", "403"): 1}  # nothing forwarded refused
    finally:
        assert second.stop() == 0, second.stderr()
        assert first.stop() == 0, first.stderr()


async def _produce(kafka_bootstrap: str, name: str, inputs: list) -> None:
    broker = KafkaBroker({"bootstrap_servers": kafka_bootstrap})
    await broker.start()
    try:
        await produce(broker, name, inputs)
    finally:
        await broker.close()
