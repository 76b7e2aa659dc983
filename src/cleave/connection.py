"""Typed clients for programs outside the app: scripts, jobs, notebooks, other systems.

::

    async with cleave.connect("path/to/app") as conn:        # a running `cleave up`
        account = await conn.client(BillingV2).get_account(GetAccount(account_id="acc-1"))

    async with cleave.connect("nats://nats.internal:4222", credentials="ops.creds") as conn:
        ...

A call from a connection is a call like any inside a service: it has a
deadline (``timeout``, or tighter with ``cleave.timeout(...)``), a request id
(fresh per call, or the children of one you name with :meth:`Connection.request`),
and errors arrive typed: the callee's contract's :class:`~cleave.ServiceError`
kinds as themselves, everything else as :class:`~cleave.RemoteError`,
:class:`~cleave.DeadlineExceeded` or :class:`~cleave.Unavailable`.

Given an app folder, it reads where the app's ``cleave up`` runs from
``.cleave/run/supervisor.json`` and signs in with the ``client`` NATS identity
that ``cleave up`` writes to ``.cleave/nats-auth/client.json``: allowed to call
every service and nothing else. Given a URL, the server's own credentials
apply: ``user``/``password`` or a ``credentials`` (.creds) file, an
``inbox_prefix``, and TLS with ``ca`` (and ``cert``/``key``), by keyword or
from ``CLEAVE_NATS_USER``, ``CLEAVE_NATS_PASSWORD``, ``CLEAVE_NATS_CREDENTIALS``,
``CLEAVE_NATS_INBOX_PREFIX``, ``CLEAVE_NATS_CA``, ``CLEAVE_NATS_CERT``,
``CLEAVE_NATS_KEY``.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from cleave.errors import ConfigError, Unavailable

if TYPE_CHECKING:
    from cleave.context import CallContext
    from cleave.runtime.router import Router

__all__ = ["Connection", "connect"]

C = TypeVar("C")

#: The name a connection's calls carry as their caller, unless told otherwise.
CALLER = "client"
#: Seconds the first connection to NATS may take.
CONNECT_TIMEOUT = 5.0


class Connection:
    """An open connection to an app's services; make typed clients with :meth:`client`."""

    def __init__(self, nc: Any, router: Router, *, caller: str, url: str) -> None:
        self._nc = nc
        self._router = router
        self.caller = caller
        #: Where it is connected (without any password).
        self.url = url

    def client(self, contract: Callable[..., C]) -> C:
        """A typed client of ``contract`` (a ``@cleave.contract`` class), e.g. ``Billing``."""
        from cleave.contracts import spec_of
        from cleave.runtime.router import make_client

        client: C = make_client(spec_of(contract), self._router, self.caller)
        return client

    @contextmanager
    def request(
        self, request_id: str | None = None, *, timeout: float | None = None
    ) -> Iterator[CallContext]:
        """Calls made inside are one request: ids ``<request_id>.1``, ``.2``..., one deadline.

        ::

            with conn.request("nightly-2026-12-01") as req:
                await billing.get_account(...)      # request id nightly-2026-12-01.1
        """
        from cleave.context import CallContext, _current, new_request_id

        seconds = self._router.timeout if timeout is None else timeout
        if not seconds > 0:
            raise ConfigError(f"request timeout must be a positive number, got {seconds!r}")
        ctx = CallContext(time.time() + seconds, request_id or new_request_id(), self.caller)
        token = _current.set(ctx)
        try:
            yield ctx
        finally:
            _current.reset(token)

    async def close(self) -> None:
        await self._nc.close()

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<cleave connection to {self.url} as {self.caller}>"


class _Connecting:
    """What :func:`connect` returns: ``async with`` it (or ``await`` it) to connect."""

    def __init__(self, target: str | os.PathLike[str], options: dict[str, Any]) -> None:
        self.target = target
        self.options = options
        self._conn: Connection | None = None

    def __await__(self) -> Any:
        return _open(self.target, **self.options).__await__()

    async def __aenter__(self) -> Connection:
        self._conn = await _open(self.target, **self.options)
        return self._conn

    async def __aexit__(self, *exc: object) -> None:
        if self._conn is not None:
            await self._conn.close()


def connect(
    target: str | os.PathLike[str],
    *,
    user: str | None = None,
    password: str | None = None,
    credentials: str | None = None,
    inbox_prefix: str | None = None,
    ca: str | None = None,
    cert: str | None = None,
    key: str | None = None,
    prefix: str | None = None,
    timeout: float | None = None,
    caller: str = CALLER,
    state_dir: str | os.PathLike[str] | None = None,
) -> _Connecting:
    """Connect to an app's services: ``target`` is the app's folder or a NATS URL.

    ::

        async with cleave.connect("examples/shop") as conn:
            product = await conn.client(Catalog).get_product(GetProduct(sku="KB-01"))

    The app's folder: its running ``cleave up`` (NATS address, subject prefix,
    the ``client`` identity, TLS, the ``[runtime] timeout``). A URL
    (``nats://``, ``tls://``): the server's credentials and TLS files by keyword
    or ``CLEAVE_NATS_*``; ``prefix`` is the app's ``[nats] prefix`` (default
    ``cleave``). ``timeout`` bounds each call (default: the app's, or 10 s);
    ``caller`` names this program in the callee's context, logs and traces.
    Use it as ``async with``, or ``conn = await cleave.connect(...)`` and
    ``await conn.close()``.
    """
    options = {
        "user": user,
        "password": password,
        "credentials": credentials,
        "inbox_prefix": inbox_prefix,
        "ca": ca,
        "cert": cert,
        "key": key,
        "prefix": prefix,
        "timeout": timeout,
        "caller": caller,
        "state_dir": state_dir,
    }
    return _Connecting(target, options)


