"""The control plane's door: who may change a running app over HTTP.

The control API of ``cleave up``, the dashboard's actions and every worker's
admin endpoints listen on loopback, but a loopback port is not private: any
web page the developer opens can send requests to it. :class:`Guard` wraps
those ASGI apps and checks, before any handler runs:

- ``Host`` is a loopback name or address (or the configured host): a page
  that rebinds its own DNS name to 127.0.0.1 still sends its own name here,
  and is refused (no DNS rebinding);
- for anything but a read (GET, HEAD): ``Origin``, when sent, is this very
  origin (no cross-site request), the body is ``application/json`` (a form
  post is not), and the request carries the run's token, in
  ``Authorization: Bearer …`` or ``X-Cleave-Token``.

The token is made per run (:func:`make_token`) in ``.cleave/run/control-token``,
mode 0600: the CLI reads it from there; the dashboard's page embeds it,
which only same-origin pages can read. Reads need no token on loopback.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.datastructures import Headers
from starlette.responses import JSONResponse

from cleave.runtime.nats_auth import write_private

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["TOKEN_HEADER", "Guard", "make_token", "read_token", "token_path"]

TOKEN_HEADER = "x-cleave-token"
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
_READS = frozenset({"GET", "HEAD"})


def token_path(run_dir: Path) -> Path:
    return run_dir / "control-token"


def make_token(run_dir: Path) -> str:
    """A new token for this run, written where the CLI and the workers read it."""
    token = secrets.token_urlsafe(32)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_private(token_path(run_dir), token)
    return token


def read_token(run_dir: Path) -> str:
    """This run's token; "" if there is none (then nothing that changes state is allowed)."""
    try:
        return token_path(run_dir).read_text().strip()
    except OSError:
        return ""


def _hostname(host: str) -> str:
    if host.startswith("["):  # [::1]:8001
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class Guard:
    """ASGI middleware: Host, Origin, content type and token checks (see the module)."""

    def __init__(self, app: ASGIApp, token: str, hosts: Iterable[str] = ()) -> None:
        self.app = app
        self.token = token
        hosts = set(hosts)
        #: ``"*"``: any ``Host`` (an admin port a scheduler's probes and Prometheus reach by
        #: the pod's address, not a developer's browser); changes still need the token.
        self.any_host = "*" in hosts
        self.hosts = LOOPBACK | {h for h in hosts if h not in ("", "*", "0.0.0.0", "::")}

    def problem(self, method: str, headers: Headers) -> tuple[int, str] | None:
        """Why a request is refused (status, message), or None if it may go on."""
        host = headers.get("host", "")
        if not self.any_host and _hostname(host).lower() not in self.hosts:
            return 403, (
                f"Host {host!r} is not this machine's loopback: the control plane answers only "
                "requests addressed to 127.0.0.1, localhost or ::1 (DNS rebinding is refused); "
                "use http://127.0.0.1:<port>"
            )
        if method in _READS:
            return None
        origin = headers.get("origin")
        if origin is not None and origin not in (f"http://{host}", f"https://{host}"):
            return 403, (
                f"cross-origin request from {origin!r} refused: only pages of this dashboard, "
                "or clients that send no Origin (the cleave CLI), may change the app"
            )
        media = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media != "application/json":
            return 415, (
                f"the body must be application/json (got {media or 'no content type'!r}); "
                "send JSON with content-type: application/json"
            )
        given = headers.get(TOKEN_HEADER, "")
        bearer = headers.get("authorization", "")
        if not given and bearer.lower().startswith("bearer "):
            given = bearer[7:].strip()
        if not self.token or not hmac.compare_digest(given.encode(), self.token.encode()):
            return 401, (
                "this changes the running app and needs the run's control token (in "
                f"`Authorization: Bearer <token>` or `{TOKEN_HEADER}`): the cleave CLI reads it "
                "from .cleave/run/control-token; the dashboard's page has it"
            )
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refused = self.problem(scope["method"], Headers(scope=scope))
            if refused is not None:
                status, message = refused
                body = {"error": {"kind": "Refused", "message": message}}
                await JSONResponse(body, status_code=status)(scope, receive, send)
                return
        await self.app(scope, receive, send)
