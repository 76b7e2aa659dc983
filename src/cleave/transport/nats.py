"""RPC over NATS request/reply.

A service listens on ``cleave.rpc.<service>.v<major>.*`` in queue group
``<service>``, so its replicas share the calls with no load balancer. The
body is a :mod:`~cleave.transport.wire` envelope. Every request gets an
answer: the response, or a typed error; a caller whose callee is gone gets
:class:`~cleave.errors.Unavailable` at once (NATS "no responders") and one
whose callee is slow gets :class:`~cleave.errors.DeadlineExceeded` at its
deadline, never a hang.

nats-py errors are mapped here and never leak to service code.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import msgspec
import nats
import nats.errors
import structlog
from nats.aio.client import Client as NatsClient

from cleave._aio import cancel_and_wait
from cleave.context import CallContext
from cleave.errors import (
    CallError,
    DeadlineExceeded,
    DefinitionError,
    ErrorInfo,
    InvalidArgument,
    Unavailable,
    from_info,
    to_info,
)
from cleave.transport.discovery import Discovery
from cleave.transport.prefix import DEFAULT, subject_for
from cleave.transport.refusals import refusals_of
from cleave.transport.wire import Reply, Request, reply_decoder, request_decoder

if TYPE_CHECKING:
    from nats.aio.msg import Msg

    from cleave.contracts import MethodSpec
    from cleave.messages import Message
    from cleave.runtime.dispatch import Dispatcher

__all__ = [
    "NatsRpcClient",
    "NatsRpcServer",
    "connect",
    "servers",
    "subject_for",
    "undeclared_call",
]

log = structlog.get_logger("cleave.nats")

_encode = msgspec.msgpack.Encoder().encode


async def connect(
    url: str,
    name: str,
    *,
    user: str = "",
    password: str = "",
    inbox_prefix: str = "",
    tls: ssl.SSLContext | None = None,
    credentials: str = "",
) -> NatsClient:
    """Connect to NATS, reconnecting for ever; errors are logged, not printed.

    ``user``/``password`` (or a ``credentials`` file, JWT and nkey seed) say
    who connects; ``inbox_prefix`` is where its replies come (a server that
    scopes inboxes per identity allows it only its own); ``tls`` verifies
    the server (and may present a client certificate).
    """
    holder: list[NatsClient] = []
    # nats-py retries a refused login for ever when reconnecting is on: stop at the first.
    unauthorized = asyncio.Event()

    async def error_cb(exc: Exception) -> None:
        if "authorization violation" in str(exc).lower() and not holder[0].is_connected:
            unauthorized.set()
        refused = refusals_of(holder[0]).refuse(str(exc))
        log.warning(
            "nats error",
            error=f"{type(exc).__name__}: {exc}",
            connection=name,
            **({"refused": refused} if refused else {}),
        )

    async def disconnected_cb() -> None:
        if holder and (holder[0].is_closed or holder[0].is_draining):
            return  # we are closing it ourselves
        log.warning("nats disconnected", connection=name)

    async def reconnected_cb() -> None:
        log.info("nats reconnected", connection=name)

    # nats-py types it int; it takes seconds as a float.
    options: dict[str, Any] = {"reconnect_time_wait": 0.25}
    if user:
        options.update(user=user, password=password)
    if inbox_prefix:
        options["inbox_prefix"] = inbox_prefix
    if tls is not None:
        options["tls"] = tls
    if credentials:
        options["user_credentials"] = credentials
    nc = NatsClient()
    holder.append(nc)
    connecting = asyncio.ensure_future(
        nc.connect(
            servers(url),
            name=name,
            connect_timeout=2,
            max_reconnect_attempts=-1,
            allow_reconnect=True,
            error_cb=error_cb,
            disconnected_cb=disconnected_cb,
            reconnected_cb=reconnected_cb,
            pending_size=64 * 1024 * 1024,
            **options,
        )
    )
    refused = asyncio.ensure_future(unauthorized.wait())
    try:
        await asyncio.wait((connecting, refused), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        connecting.cancel()
        with contextlib.suppress(Exception):  # its reconnect loop must not outlive the caller
            await nc.close()
        raise
    finally:
        refused.cancel()
    if not connecting.done() or unauthorized.is_set():
        with contextlib.suppress(Exception):
            await cancel_and_wait(connecting)
        with contextlib.suppress(Exception):
            await nc.close()
        raise Unavailable(
            f"NATS at {url} refused {name}'s credentials (authorization violation); under "
            "`cleave up` each worker uses the credentials its supervisor made in "
            ".cleave/nats-auth: restart the app; for an external server check [nats] "
            "credentials (CLEAVE_NATS_CREDENTIALS)"
        )
    try:
        connecting.result()
    except (OSError, nats.errors.Error, ssl.SSLError) as exc:
        raise Unavailable(f"cannot connect to NATS at {url}: {exc}") from exc
    return nc


def servers(url: str) -> list[str]:
    """The server URLs in ``url``: one, or several comma-separated (a cluster's members).

    nats-py tries them in random order and, once connected, reconnects to any
    of them (and to members the cluster announces).
    """
    return [u.strip() for u in url.split(",") if u.strip()]


class NatsRpcClient:
    """Sends calls to services in other processes."""

    def __init__(self, nc: NatsClient, *, prefix: str = DEFAULT) -> None:
        self.nc = nc
        self.prefix = prefix
        self._refusals = refusals_of(nc)

    async def call(self, method: MethodSpec, request: Message, ctx: CallContext) -> Message:
        data = _encode(
            Request(
                ctx.deadline, ctx.request_id, ctx.caller, ctx.traceparent, request, ctx.identity
            )
        )
        timeout = ctx.deadline - time.time()
        subject = subject_for(self.prefix, method.subject)
        waiting = self._refusals.watch(subject)
        try:
            msg = await self.nc.request(subject, data, timeout=timeout)
        except asyncio.CancelledError:
            if self._refusals.take(asyncio.current_task()) is None:
                raise
            raise undeclared_call(method, subject, ctx.caller) from None
        except nats.errors.NoRespondersError:
            raise Unavailable(
                f"no replica of {method.contract.name} is running that serves "
                f"v{method.contract.version} (nobody serves {method.subject}); start it, or, "
                "rolling out a new major, deploy the service before its callers",
                service=method.contract.name,
                method=method.name,
                ran=False,
            ) from None
        except nats.errors.TimeoutError:
            raise DeadlineExceeded(
                f"{method.qualname} did not answer within {timeout:.3f}s; it may still have run",
                service=method.contract.name,
                method=method.name,
            ) from None
        except (nats.errors.Error, OSError) as exc:
            raise Unavailable(
                f"cannot reach {method.contract.name} over NATS: {type(exc).__name__} {exc}",
                service=method.contract.name,
                method=method.name,
            ) from exc
        finally:
            waiting.discard(asyncio.current_task())
        try:
            reply = reply_decoder(method.response).decode(msg.data)
        except msgspec.DecodeError as exc:
            raise Unavailable(
                f"{method.qualname} answered with something that is not a "
                f"{method.response.__name__} ({exc}); is a different version deployed?",
                service=method.contract.name,
                method=method.name,
            ) from None
        if reply.error is not None:
            raise from_info(reply.error, method.contract.errors)
        return cast("Message", reply.body)

    async def close(self) -> None:
        pass  # the connection belongs to whoever made it


def undeclared_call(method: MethodSpec, subject: str, caller: str) -> DefinitionError:
    """The error for a call the NATS server refused: the caller never declared it."""
    contract = method.contract
    return DefinitionError(
        f"the NATS server refused the call to {method.qualname} (publish to {subject}) from "
        f"{caller or 'this process'}: its service group declares no use of {contract.name}. "
        f"Declare it in the class of the service that calls it, e.g. `{contract.name} = "
        f"cleave.use({contract.cls.__name__})`: under `cleave up` a service may call only "
        "the contracts it declares"
    )


class _Endpoint:
    __slots__ = (
        "decoder",
        "dispatcher",
        "errors",
        "last_error",
        "method",
        "requests",
        "subject",
        "time_ns",
    )

    def __init__(self, dispatcher: Dispatcher, method: MethodSpec, subject: str) -> None:
        self.dispatcher = dispatcher
        self.method = method
        self.subject = subject
        self.decoder = request_decoder(method.request)
        self.requests = 0
        self.errors = 0
        self.time_ns = 0
        self.last_error = ""


class NatsRpcServer:
    """Takes calls from NATS for the services of this process."""

    def __init__(
        self, nc: NatsClient, *, instance: str, version: str, prefix: str = DEFAULT
    ) -> None:
        self.nc = nc
        self.prefix = prefix
        self.instance = instance
        self.version = version
        self.endpoints: dict[str, _Endpoint] = {}
        self._subs: list[Any] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.discovery: Discovery | None = None
        self._accepting = False
        self._deadlines: dict[asyncio.Task[None], float] = {}
        self._expired: set[asyncio.Task[None]] = set()
        self._watchdog: asyncio.Task[None] | None = None

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def serve(self, dispatchers: Sequence[Dispatcher]) -> None:
        for d in dispatchers:
            for method in d.spec.methods:  # every major it serves
                subject = subject_for(self.prefix, method.subject)
                self.endpoints[subject] = _Endpoint(d, method, subject)
        self._accepting = True
        for d in dispatchers:
            for contract in d.spec.contracts:
                # One queue group per service across its majors: a v1 call reaches any
                # replica that serves v1, old code or new, during a rolling deploy.
                self._subs.append(
                    await self.nc.subscribe(
                        subject_for(self.prefix, f"{contract.rpc_prefix}.*"),
                        queue=contract.name,
                        cb=self._on_request,
                    )
                )
        self._watchdog = asyncio.get_running_loop().create_task(self._watch_deadlines())
        self.discovery = Discovery(
            self.nc, self.instance, self.version, dispatchers, self.endpoints
        )
        await self.discovery.start()
        await self.nc.flush()

    async def _on_request(self, msg: Msg) -> None:
        # nats-py runs one callback at a time per subscription: hand each call to a task.
        task = asyncio.get_running_loop().create_task(self._handle(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, msg: Msg) -> None:
        started = time.perf_counter_ns()
        endpoint = self.endpoints.get(msg.subject)
        if endpoint is None:
            service = msg.subject.split(".")[2] if msg.subject.count(".") >= 4 else "?"
            await self._reply_error(
                msg,
                InvalidArgument(
                    f"{service} has no method {msg.subject.rsplit('.', 1)[-1]!r} in this version"
                ),
                service,
                "",
            )
            return
        method = endpoint.method
        endpoint.requests += 1
        try:
            env = endpoint.decoder.decode(msg.data)
        except msgspec.DecodeError as exc:
            endpoint.errors += 1
            endpoint.last_error = f"bad request: {exc}"
            await self._reply_error(
                msg,
                InvalidArgument(f"bad request for {method.qualname}: {exc}"),
                method.contract.name,
                method.name,
            )
            return
        left = env.deadline - time.time()
        if left <= 0 or not self._accepting:
            if not self._accepting:
                await self._reply_error(
                    msg,
                    Unavailable(
                        f"{method.contract.name} is shutting down; not run",
                        retry_after=1.0,
                        ran=False,
                    ),
                    method.contract.name,
                    method.name,
                )
            return  # past its deadline: the caller has given up already
        ctx = CallContext(
            env.deadline, env.request_id, env.caller, env.traceparent, identity=env.identity
        )
        task = asyncio.current_task()
        assert task is not None
        # The watchdog cancels a call past its deadline: cheaper than a timer per call.
        self._deadlines[task] = env.deadline
        try:
            result = await endpoint.dispatcher.invoke(method, env.body, ctx)
            payload = _encode(Reply(body=result))
        except asyncio.CancelledError:
            if task not in self._expired:
                raise  # shutting down
            self._expired.discard(task)
            endpoint.errors += 1
            endpoint.last_error = "deadline exceeded"
            payload = _encode(
                Reply(
                    error=ErrorInfo(
                        DeadlineExceeded.kind,
                        f"{method.qualname} ran past its deadline",
                        method.contract.name,
                        method.name,
                    )
                )
            )
        except CallError as exc:
            endpoint.errors += 1
            endpoint.last_error = str(exc)
            payload = _encode(
                Reply(error=to_info(exc, service=method.contract.name, method=method.name))
            )
        finally:
            self._deadlines.pop(task, None)
            # On Python 3.11 a cancel can be swallowed (asyncio.wait_for when its
            # future finishes as it is cancelled): forget the task either way.
            self._expired.discard(task)
            endpoint.time_ns += time.perf_counter_ns() - started
        if msg.reply:
            with contextlib.suppress(nats.errors.Error):
                await self.nc.publish(msg.reply, payload)

    async def _watch_deadlines(self, every: float = 0.05) -> None:
        """Cancel calls that run past their deadline (the caller has given up on them)."""
        while True:
            await asyncio.sleep(every)
            now = time.time()
            for task, deadline in list(self._deadlines.items()):
                if deadline < now and task not in self._expired:
                    self._expired.add(task)
                    task.cancel()

    async def _reply_error(self, msg: Msg, exc: CallError, service: str, method: str) -> None:
        if msg.reply:
            payload = _encode(Reply(error=to_info(exc, service=service, method=method)))
            with contextlib.suppress(nats.errors.Error):
                await self.nc.publish(msg.reply, payload)

    async def stop(self, grace: float = 10.0) -> None:
        """Stop taking calls, then wait (up to ``grace`` s) for calls in progress.

        Draining, not just unsubscribing: after the server confirms it will send
        no more (a flush round trip), every request already sent to this process
        is still handled, so a rolling deploy loses none. New requests go to the
        other members of the queue group.
        """
        if self.discovery is not None:
            await self.discovery.stop()
        for sub in self._subs:
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await asyncio.wait_for(sub.drain(), grace)
        self._subs.clear()
        self._accepting = False
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=grace)
        if self._watchdog is not None:
            await cancel_and_wait(self._watchdog)
        with contextlib.suppress(nats.errors.Error):
            await self.nc.flush(timeout=2)
