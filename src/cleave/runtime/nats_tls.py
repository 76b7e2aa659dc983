"""TLS for NATS: certificates for the embedded server, contexts for every client.

With ``[nats] tls = true``, ``cleave up`` makes a CA and a server certificate
(for ``127.0.0.1`` and ``localhost``) under ``.cleave/nats-tls`` with
`cryptography`_ (EC P-256 keys, files mode 0600, folder 0700), starts its
nats-server with them, and every worker verifies the server against that CA.
Each ``cleave up`` makes new ones: restarting rotates them.

For an external server, ``[nats] ca``, ``cert`` and ``key`` (or
``CLEAVE_NATS_CA``, ``CLEAVE_NATS_CERT``, ``CLEAVE_NATS_KEY``) name the CA
to trust and a client certificate for servers that ask for one.

.. _cryptography: https://cryptography.io
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from pathlib import Path
from typing import TYPE_CHECKING

from cleave.errors import ConfigError
from cleave.runtime.nats_auth import private_dir, write_private

if TYPE_CHECKING:
    from cleave.app import LoadedApp
    from cleave.config import NatsSettings

__all__ = ["client_context", "make_certificates", "server_block", "tls_dir"]

_DAYS = 365


def tls_dir(loaded: LoadedApp) -> Path:
    return loaded.state_dir / "nats-tls"


def make_certificates(folder: Path) -> Path:
    """A new CA, and a server certificate it signed, in ``folder``; returns the folder."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    private_dir(folder)
    now = dt.datetime.now(dt.UTC)

    def pem_key(key: ec.EllipticCurvePrivateKey) -> str:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("cleave nats CA"))
        .issuer_name(name("cleave nats CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(name("cleave nats server"))
        .issuer_name(ca.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=_DAYS))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        # Python 3.13's strict verification wants the key identifiers.
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    write_private(folder / "ca.pem", ca.public_bytes(pem).decode())
    write_private(folder / "ca-key.pem", pem_key(ca_key))
    write_private(folder / "server.pem", server.public_bytes(pem).decode())
    write_private(folder / "server-key.pem", pem_key(server_key))
    return folder


def server_block(folder: Path) -> str:
    """The ``tls`` block of nats-server.conf for the certificates in ``folder``."""

    def q(p: Path) -> str:
        return str(p).replace("\\", "/")

    return (
        "tls {\n"
        f'  cert_file: "{q(folder / "server.pem")}"\n'
        f'  key_file: "{q(folder / "server-key.pem")}"\n'
        "  timeout: 5\n"
        "}\n"
    )


def _readable(path: str, what: str, setting: str) -> str:
    if not Path(path).is_file():
        raise ConfigError(
            f"[nats] {setting} = {path!r}: no such file ({what}); fix the path in cleave.toml "
            f"or CLEAVE_NATS_{setting.upper()}"
        )
    return path


def client_context(loaded: LoadedApp) -> ssl.SSLContext | None:
    """The TLS context workers connect with, or None for plain TCP.

    The embedded server (no ``[nats] url``): its CA under ``.cleave`` when
    ``tls = true``. An external one: TLS when ``ca`` or ``cert`` is set, or
    its URL is ``tls://``.
    """
    nats: NatsSettings = loaded.plan.nats
    if not nats.url:
        if not nats.tls:
            return None
        return _context(str(tls_dir(loaded) / "ca.pem"), "", "")
    return external_context(nats)


def external_context(nats: NatsSettings) -> ssl.SSLContext | None:
    """The TLS context for the server at ``nats.url``, from its ``ca``/``cert``/``key``."""
    if bool(nats.cert) != bool(nats.key):
        raise ConfigError(
            "[nats] cert and key go together (a client certificate and its private key); "
            "set both, or neither"
        )
    if not (nats.ca or nats.cert or nats.tls or nats.url.startswith("tls://")):
        return None
    ca = _readable(nats.ca, "the CA to verify the server with", "ca") if nats.ca else ""
    cert = _readable(nats.cert, "the client certificate", "cert") if nats.cert else ""
    key = _readable(nats.key, "the client certificate's key", "key") if nats.key else ""
    return _context(ca, cert, key)


def _context(ca: str, cert: str, key: str) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca or None)
        if cert:
            context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot use the NATS TLS files (ca {ca or 'system'}, cert {cert or 'none'}): "
            f"{exc}; check they are PEM files and the key matches the certificate"
        ) from None
    return context
