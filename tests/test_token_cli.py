"""`cleave token`: a dev token for the gateway, and clear errors when one cannot be made."""

from __future__ import annotations

import shutil
from pathlib import Path

import jwt

from cleave.gateway.devissuer import key_path
from conftest import SHOP, cli


def said(text: str) -> str:
    """``text`` with its line wrapping undone (the console wraps at its width)."""
    return " ".join(text.split())


def test_a_token_for_a_customer_and_one_for_an_admin(tmp_path: Path) -> None:
    out = cli("token", SHOP, "--sub", "acc-alice", "--ttl", "90s", "--state-dir", tmp_path)
    claims = jwt.decode(out.stdout.strip(), options={"verify_signature": False})
    assert (claims["sub"], claims["aud"], claims["iss"]) == ("acc-alice", "shop", "cleave-dev")
    assert claims["exp"] - claims["iat"] == 90
    assert "scope" not in claims
    assert key_path(tmp_path).stat().st_mode & 0o777 == 0o600
    out = cli("token", SHOP, "--sub", "ops", "--scope", "admin", "--state-dir", tmp_path)
    admin = jwt.decode(out.stdout.strip(), options={"verify_signature": False})
    assert admin["scope"] == "admin"
    assert jwt.get_unverified_header(out.stdout.strip())["alg"] == "ES256"


def test_what_goes_wrong_is_said(tmp_path: Path) -> None:
    missing = cli("token", SHOP, "--state-dir", tmp_path, check=False)
    assert missing.returncode == 2
    assert "--sub acc-alice" in said(missing.stderr)
    bad_ttl = cli(
        "token", SHOP, "--sub", "a", "--ttl", "soon", "--state-dir", tmp_path, check=False
    )
    assert bad_ttl.returncode == 2
    assert "give e.g. 90s, 30m, 1h or 7d" in said(bad_ttl.stderr)
    app = tmp_path / "shop"
    shutil.copytree(SHOP, app, ignore=shutil.ignore_patterns(".cleave", "__pycache__"))
    plan = app / "cleave.toml"
    plan.write_text(
        plan.read_text()
        + '\n[auth]\nissuer = "https://id.example"\nalgorithms = ["RS256"]\n'
        + 'jwks_url = "https://id.example/jwks"\n'
    )
    real = cli("token", app, "--sub", "a", "--state-dir", tmp_path / "s", check=False)
    assert real.returncode == 2
    assert "trusts tokens from issuer https://id.example" in said(real.stderr)
