"""The callee's side of a call: run a service method in its call context.

One :class:`Dispatcher` per running service instance. Every transport ends
here, so every placement behaves alike:

- the method runs with the caller's :class:`~cleave.context.CallContext` set,
  so nested calls inherit its deadline and derive their request ids from it;
- an error leaves as the caller will see it: typed if the contract (or
  Cleave) allow-lists its kind, else :class:`~cleave.errors.RemoteError`;
- ``ran`` on an :class:`~cleave.errors.Unavailable` describes one hop: once
  the method has begun, an ``Unavailable(ran=False)`` it passes on from its
  own dependencies leaves as ``ran=None`` (unknown), because this method ran;
- a method marked ``@cleave.idempotent`` runs in one transaction that also
  stores its result under the request id, so a retry returns the first
  result instead of acting twice (a different request under a reused id is
  a :class:`~cleave.errors.Conflict`). Only deliberate outcomes are stored:
  a result, or a :class:`~cleave.errors.ServiceError` the method raised on
  purpose (its writes rolled back; the error kept in a transaction of its
  own). A transient failure (unavailable, deadline, open circuit, a remote
  crash, a bug) is not remembered, so a retry with the same id runs again.

A service may serve several majors of its contract: each method of each major
runs the attribute its :class:`~cleave.ServiceSpec` names for it, errors are
allow-listed by the major the caller called, and a call of a deprecated method
is counted (see :mod:`cleave.runtime.deprecation`).
"""

from __future__ import annotations

import hashlib
import time
from time import perf_counter
from typing import TYPE_CHECKING, Any

import msgspec
import sqlalchemy as sa
import structlog

from cleave.context import CallContext, _current
from cleave.data import schema
from cleave.data.prepared import Prepared
from cleave.errors import (
    CallError,
    Conflict,
    ErrorInfo,
    RemoteError,
    ServiceError,
    Unavailable,
    from_info,
    to_info,
)
from cleave.messages import from_msgpack, to_msgpack
from cleave.observability.metrics import CallStats
from cleave.observability.tracing import SERVER, id_attributes, tracer

if TYPE_CHECKING:
    from cleave.contracts import MethodSpec
    from cleave.data.database import Database
    from cleave.faults import Faults
    from cleave.messages import Message
    from cleave.runtime.deprecation import Deprecations
    from cleave.service import Service, ServiceSpec

__all__ = ["Dispatcher"]

log = structlog.get_logger("cleave.dispatch")

_t = schema.idempotency
_FIND = Prepared(
    sa.select(_t.c.method, _t.c.fingerprint, _t.c.is_error, _t.c.result).where(
        _t.c.request_id == sa.bindparam("request_id")
    )
)
_RECORD = Prepared(_t.insert().inline().values({c.name: sa.bindparam(c.name) for c in _t.c}))
# A deliberate error is stored after its transaction rolled back: a concurrent
# retry may have stored its own outcome first, and that one stands.
_RECORD_ERROR = Prepared(
    sa.text(
        f"INSERT INTO {_t.name} ({', '.join(c.name for c in _t.c)}) "
        f"VALUES ({', '.join(':' + c.name for c in _t.c)}) ON CONFLICT (request_id) DO NOTHING"
    )
)


