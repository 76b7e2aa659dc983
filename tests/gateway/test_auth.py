"""Bearer tokens at the gateway: every bad token is a 401, settings fail early and clearly.

The shop runs in a Harness (the monolith placement): verification happens at
the gateway, before any call, so the placement does not matter here (the
authorization matrix in tests/shop runs both).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import msgspec
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from cleave.config import AuthSettings, GatewaySettings, Plan, load_plan
from cleave.errors import ConfigError
from cleave.gateway.devissuer import DEV_ISSUER, dev_key, key_id, key_path
from cleave.testing import Harness

PRIVATE = "/v1/accounts/acc-alice"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"iss": DEV_ISSUER, "aud": "shop", "sub": "acc-alice", "iat": now, "exp": now + 600}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


@pytest.fixture
async def shop(tmp_path: Path) -> AsyncIterator[Harness]:
    from shop.app import app

    async with Harness(app, tmp_path) as h:
        yield h


async def get(h: Harness, path: str, token: str | None = None, **headers: str) -> httpx.Response:
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    transport = httpx.ASGITransport(app=h.asgi)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
        return await http.get(path, headers=headers)


def signed(h: Harness, payload: dict[str, Any], **headers: Any) -> str:
    key = dev_key(h.loaded.state_dir)
    return jwt.encode(
        payload, key, algorithm="ES256", headers={"kid": key_id(key.public_key()), **headers}
    )


async def test_a_dev_token_is_accepted_and_its_key_kept_private(shop: Harness) -> None:
    resp = await get(shop, PRIVATE, shop.token("acc-alice"))
    assert resp.status_code == 200, resp.text
    path = key_path(shop.loaded.state_dir)
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o077 == 0


async def test_no_token_is_a_401_with_a_bearer_challenge(shop: Harness) -> None:
    resp = await get(shop, PRIVATE)
    assert resp.status_code == 401
    assert resp.headers["www-authenticate"] == 'Bearer realm="shop"'
    assert resp.json()["error"]["kind"] == "Unauthenticated"
    assert "(get one with `cleave token " in resp.json()["error"]["message"]
    basic = await get(shop, PRIVATE, authorization="Basic YWxpY2U6c2VjcmV0")
    assert basic.status_code == 401
    assert 'error="invalid_request"' in basic.headers["www-authenticate"]


def _cases(h: Harness) -> dict[str, tuple[str, str]]:
    """Bad tokens, by name: (token, what the error description says)."""
    now = int(time.time())
    public_pem = (
        dev_key(h.loaded.state_dir)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    good = signed(h, claims())
    head, _, sig = good.split(".")
    tampered = f"{head}.{b64(json.dumps(claims(sub='acc-bob')).encode())}.{sig}"
    none_head = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    unsigned = f"{none_head}.{b64(json.dumps(claims()).encode())}."
    hs_head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    hs_body = b64(json.dumps(claims()).encode())
    hs_sig = hmac.new(public_pem, f"{hs_head}.{hs_body}".encode(), hashlib.sha256).digest()
    stranger = ec.generate_private_key(ec.SECP256R1())
    return {
        "expired": (signed(h, claims(iat=now - 7200, exp=now - 3600)), "expired"),
        "wrong aud": (signed(h, claims(aud="another-app")), "audience"),
        "wrong iss": (signed(h, claims(iss="https://evil.example")), "issuer"),
        "not yet valid": (signed(h, claims(nbf=now + 3600)), "not valid yet"),
        "no exp": (signed(h, claims(exp=None)), "'exp'"),
        "no sub": (signed(h, claims(sub=None)), "'sub'"),
        "alg none": (unsigned, "alg 'none' is not accepted"),
        "wrong key": (jwt.encode(claims(), stranger, algorithm="ES256"), "signature"),
        "tampered payload": (tampered, "signature"),
        "HS256 with the public key": (f"{hs_head}.{hs_body}.{b64(hs_sig)}", "alg 'HS256'"),
        "garbage": ("not.a.jwt", "not a JWT"),
    }


async def test_every_bad_token_is_a_401_that_says_why(shop: Harness) -> None:
    for name, (token, why) in _cases(shop).items():
        resp = await get(shop, PRIVATE, token)
        assert resp.status_code == 401, (name, resp.text)
        challenge = resp.headers["www-authenticate"]
        assert challenge.startswith('Bearer realm="shop", error="invalid_token"'), name
        assert why in resp.json()["error"]["message"], (name, resp.json())
        # A public route refuses a bad token too: a client's mistake is not silently ignored.
        assert (await get(shop, "/v1/products", token)).status_code == 401, name


async def test_a_missing_scope_is_a_403(shop: Harness) -> None:
    resp = await get(shop, "/v1/accounts", shop.token("acc-alice"))
    assert resp.status_code == 403
    assert resp.headers["www-authenticate"] == (
        'Bearer realm="shop", error="insufficient_scope", '
        'error_description="needs scope admin", scope="admin"'
    )
    assert (await get(shop, "/v1/accounts", shop.token("ops", "admin"))).status_code == 200


async def test_the_leeway_forgives_a_little_clock_skew(shop: Harness) -> None:
    now = int(time.time())
    assert (await get(shop, PRIVATE, signed(shop, claims(exp=now - 5)))).status_code == 200
    assert (await get(shop, PRIVATE, signed(shop, claims(nbf=now + 5)))).status_code == 200


# -- a real issuer: a JWKS over HTTP, or a public key file ---------------------------------------


class Jwks:
    """A JWKS document served on 127.0.0.1, counting how often it is fetched."""

    def __init__(self, keys: list[dict[str, Any]]) -> None:
        self.keys = keys
        self.fetches = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.fetches += 1
                body = json.dumps({"keys": outer.keys}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Jwks:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def rsa_jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    jwk: dict[str, Any] = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    return {**jwk, "kid": kid, "use": "sig", "alg": "RS256"}


@pytest.fixture
def issuer() -> Iterator[tuple[Jwks, rsa.RSAPrivateKey]]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with Jwks([rsa_jwk(key, "k1")]) as jwks:
        yield jwks, key


async def test_tokens_of_an_oidc_issuer_verify_against_its_cached_jwks(
    tmp_path: Path, issuer: tuple[Jwks, rsa.RSAPrivateKey]
) -> None:
    from shop.app import app

    jwks, key = issuer
    auth = AuthSettings(
        issuer="https://id.example", jwks_url=jwks.url, algorithms=("RS256",), audience="shop-api"
    )
    good = claims(iss="https://id.example", aud="shop-api")
    async with Harness(app, tmp_path, plan=Plan(auth=auth)) as h:
        token = jwt.encode(good, key, algorithm="RS256", headers={"kid": "k1"})
        for _ in range(5):
            assert (await get(h, PRIVATE, token)).status_code == 200
        assert jwks.fetches == 1  # cached
        unknown = jwt.encode(good, key, algorithm="RS256", headers={"kid": "k9"})
        resp = await get(h, PRIVATE, unknown)
        assert resp.status_code == 401
        assert "no key with kid 'k9'" in resp.json()["error"]["message"]
        # An ES256 token is refused before any key is looked for: not an accepted algorithm.
        es = jwt.encode(good, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256")
        assert (await get(h, PRIVATE, es)).status_code == 401
        # The dev issuer is not trusted once a real issuer is configured.
        assert (await get(h, PRIVATE, h.token("acc-alice"))).status_code == 401


async def test_an_issuer_that_cannot_be_reached_is_a_503_not_a_401(tmp_path: Path) -> None:
    from shop.app import app

    with Jwks([]) as gone:
        url = gone.url
    auth = AuthSettings(issuer="https://id.example", jwks_url=url, algorithms=("RS256",))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(claims(iss="https://id.example"), key, algorithm="RS256")
    async with Harness(app, tmp_path, plan=Plan(auth=auth)) as h:
        resp = await get(h, PRIVATE, token)
        assert resp.status_code == 503
        assert "cannot fetch the issuer's keys" in resp.json()["error"]["message"]
        assert resp.headers["retry-after"]


async def test_a_public_key_file_and_a_key_of_the_wrong_type(tmp_path: Path) -> None:
    from shop.app import app

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path / "issuer.pem"
    pem.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    auth = AuthSettings(issuer="corp", public_key=str(pem), algorithms=("RS256",))
    async with Harness(app, tmp_path / "a", plan=Plan(auth=auth)) as h:
        token = jwt.encode(claims(iss="corp"), key, algorithm="RS256")
        assert (await get(h, PRIVATE, token)).status_code == 200
    wrong = AuthSettings(issuer="corp", public_key=str(pem), algorithms=("ES256",))
    async with Harness(app, tmp_path / "b", plan=Plan(auth=wrong)) as h:
        with pytest.raises(ConfigError, match=r"ES256 cannot verify with the .*RSAPublicKey"):
            h.asgi  # noqa: B018 - building the gateway checks the key
    missing = AuthSettings(
        issuer="corp", public_key=str(tmp_path / "nope.pem"), algorithms=("RS256",)
    )
    async with Harness(app, tmp_path / "c", plan=Plan(auth=missing)) as h:
        with pytest.raises(ConfigError, match=r"cannot read .*nope\.pem"):
            h.asgi  # noqa: B018


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('algorithms = ["none"]', "`none` means an unsigned token"),
        ('algorithms = ["HS256"]', "HS256 is a shared-secret (HMAC) one"),
        ('algorithms = ["RS257"]', "unknown algorithm 'RS257'"),
        ('jwks_url = "https://id.example/jwks"', "set `issuer`"),
        ('issuer = "https://id.example"\nalgorithms = ["RS256"]', "exactly one of `jwks_url`"),
        (
            'issuer = "https://id.example"\njwks_url = "https://id.example/jwks"',
            'algorithms = ["RS256"]',
        ),
        (
            'issuer = "x"\nalgorithms = ["RS256"]\njwks_url = "http://id.example/jwks"',
            "must be an https:// URL",
        ),
        ("leeway = 3600", "<= 300"),
    ],
)
def test_auth_settings_are_checked_when_the_plan_loads(
    tmp_path: Path, toml: str, message: str
) -> None:
    (tmp_path / "cleave.toml").write_text(f"[auth]\n{toml}\n")
    with pytest.raises(ConfigError) as caught:
        load_plan(tmp_path)
    assert message in str(caught.value)


def test_a_jwks_url_from_the_environment_is_checked_once_expanded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "cleave.toml").write_text(
        '[auth]\nissuer = "x"\nalgorithms = ["RS256"]\njwks_url = "${JWKS}"\n'
    )
    monkeypatch.setenv("JWKS", "http://10.0.0.1/jwks")
    with pytest.raises(ConfigError, match="must be an https:// URL"):
        load_plan(tmp_path)
    monkeypatch.setenv("JWKS", "http://127.0.0.1:9/jwks")
    assert load_plan(tmp_path).auth.jwks_url == "http://127.0.0.1:9/jwks"


# -- abuse limits ----------------------------------------------------------------------------------


async def test_a_caller_over_its_rate_gets_429_with_retry_after(tmp_path: Path) -> None:
    from shop.app import app

    plan = Plan(gateway=GatewaySettings(rate=0.1, burst=3))  # one more every 10 s
    async with Harness(app, tmp_path, plan=plan) as h:
        transport = httpx.ASGITransport(app=h.asgi)
        alice = {"authorization": f"Bearer {h.token('acc-alice')}"}
        bob = {"authorization": f"Bearer {h.token('acc-bob')}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
            statuses = [(await http.get(PRIVATE, headers=alice)).status_code for _ in range(4)]
            assert statuses == [200, 200, 200, 429]
            limited = await http.get(PRIVATE, headers=alice)
            assert limited.status_code == 429
            assert int(limited.headers["retry-after"]) >= 1
            assert limited.json()["error"]["kind"] == "TooManyRequests"
            # Another caller has a bucket of its own; anonymous callers share their address's.
            assert (await http.get("/v1/accounts/acc-bob", headers=bob)).status_code == 200
            anonymous = [(await http.get("/v1/products")).status_code for _ in range(4)]
            assert anonymous == [200, 200, 200, 429]
            # Bad tokens count against the address: guessing is limited too.
            assert (
                await http.get(PRIVATE, headers={"authorization": "Bearer x"})
            ).status_code == 429


def test_the_openapi_document_declares_the_bearer_scheme_and_each_routes_security() -> None:
    from cleave.gateway.openapi import openapi
    from shop.app import gateway

    doc = openapi(gateway, title="shop")
    scheme = doc["components"]["securitySchemes"]["bearer"]
    assert (scheme["type"], scheme["scheme"], scheme["bearerFormat"]) == ("http", "bearer", "JWT")
    paths = doc["paths"]
    assert paths["/v1/products"]["get"]["security"] == [{}, {"bearer": []}]
    assert paths["/v1/orders"]["post"]["security"] == [{"bearer": []}]
    assert paths["/v1/accounts"]["get"]["security"] == [{"bearer": ["admin"]}]
    responses = paths["/v1/orders"]["post"]["responses"]
    assert {"401", "403", "429"} <= set(responses)
    assert "WWW-Authenticate" in responses["401"]["headers"]
    assert responses["429"]["headers"]["Retry-After"]["required"] is True


def test_a_route_with_an_unknown_access_is_a_definition_error() -> None:
    import cleave
    from shop.contracts.catalog import Catalog

    gateway = cleave.Gateway()
    with pytest.raises(cleave.DefinitionError, match="auth='admin' is not one of"):
        gateway.get("/x", Catalog.list_products, auth="admin")  # type: ignore[arg-type]
    gateway.get("/y", Catalog.list_products, auth=cleave.Scope("admin"))


def test_identity_is_small_and_frozen() -> None:
    import cleave

    alice = cleave.Identity("acc-alice", ("orders:write",))
    assert alice.may_act_for("acc-alice")
    assert not alice.may_act_for("acc-bob")
    assert cleave.Identity("ops", ("admin",)).may_act_for("acc-bob")
    assert not cleave.Identity("").may_act_for("")  # anonymous is nobody
    with pytest.raises(AttributeError):
        alice.subject = "acc-bob"  # type: ignore[misc]
    assert msgspec.json.decode(msgspec.json.encode(alice), type=cleave.Identity) == alice


async def test_a_remembered_token_still_expires(tmp_path: Path) -> None:
    from cleave.gateway.auth import Authenticator, AuthFailure
    from cleave.testing import token

    auth = Authenticator(AuthSettings(leeway=0), app_name="shop", root=tmp_path, state_dir=tmp_path)
    short = token(tmp_path, "acc-alice", audience="shop", ttl=1)
    assert (await auth.identify(f"Bearer {short}", "user")).subject == "acc-alice"
    assert short in auth._cache  # verified once, remembered

    async def expired() -> bool:
        try:
            await auth.identify(f"Bearer {short}", "user")
        except AuthFailure as exc:
            return "expired" in exc.message
        return False

    deadline = time.monotonic() + 30
    while not await expired():
        assert time.monotonic() < deadline, "a remembered token outlived its exp"
        await asyncio.sleep(0.1)