def _is_url(target: str) -> bool:
    return "://" in target


async def _open(
    target: str | os.PathLike[str],
    *,
    user: str | None,
    password: str | None,
    credentials: str | None,
    inbox_prefix: str | None,
    ca: str | None,
    cert: str | None,
    key: str | None,
    prefix: str | None,
    timeout: float | None,
    caller: str,
    state_dir: str | os.PathLike[str] | None,
) -> Connection:
    from cleave.config import NatsSettings
    from cleave.runtime.nats_auth import credentials_file
    from cleave.runtime.nats_tls import external_context
    from cleave.runtime.router import Router
    from cleave.transport.nats import NatsRpcClient
    from cleave.transport.nats import connect as nats_connect

    env = os.environ.get
    text = os.fspath(target)
    if _is_url(text):
        scheme = text.partition("://")[0]
        if scheme not in ("nats", "tls"):
            raise ConfigError(
                f"cleave.connect({text!r}): a URL must be nats:// or tls://, or give the app's "
                "folder"
            )
        settings = NatsSettings(
            url=text,
            ca=ca or env("CLEAVE_NATS_CA", ""),
            cert=cert or env("CLEAVE_NATS_CERT", ""),
            key=key or env("CLEAVE_NATS_KEY", ""),
        )
        options: dict[str, Any] = {"tls": external_context(settings)}
        creds = credentials or env("CLEAVE_NATS_CREDENTIALS", "")
        if creds:
            options["credentials"] = credentials_file(creds)
        name = user if user is not None else env("CLEAVE_NATS_USER", "")
        if name:
            secret = password if password is not None else env("CLEAVE_NATS_PASSWORD", "")
            options.update(user=name, password=secret)
        inbox = inbox_prefix or env("CLEAVE_NATS_INBOX_PREFIX", "")
        if inbox:  # a server that scopes replies per user allows only its own inboxes
            options["inbox_prefix"] = inbox
        url, pfx, limit = text, prefix or "cleave", timeout or 10.0
    else:
        url, options, pfx, limit = _from_app(text, state_dir)
        pfx, limit = prefix or pfx, timeout or limit
    shown = _masked(url)
    try:
        # The transport reconnects for ever once connected; the first connection is bounded.
        async with asyncio.timeout(CONNECT_TIMEOUT):
            nc = await nats_connect(url, f"{caller}.connect", **options)
    except TimeoutError:
        raise Unavailable(
            f"cleave.connect: cannot connect to NATS at {shown} (no answer within "
            f"{CONNECT_TIMEOUT:g}s); is the app up and the address right?"
        ) from None
    except Unavailable as exc:
        raise Unavailable(f"cleave.connect: {exc}") from None
    router = Router(remote=NatsRpcClient(nc, prefix=pfx), timeout=limit)
    return Connection(nc, router, caller=caller, url=shown)


def _from_app(
    folder: str, state_dir: str | os.PathLike[str] | None
) -> tuple[str, dict[str, Any], str, float]:
    """URL, connect options, subject prefix and timeout of the app running from ``folder``."""
    from cleave.app import find_root, load
    from cleave.runtime import control
    from cleave.runtime.nats_auth import CLIENT, credentials_file, identity_path, read_identity
    from cleave.runtime.nats_tls import client_context

    root = find_root(folder)
    if not (root / "cleave.toml").is_file():
        raise ConfigError(
            f"cleave.connect({folder!r}): {root} has no cleave.toml; give the app's folder or "
            "a NATS URL (nats://host:4222)"
        )
    loaded = load(root, state_dir=Path(state_dir) if state_dir is not None else None)
    nats = loaded.plan.nats
    state = control.read_state(loaded)
    if state is None:
        raise ConfigError(
            f"cleave.connect({folder!r}): {loaded.app.name} is not up (no running `cleave up` "
            f"in {loaded.run_dir}); start it with `cleave up {root}` (`cleave run` serves "
            "HTTP only), or give a NATS URL"
        )
    options: dict[str, Any] = {"tls": client_context(loaded)}
    if nats.url:  # an external server: the plan's own credentials
        url = nats.url
        if nats.credentials:
            options["credentials"] = credentials_file(nats.credentials)
    else:
        url = str(state.get("nats_url") or "")
        if not url:
            raise ConfigError(
                f"cleave.connect({folder!r}): {loaded.app.name} is still starting (no NATS "
                "address yet); try again in a moment"
            )
        if nats.auth:
            path = identity_path(loaded, CLIENT)
            if not path.is_file():
                raise ConfigError(
                    f"cleave.connect({folder!r}): no client credentials in {path}; this "
                    f"`cleave up` predates them: restart it (`cleave down {root}`, then up)"
                )
            identity = read_identity(path)
            options.update(
                user=identity.user,
                password=identity.password,
                inbox_prefix=identity.inbox_prefix,
            )
    return url, options, nats.prefix, loaded.plan.runtime.timeout


def _masked(url: str) -> str:
    from cleave.config import mask_url

    return mask_url(url)