class Dispatcher:
    """Runs calls on one service instance."""

    def __init__(
        self,
        spec: ServiceSpec,
        instance: Service,
        db: Database | None,
        *,
        strict: bool = False,
        deprecations: Deprecations | None = None,
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.instance = instance
        self.db = db
        self.strict = strict
        self.allowed = spec.contract.errors
        #: The bound method that answers each method of each major served.
        self.bound: dict[MethodSpec, Any] = {
            m: getattr(instance, attr) for m, attr in spec.handlers.items()
        }
        #: Injected faults (see cleave.faults), None in normal operation.
        self.faults: Faults | None = None
        #: Calls served, by method name (the majors of a method counted together).
        self.stats: dict[str, CallStats] = {m.name: CallStats() for m in spec.methods}
        self.deprecations = deprecations

    async def invoke(
        self, method: MethodSpec, request: Message, ctx: CallContext, counted: bool = False
    ) -> Message:
        """Run ``method`` with ``request`` under ``ctx``; raise errors as the wire would.

        ``counted``: an in-process caller counts the call already (its ``CallStats``
        are this service's "served" figures too), so do not count it twice.
        """
        span = None
        if tracer.enabled:
            span = tracer.start(method.qualname, SERVER, self.name, ctx.traceparent)
            if span is not None:
                ctx.traceparent = span.traceparent
                id_attributes(request, span.attributes)
        stats = None if counted else self.stats[method.name]
        if method.deprecated is not None and self.deprecations is not None:
            self.deprecations.record(
                ("method", self.name, method.contract.version, method.name, ctx.caller),
                method.deprecated,
            )
        if stats is not None:
            stats.in_flight += 1
            started = perf_counter()
        ctx.service = self.name
        token = _current.set(ctx)
        began = False
        try:
            if self.faults is not None:
                await self.faults.apply(method.name, ctx, self.name)
            if self.strict:
                request = from_msgpack(to_msgpack(request), method.request)
            began = True
            if method.store_result and self.db is not None:
                result = await self._idempotent(method, request, ctx)
            else:
                result = await self.bound[method](request)
            if type(result) is not method.response:
                raise TypeError(
                    f"{method.qualname} returned {type(result).__name__}; the contract says "
                    f"{method.response.__name__}"
                )
            if self.strict:
                result = from_msgpack(to_msgpack(result), method.response)
        except Exception as exc:
            if not isinstance(exc, CallError):
                # A bug, not an answer: the caller gets its kind and message, the
                # service's log keeps the traceback.
                log.error("method failed", method=method.qualname, exc_info=exc)
            seen = self.as_seen_by_caller(exc, method)
            if began and isinstance(seen, Unavailable) and seen.service != self.name:
                # "Provably did not run" was true of a call this method made, not of
                # this method, which ran: a caller must not take it as safe to retry.
                seen.ran = None
            if stats is not None:
                stats.record(perf_counter() - started, seen.kind)
            if span is not None:
                tracer.finish(span, f"{seen.kind}: {seen.message}")
            raise seen from exc
        except BaseException as exc:  # cancelled: the caller or the process gave up
            if stats is not None:
                stats.record(perf_counter() - started, type(exc).__name__)
            if span is not None:
                tracer.finish(span, type(exc).__name__)
            raise
        finally:
            _current.reset(token)
            if stats is not None:
                stats.in_flight -= 1
        if stats is not None:
            stats.record_ok(perf_counter() - started)
        if span is not None:
            id_attributes(result, span.attributes)
            tracer.finish(span)
        return result

    def as_seen_by_caller(self, exc: BaseException, method: MethodSpec) -> CallError:
        """``exc`` rebuilt exactly as a remote caller would rebuild it from the wire."""
        return from_info(
            to_info(exc, service=self.name, method=method.name), method.contract.errors
        )

    def error_info(self, exc: BaseException, method: MethodSpec) -> ErrorInfo:
        return to_info(exc, service=self.name, method=method.name)

    async def _idempotent(self, method: MethodSpec, request: Message, ctx: CallContext) -> Message:
        """Run ``method`` once per request id; replay its deliberate outcome on a retry."""
        assert self.db is not None
        record: dict[str, Any] = {
            "request_id": ctx.request_id,
            "method": _recorded_name(method),
            "fingerprint": hashlib.blake2b(to_msgpack(request), digest_size=16).hexdigest(),
        }
        try:
            async with self.db.transaction() as tx:
                stored = await tx.fetch_one(_FIND, {"request_id": ctx.request_id})
                if stored is None:
                    result: Message = await self.bound[method](request)
                    record.update(is_error=0, result=to_msgpack(result), created_at=time.time())
                    await tx.run(_RECORD, record)
        except ServiceError as exc:
            # Only the method raises these here. An answer given on purpose: its writes
            # rolled back with the transaction, as without the decorator; the answer is
            # kept in a transaction of its own, so a retry gets it again.
            record.update(
                is_error=1, result=to_msgpack(self.error_info(exc, method)), created_at=time.time()
            )
            async with self.db.transaction() as tx:
                await tx.run(_RECORD_ERROR, record)
            raise
        if stored is not None:
            return self._replay(method, ctx, record["fingerprint"], stored)
        return result

    def _replay(self, method: MethodSpec, ctx: CallContext, fingerprint: str, row: Any) -> Message:
        stored_method, stored_fp, is_error, payload = row
        qualname, _, major = stored_method.partition("@v")
        # A retry in another major of the same method (a caller deployed onto v2 retrying
        # what its v1 predecessor sent) repeats that call: its request differs in shape
        # by design, so only the method is compared, and the first answer is given again.
        other_major = qualname == method.qualname and int(major or 1) != method.contract.version
        if qualname != method.qualname or (stored_fp != fingerprint and not other_major):
            raise Conflict(
                f"request id {ctx.request_id!r} was already used for a different request "
                f"to {qualname}; use a new idempotency key for a new request",
                service=self.name,
                method=method.name,
            )
        if is_error:
            info = from_msgpack(payload, ErrorInfo)
            raise from_info(info, method.contract.errors)
        try:
            result: Message = from_msgpack(payload, method.response)
        except msgspec.DecodeError as exc:
            raise Conflict(
                f"request id {ctx.request_id!r} was answered by {qualname} v{major or 1}, whose "
                f"answer does not fit v{method.contract.version}'s {method.response.__name__} "
                f"({exc}); retry with the major the call was first made in",
                service=self.name,
                method=method.name,
            ) from exc
        return result


def _recorded_name(method: MethodSpec) -> str:
    """The method as its stored outcomes name it: ``qualname``, ``qualname@v2`` past v1."""
    version = method.contract.version
    return method.qualname if version == 1 else f"{method.qualname}@v{version}"


def describe(exc: BaseException) -> str:
    """A one-line description of an unexpected error, for logs."""
    if isinstance(exc, RemoteError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
