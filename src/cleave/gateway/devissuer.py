"""The dev issuer: a signing key under the state folder, so the demo works offline.

When ``[auth]`` names no issuer, the gateway trusts this key, and
``cleave token APP --sub acc-alice [--scope admin] [--ttl 1h]`` prints a
token signed with it. The key is an ECDSA P-256 key (ES256) in
``.cleave/auth/dev-issuer.pem``, made once (mode 0600, in a 0700 folder);
delete the file to rotate it: every token signed with the old one stops
working. It is for a developer's machine and for tests, never for
production, where a real identity provider signs the tokens
(``[auth] issuer``, ``jwks_url``; see docs/security.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cleave.errors import ConfigError

__all__ = ["DEV_ALGORITHM", "DEV_ISSUER", "dev_key", "key_id", "key_path", "mint"]

#: The ``iss`` of dev tokens.
DEV_ISSUER = "cleave-dev"
DEV_ALGORITHM = "ES256"


def key_path(state_dir: Path) -> Path:
    """Where the dev issuer's private key is kept."""
    return state_dir / "auth" / "dev-issuer.pem"


def dev_key(state_dir: Path) -> ec.EllipticCurvePrivateKey:
    """The dev issuer's private key, made on first use (atomically: racing makers agree)."""
    path = key_path(state_dir)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
                f.flush()
                os.fsync(f.fileno())
            # A link fails if another process made the key first: then its key stands.
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"cannot read the dev issuer's key {path}: {exc}; delete the file and a new key "
            "is made (tokens signed with the old one stop working)"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{path} is not an EC key; delete it and a new key is made")
    return key


def key_id(key: ec.EllipticCurvePublicKey) -> str:
    """A short, stable id of ``key`` (the token's ``kid``): tells a rotated key at a glance."""
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()[:16]


def mint(
    state_dir: Path,
    *,
    subject: str,
    audience: str,
    scopes: tuple[str, ...] = (),
    ttl: float = 3600.0,
) -> str:
    """A token for ``subject`` signed by the dev issuer of ``state_dir``, valid ``ttl`` seconds."""
    if not subject:
        raise ConfigError("a token needs a subject (--sub), e.g. an account id: acc-alice")
    if ttl <= 0:
        raise ConfigError(f"a token's lifetime must be positive, got {ttl:g}s")
    key = dev_key(state_dir)
    now = int(time.time())
    claims: dict[str, object] = {
        "iss": DEV_ISSUER,
        "aud": audience,
        "sub": subject,
        "iat": now,
        "nbf": now,
        "exp": now + int(ttl),
    }
    if scopes:
        claims["scope"] = " ".join(scopes)
    return jwt.encode(
        claims, key, algorithm=DEV_ALGORITHM, headers={"kid": key_id(key.public_key())}
    )
