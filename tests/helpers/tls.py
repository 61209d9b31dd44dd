"""TLS material the tests make: a CA, a broker certificate it signs for 127.0.0.1 and localhost
and a client certificate, in the files a Kafka broker (PKCS12 keystore, PEM CA) and a client
(PEM CA, certificate and encrypted key) read; and ``SecureKafka``, how a client reaches the
session broker's secure listeners."""
from __future__ import annotations

import asyncio
import datetime
import ipaddress
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from edm_runner.brokers.kafka import KafkaBroker
from edm_runner.errors import BrokerError


@dataclass(frozen=True)
class SecureKafka:
    """The SASL_SSL listener and a SCRAM user on it; the SSL listener (``ssl_bootstrap``) that
    takes the client certificate ``tls.client_cert``. ``tls.ca_file`` signed every certificate."""

    bootstrap: str
    ssl_bootstrap: str
    tls: BrokerTls
    username: str
    password: str
    mechanism: str = "SCRAM-SHA-512"

    @property
    def ca_file(self) -> Path:
        return self.tls.ca_file

    def security(self, **changes: Any) -> dict[str, Any]:
        """The ``broker.security`` options that connect (``changes`` replace some; None drops one)."""
        options = {"protocol": "SASL_SSL", "sasl_mechanism": self.mechanism, "username": self.username,
                   "password": self.password, "ssl_cafile": str(self.ca_file), **changes}
        return {k: v for k, v in options.items() if v is not None}

    def broker(self, **changes: Any) -> KafkaBroker:
        return KafkaBroker({"bootstrap_servers": self.bootstrap, "security": self.security(**changes)})

    def wait_until_accepted(self, timeout_s: float = 30.0) -> None:
        """Until the listener accepts the user: the controller stores new credentials before
        the broker applies them."""
        async def login() -> None:
            broker = self.broker()
            try:
                await broker.start()
            finally:
                await broker.close()

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return asyncio.run(login())
            except BrokerError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.1)  # no event to await: the broker is asked again


@dataclass(frozen=True)
class BrokerTls:
    """``ca_file``: the CA certificate (PEM) clients trust and the broker trusts client
    certificates of; ``keystore``: the broker's key and certificate chain (PKCS12, protected by
    ``password``); ``client_cert`` and ``client_key`` (PEM, encrypted with ``client_key_password``):
    a client's certificate."""

    ca_file: Path
    keystore: Path
    password: str
    client_cert: Path
    client_key: Path
    client_key_password: str = "edm-test-client-key"


def make_ca(directory: Path, name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate, Path]:
    """A self-signed CA: its key, its certificate, and the PEM file ``directory/<name>.pem``."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"edm test {name}")])
    cert = (_builder(subject, subject, key)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    path = directory / f"{name}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert, path


def make_broker_tls(directory: Path, password: str = "edm-test-keystore") -> BrokerTls:
    """A CA, a broker certificate it signs (SAN 127.0.0.1 and localhost) and a client
    certificate, in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert, ca_file = make_ca(directory, "ca")
    client_cert, client_key = directory / "client.pem", directory / "client-key.pem"
    tls = BrokerTls(ca_file, directory / "broker.p12", password, client_cert, client_key)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (_builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edm-client")]), ca_cert.subject, key)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    client_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    client_key.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(tls.client_key_password.encode())))
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    cert = (_builder(subject, ca_cert.subject, key)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    tls.keystore.write_bytes(pkcs12.serialize_key_and_certificates(
        b"broker", key, cert, [ca_cert], serialization.BestAvailableEncryption(password.encode())))
    return tls


def _builder(subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2)))
