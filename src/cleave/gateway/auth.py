"""Bearer tokens at the gateway: who is calling, and whether a route lets them.

Each route declares who may call it (``auth=`` on :class:`~cleave.Gateway`
routes): ``"public"`` (anyone, token or not), ``"user"`` (any valid token,
the default) or ``Scope("admin")`` (a valid token granting that scope). The
:class:`Authenticator` checks the ``Authorization: Bearer`` token:

- signed with one of the algorithms ``cleave.toml`` names (``[auth]
  algorithms``), never one the token picks: ``none`` and HMAC are refused
  when the settings load, and a key is used only with algorithms of its own
  type, so a public key can never serve as an HMAC secret;
- by a key of the issuer: a JWKS fetched over https (cached ``jwks_ttl``
  seconds, fetched again, at most every 30 s, for an unknown ``kid``), a
  PEM public key file, or, when ``[auth]`` names no issuer, the dev issuer's
  key (:mod:`cleave.gateway.devissuer`);
- with ``iss``, ``aud``, ``exp`` and ``sub`` present and right, ``nbf`` if
  present, ``leeway`` seconds of clock skew allowed.

A missing or bad token is a 401 with ``WWW-Authenticate: Bearer`` (and
``error="invalid_token"`` with a description, RFC 6750); a valid one without
the route's scope is a 403 (``error="insufficient_scope"``). Scopes come from
the ``scope`` claim (space-separated, OAuth 2) or ``scp`` (a list).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from cleave.config import AuthSettings
from cleave.context import ANONYMOUS, Identity
from cleave.errors import ConfigError
from cleave.gateway import devissuer
from cleave.gateway.access import Access, Scope

__all__ = ["AuthFailure", "Authenticator"]


class AuthFailure(Exception):
    """A request the gateway refuses: 401 (no or bad token) or 403 (scope missing)."""

    def __init__(self, status: int, message: str, challenge: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        #: The ``WWW-Authenticate`` header's value.
        self.challenge = challenge


def _quoted(text: str) -> str:
    # A quoted-string of RFC 9110 that any client parses: printable ASCII, no quote or backslash.
    return "".join(c if " " <= c <= "~" and c not in '"\\' else "?" for c in text)


def _key_fits(alg: str, key: Any) -> bool:
    """Whether ``key`` is of the type algorithm ``alg`` verifies with (no cross-type use)."""
    if alg[:2] in ("RS", "PS"):
        return isinstance(key, rsa.RSAPublicKey)
    if alg == "EdDSA":
        return isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey)
    curve = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1, "ES512": ec.SECP521R1}.get(alg)
    return (
        curve is not None
        and isinstance(key, ec.EllipticCurvePublicKey)
        and isinstance(key.curve, curve)
    )


class _Jwks:
    """The issuer's keys by ``kid``, fetched (in a thread: PyJWT's client blocks) and cached."""

    #: At most one refresh this often for a ``kid`` not in the cache (a forged kid costs nothing).
    min_refresh = 30.0

    def __init__(self, url: str, ttl: float) -> None:
        self.url = url
        self.ttl = ttl
        self.client = jwt.PyJWKClient(url, cache_jwk_set=False, timeout=5)
        self.keys: dict[str | None, Any] = {}
        self.fetched = -float("inf")
        #: After a failed fetch, none before this (monotonic): a down issuer is not hammered.
        self.retry_at = 0.0
        self.error = ""
        self.lock = asyncio.Lock()

    def _stale(self, kid: str | None) -> bool:
        now = time.monotonic()
        if now < self.retry_at:
            return False
        age = now - self.fetched
        return age > self.ttl or (kid not in self.keys and age > self.min_refresh)

    async def key(self, kid: str | None) -> Any:
        if self._stale(kid):
            async with self.lock:
                if self._stale(kid):  # not refreshed by another request while we waited
                    await self._refresh()
        if not self.keys and self.error:
            raise AuthFailure(503, self.error, "")
        if kid is None and len(self.keys) == 1:
            return next(iter(self.keys.values()))
        key = self.keys.get(kid)
        if key is None:
            raise AuthFailure(401, f"no key with kid {kid!r} in the issuer's JWKS", "")
        return key

    async def _refresh(self) -> None:
        try:
            jwks = await asyncio.to_thread(self.client.get_signing_keys, True)
        except jwt.PyJWTError as exc:
            # Keep verifying with the keys we have, if any; try again in a while.
            self.retry_at = time.monotonic() + self.min_refresh
            self.error = f"cannot fetch the issuer's keys from {self.url}: {exc}"
            return
        self.keys = {k.key_id: k.key for k in jwks}
        self.fetched = time.monotonic()
        self.error = ""


class Authenticator:
    """Verifies bearer tokens for one gateway; built from ``[auth]`` and the app's folders."""

    #: Verified tokens remembered at most (see :meth:`_verified`).
    cache_size = 10_000

    def __init__(
        self, settings: AuthSettings, *, app_name: str, root: Path, state_dir: Path
    ) -> None:
        self.realm = _quoted(app_name)
        self.audience = settings.audience or app_name
        self.leeway = settings.leeway
        self.jwks: _Jwks | None = None
        self.static: Any = None
        self.hint = ""
        #: Tokens verified already: token -> (identity, valid until).
        self._cache: dict[str, tuple[Identity, float]] = {}
        if settings.issuer:
            self.issuer = settings.issuer
            self.algorithms = settings.algorithms
            if settings.jwks_url:
                self.jwks = _Jwks(settings.jwks_url, settings.jwks_ttl)
                self.source = f"issuer {self.issuer} (keys from {settings.jwks_url})"
            else:
                path = root / settings.public_key
                self.static = _public_key(path)
                self.source = f"issuer {self.issuer} (key {path})"
        else:
            self.issuer = devissuer.DEV_ISSUER
            self.algorithms = settings.algorithms or (devissuer.DEV_ALGORITHM,)
            self.static = devissuer.dev_key(state_dir).public_key()
            self.source = (
                f"the dev issuer (key {devissuer.key_path(state_dir)}; not for production: "
                "set [auth] issuer)"
            )
            self.hint = f" (get one with `cleave token {root} --sub <account id>`)"
        if self.static is not None:
            unfit = [a for a in self.algorithms if not _key_fits(a, self.static)]
            if unfit:
                raise ConfigError(
                    f"cleave.toml [auth] algorithms: {', '.join(unfit)} cannot verify with "
                    f"the {type(self.static).__name__} of {self.source}; list only the "
                    "algorithms its key type signs with"
                )

    def challenge(self, error: str = "", description: str = "", scope: str = "") -> str:
        parts = [f'realm="{self.realm}"']
        if error:
            parts.append(f'error="{error}"')
        if description:
            parts.append(f'error_description="{_quoted(description)}"')
        if scope:
            parts.append(f'scope="{_quoted(scope)}"')
        return "Bearer " + ", ".join(parts)

    async def identify(self, authorization: str | None, access: Access) -> Identity:
        """The caller's identity (``ANONYMOUS`` without a token), if ``access`` lets it in."""
        if not authorization:
            if access == "public":
                return ANONYMOUS
            raise AuthFailure(
                401,
                f"this route needs a token: send Authorization: Bearer <token>{self.hint}",
                self.challenge(),
            )
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthFailure(
                401,
                f"the Authorization header must be `Bearer <token>`, not `{_quoted(scheme)} ...`",
                self.challenge("invalid_request", "send Authorization: Bearer <token>"),
            )
        try:
            identity = await self._verified(token.strip())
        except AuthFailure as exc:
            if exc.status != 401:
                raise
            message = f"invalid token: {exc.message}"
            raise AuthFailure(401, message, self.challenge("invalid_token", exc.message)) from None
        if isinstance(access, Scope) and not identity.has(access.name):
            raise AuthFailure(
                403,
                f"this route needs the {access.name!r} scope, which the token does not grant",
                self.challenge("insufficient_scope", f"needs scope {access.name}", access.name),
            )
        return identity

    async def _verified(self, token: str) -> Identity:
        """``token``'s identity: verified once, then remembered until it expires.

        A signature check costs ~150 us; a client sends the same token for many
        requests. Only valid tokens are kept, each until its ``exp`` (plus the
        leeway), at most ``cache_size`` of them.
        """
        hit = self._cache.get(token)
        if hit is not None:
            identity, expires = hit
            if time.time() < expires:
                return identity
            del self._cache[token]
        identity, expires = await self._verify(token)
        if len(self._cache) >= self.cache_size:
            self._cache.clear()  # rare, and cheap to refill: simpler than an LRU
        self._cache[token] = (identity, expires)
        return identity

    async def _verify(self, token: str) -> tuple[Identity, float]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise AuthFailure(401, f"not a JWT ({exc})", "") from None
        alg = header.get("alg")
        if alg not in self.algorithms:
            raise AuthFailure(
                401, f"alg {alg!r} is not accepted (accepted: {', '.join(self.algorithms)})", ""
            )
        key = self.static if self.jwks is None else await self.jwks.key(header.get("kid"))
        if not _key_fits(alg, key):
            raise AuthFailure(401, f"alg {alg} does not match the issuer's key type", "")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthFailure(401, "the token has expired; get a new one", "") from None
        except jwt.ImmatureSignatureError:
            raise AuthFailure(401, "the token is not valid yet (its nbf or iat)", "") from None
        except jwt.InvalidAudienceError:
            raise AuthFailure(401, f"the token is not for audience {self.audience!r}", "") from None
        except jwt.InvalidIssuerError:
            raise AuthFailure(401, f"the token is not from issuer {self.issuer!r}", "") from None
        except jwt.InvalidSignatureError:
            raise AuthFailure(401, "the signature does not verify", "") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthFailure(401, f"the token has no {exc.claim!r} claim", "") from None
        except jwt.InvalidTokenError as exc:
            raise AuthFailure(401, str(exc), "") from None
        identity = Identity(_subject(claims.get("sub")), _scopes(claims))
        return identity, float(claims["exp"]) + self.leeway


def _subject(sub: object) -> str:
    # It becomes a log field and an event header: a bounded, printable string only.
    if not isinstance(sub, str) or not 1 <= len(sub) <= 255 or not sub.isprintable():
        raise AuthFailure(401, "the `sub` claim must be 1 to 255 printable characters", "")
    return sub


def _scopes(claims: dict[str, Any]) -> tuple[str, ...]:
    raw = claims.get("scope", claims.get("scp", ()))
    items = raw.split() if isinstance(raw, str) else raw
    if not isinstance(items, list | tuple) or not all(isinstance(s, str) for s in items):
        raise AuthFailure(401, "the `scope` claim must be a string of space-separated scopes", "")
    return tuple(sorted(set(items)))


def _public_key(path: Path) -> Any:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"cleave.toml [auth] public_key: cannot read {path} ({exc.strerror}); give the "
            "path of the issuer's PEM public key, relative to the app's folder"
        ) from None
    try:
        return serialization.load_pem_public_key(data)
    except ValueError:
        raise ConfigError(
            f"cleave.toml [auth] public_key: {path} is not a PEM public key "
            "(-----BEGIN PUBLIC KEY-----)"
        ) from None
