"""Sagas: multi-service workflows that finish, or undo what they did, across crashes.

A saga is declared on the orchestrating service, with its state as a Message,
its steps in order, a compensation per step that needs one, and what to do
when it fails::

    class OrdersService(cleave.Service, implements=Orders):
        checkout = cleave.Saga(CheckoutState, timeout=20.0)

        @checkout.step
        async def reserve(self, s: CheckoutState) -> CheckoutState:
            r = await self.inventory.reserve(Reserve(order_id=s.order_id, lines=s.items))
            if r.status != "reserved":
                raise cleave.Abort(r.reason or "no stock")       # compensate, then fail
            return s

        @checkout.compensation(reserve)
        async def release(self, s: CheckoutState) -> None:
            await self.inventory.release(Release(order_id=s.order_id))

        @checkout.step(local=True)                             # atomic with the saga's record
        async def confirm(self, s: CheckoutState) -> CheckoutState: ...

        @checkout.on_failure                                   # atomic with the saga's record
        async def cancel(self, s: CheckoutState, reason: str) -> None: ...

and started with ``await self.checkout.create(saga_id, state)`` (inside the
transaction that records the business object, if you like): the saga starts
once that transaction commits, never before and never if it rolls back.
``await self.checkout.run(saga_id)`` waits for its outcome; ``start`` does
both.

Rules the engine keeps:

- The saga's record (``cleave_sagas``: state, next step, data) is in the
  service's own database and updated after every step, so a crash resumes it
  from where it stopped: every host runs a recovery loop that picks up sagas
  whose lease has run out.
- A step's calls carry request ids derived from the saga id and the step name
  (``saga-<id>.<step>.1``...), the same on every attempt, so idempotent
  methods replay instead of acting twice. A step must be safe to repeat.
- A failed call that may succeed later (unavailable, timed out, crashed) is
  retried with backoff; a typed error or :class:`Abort` is a "no".
- A saga past its ``timeout`` stops retrying and compensates: nothing stays
  in the middle for ever.
- Compensation runs for the failing step and every step before it, in
  reverse; a compensation must be safe when its step did not happen. A
  failing one is retried with backoff, ``compensation_retries`` times (the
  failure hook too); past that the saga is ``stuck``: it stops, says so in
  an error log line, ``cleave status``, the dashboard and the
  ``cleave_sagas_stuck`` metric, and waits for an operator to fix the cause
  and call :meth:`SagaRunner.retry`.
- ``local=True`` steps and the failure hook run in the same database
  transaction as the saga's record: they happen exactly once.
- One replica drives a saga at a time: it holds the saga's lease (see
  :mod:`cleave.data.lease`), renewed before every step with time enough for
  the step; taking it is one atomic conditional update, so two replicas that
  race for a saga never both win.
- The driver is a task of its own, outside any transaction of its starter:
  every step and record update commits on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, overload

import msgspec
import sqlalchemy as sa
import structlog

from cleave._aio import cancel_and_wait
from cleave._backoff import backoff
from cleave.context import CallContext, _current
from cleave.data import schema
from cleave.data.database import _ambient
from cleave.data.lease import RowLease
from cleave.data.prepared import Prepared
from cleave.errors import CallError, CleaveError, DefinitionError, LifecycleError, ServiceError
from cleave.messages import Message, to_msgpack
from cleave.observability.tracing import INTERNAL, tracer

if TYPE_CHECKING:
    from cleave.data.database import Database, Transaction

__all__ = ["Abort", "Saga", "SagaOutcome", "SagaRunner"]


S = TypeVar("S", bound=Message)
F = TypeVar("F", bound=Callable[..., Any])

Status = Literal["running", "done", "failed", "stuck"]

#: States of a saga that a driver works on (see cleave_sagas in cleave.data.schema).
_LIVE = ("running", "compensating")


class Abort(CleaveError):
    """Raised by a saga step to say no: the saga compensates and fails with ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SagaOutcome(msgspec.Struct, frozen=True):
    """Where a saga stands: ``running``, ``done``, ``failed`` (compensated) or ``stuck``.

    ``stuck``: a compensation failed more than ``compensation_retries`` times
    in a row and the saga waits for :meth:`SagaRunner.retry`. ``reason`` says
    why the saga compensates; ``error`` is the last error a step or
    compensation met (while it is retried, and why a saga is stuck).
    """

    saga_id: str
    status: Status
    state: Any
    reason: str | None = None
    error: str | None = None


class _Step:
    __slots__ = ("compensate", "fn", "local", "name")

    def __init__(self, fn: Callable[..., Awaitable[Any]], local: bool) -> None:
        self.fn = fn
        self.name = fn.__name__
        self.local = local
        self.compensate: Callable[..., Awaitable[Any]] | None = None


class Saga(Generic[S]):
    """A saga declared on a service class; on an instance it is a :class:`SagaRunner`."""

    def __init__(
        self,
        state: type[S],
        *,
        timeout: float = 30.0,
        step_timeout: float = 5.0,
        lease: float = 10.0,
        compensation_retries: int = 30,
    ) -> None:
        if not (isinstance(state, type) and issubclass(state, Message)):
            raise DefinitionError(f"cleave.Saga() takes the saga's state Message, got {state!r}")
        if compensation_retries < 0:
            raise DefinitionError(
                f"cleave.Saga(compensation_retries={compensation_retries}): give 0 or more "
                "(how often a failing compensation is tried again before the saga is stuck)"
            )
        self.state = state
        self.timeout = timeout
        self.step_timeout = step_timeout
        # A step starts with at least half a lease left, and that must outlast the step.
        self.lease = max(lease, step_timeout * 2)
        #: Retries of a failing compensation (0.2 s doubling to 5 s apart): 30 take ~2 min.
        self.compensation_retries = compensation_retries
        self.steps: list[_Step] = []
        self.failure_hook: Callable[..., Awaitable[None]] | None = None
        self.attr = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.attr = name

    @overload
    def step(self, fn: F, /) -> F: ...
    @overload
    def step(self, fn: None = None, /, *, local: bool = False) -> Callable[[F], F]: ...
    def step(self, fn: F | None = None, /, *, local: bool = False) -> F | Callable[[F], F]:
        """Register the next step: ``async def step(self, state) -> state``."""

        def register(f: F) -> F:
            if not asyncio.iscoroutinefunction(f):
                raise DefinitionError(f"saga step {f.__qualname__} must be `async def`")
            self.steps.append(_Step(f, local))
            return f

        return register(fn) if fn is not None else register

    def compensation(self, step: Callable[..., Any]) -> Callable[[F], F]:
        """Register the undo of ``step``: ``async def undo(self, state) -> None``."""
        target = next((s for s in self.steps if s.fn is step), None)
        if target is None:
            raise DefinitionError(
                f"{getattr(step, '__qualname__', step)} is not a step of this saga; declare "
                "the step (with @saga.step) before its compensation"
            )

        def register(f: F) -> F:
            if not asyncio.iscoroutinefunction(f):
                raise DefinitionError(f"compensation {f.__qualname__} must be `async def`")
            target.compensate = f
            return f

        return register

    def on_failure(self, fn: F) -> F:
        """Register what to do once compensated: ``async def hook(self, state, reason)``."""
        self.failure_hook = fn
        return fn

    @overload
    def __get__(self, obj: None, owner: type) -> Saga[S]: ...
    @overload
    def __get__(self, obj: object, owner: type) -> SagaRunner[S]: ...
    def __get__(self, obj: object | None, owner: type) -> Saga[S] | SagaRunner[S]:
        if obj is None:
            return self
        raise LifecycleError(
            f"{owner.__name__}.{self.attr} is not bound: the service is not running in a Cleave "
            f"host. In a unit test, use cleave.testing.build({owner.__name__})"
        )


class _Row:
    """A saga's record, as read from ``cleave_sagas`` and kept while this process drives it."""

    __slots__ = _COLUMNS = (
        "saga_id",
        "kind",
        "state",
        "step",
        "data",
        "attempts",
        "reason",
        "last_error",
        "next_attempt_at",
        "deadline_at",
        "owner",
        "lease_until",
        "traceparent",
    )
    saga_id: str
    kind: str
    state: str
    step: int
    data: bytes
    attempts: int
    reason: str | None
    last_error: str | None
    next_attempt_at: float
    deadline_at: float
    owner: str
    lease_until: float
    traceparent: str

    def __init__(self, values: Any) -> None:
        for name, value in zip(self._COLUMNS, values, strict=True):
            setattr(self, name, value)


def _p(name: str) -> Any:
    return sa.bindparam(f"p_{name}")


_t = schema.sagas
_INSERT = Prepared(
    sa.text(
        f"INSERT INTO cleave_sagas ({', '.join(c.name for c in _t.c)}) "
        f"VALUES ({', '.join(':p_' + c.name for c in _t.c)}) ON CONFLICT (saga_id) DO NOTHING"
    )
)
_SELECT = Prepared(
    sa.select(*(_t.c[c] for c in _Row._COLUMNS)).where(_t.c.saga_id == _p("saga_id"))
)
# Who drives a saga: only one that is still running or compensating can be leased.
_LEASE = RowLease(
    _t.c.saga_id,
    _t.c.owner,
    _t.c.lease_until,
    only=sa.or_(*(_t.c.state == s for s in _LIVE)),
    returning=[_t.c[c] for c in _Row._COLUMNS],
)
_UNSTICK = Prepared(
    _t.update()
    .where(_t.c.saga_id == _p("saga_id"))
    .where(_t.c.kind == _p("kind"))
    .where(_t.c.state == "stuck")
    .values(
        state="compensating",
        attempts=0,
        next_attempt_at=_p("now"),
        owner="",
        lease_until=0.0,
        updated_at=_p("now"),
    )
)
_MUTABLE = ("state", "step", "data", "attempts", "reason", "last_error", "next_attempt_at")
_SAVE = Prepared(
    _t.update()
    .where(_t.c.saga_id == _p("saga_id"))
    .where(_t.c.owner == _p("owner"))
    .values(
        **{c: _p(c) for c in _MUTABLE},
        lease_until=_p("lease_until"),
        updated_at=_p("updated_at"),
    )
)


class SagaRunner(Generic[S]):
    """Runs the sagas of one kind for one service instance."""

    def __init__(
        self, saga: Saga[S], instance: object, db: Database, *, service: str, owner: str
    ) -> None:
        if not saga.steps:
            raise DefinitionError(f"saga {service}.{saga.attr} has no steps")
        self.saga = saga
        self.instance = instance
        self.db = db
        self.service = service
        self.kind = f"{service}.{saga.attr}"
        self.log = structlog.get_logger("cleave.saga", service=service)
        self.owner = owner
        self.decoder = msgspec.msgpack.Decoder(saga.state)
        self._driving: dict[str, asyncio.Task[SagaOutcome]] = {}
        # Sagas this process just created (and so owns): driven without reading them back.
        self._created: dict[str, _Row] = {}
        self._recovery: asyncio.Task[None] | None = None
        self._limit = asyncio.Semaphore(64)
        self._stopped = False
        self.completed = 0
        self.failed = 0
        #: Sagas that got stuck here since this process started (see :meth:`retry`).
        self.got_stuck = 0
        self.last_pending = 0  # refreshed for metrics
        self.last_stuck = 0  # refreshed for metrics

    # -- the author's API --------------------------------------------------------------------

    async def create(self, saga_id: str, state: S) -> bool:
        """Record a new saga; False if it already exists.

        Inside an open transaction the record joins it, and the saga starts
        once that transaction commits (never, if it rolls back); otherwise the
        record commits, and the saga starts, at once.
        """
        if type(state) is not self.saga.state:
            raise DefinitionError(
                f"saga {self.kind} takes {self.saga.state.__name__}, got {type(state).__name__}"
            )
        now = time.time()
        ctx = _current.get()
        row = _Row(
            (
                saga_id,
                self.kind,
                "running",
                0,
                to_msgpack(state),
                0,
                None,
                None,
                now,
                now + self.saga.timeout,
                # Ours from the start: we drive it once it commits; recovery elsewhere
                # takes it only if we die first.
                self.owner,
                now + self.saga.lease,
                ctx.traceparent if ctx is not None else "",
            )
        )
        values = {f"p_{c}": getattr(row, c) for c in _Row._COLUMNS}
        values["p_created_at"] = values["p_updated_at"] = now
        async with self.db.transaction() as tx:
            if not await tx.run(_INSERT, values):
                return False
            tx.after_commit(lambda: self._begin(row))
        return True

    async def run(self, saga_id: str, wait: float | None = None) -> SagaOutcome:
        """Drive the saga; return once it is done, failed or stuck, or after ``wait`` seconds.

        ``wait`` defaults to what is left of the current call's deadline (less a
        margin to answer in). A saga still running then carries on in the
        background; :meth:`get` tells how it ended.

        Inside an open transaction of the service's database ``run`` does not
        wait: the saga cannot move before that transaction ends (it may be the
        one that creates it). It returns the saga as that transaction sees it;
        the saga goes on once it commits.
        """
        if self._in_transaction():
            return await self._current(saga_id)
        task = self._driver(saga_id)
        if wait is None:
            ctx = _current.get()
            wait = max(0.0, ctx.deadline - time.time() - 0.25) if ctx else self.saga.timeout
        try:
            return await asyncio.wait_for(asyncio.shield(task), wait)
        except TimeoutError:
            return await self._current(saga_id)

    async def start(self, saga_id: str, state: S, wait: float | None = None) -> SagaOutcome:
        """:meth:`create` then :meth:`run`."""
        await self.create(saga_id, state)
        return await self.run(saga_id, wait)

    async def get(self, saga_id: str) -> SagaOutcome | None:
        """The saga's outcome so far, or None if there is no such saga."""
        async with self.db.read() as tx:
            found = await tx.fetch_one(_SELECT, {"p_saga_id": saga_id})
        return None if found is None else self._outcome(_Row(found))

    async def retry(self, saga_id: str) -> bool:
        """Take a ``stuck`` saga up again where it stopped; False if it is not stuck.

        For an operator, once the cause is fixed (a service down for long, a bug
        in the compensation): the compensation's retries start over.
        """
        async with self.db.transaction() as tx:
            params = {"p_saga_id": saga_id, "p_kind": self.kind, "p_now": time.time()}
            if not await tx.run(_UNSTICK, params):
                return False
            tx.after_commit(lambda: self._resume(saga_id))
        self.log.info("stuck saga retried", saga_id=saga_id, kind=self.kind)
        return True

    # -- the engine --------------------------------------------------------------------------

    def _begin(self, row: _Row) -> None:
        """The transaction that created the saga committed: drive it."""
        if self._stopped:
            return  # recovery takes it up, here after a restart or in another replica
        if len(self._created) > 1024:  # never driven (a driver of that id was running)
            self._created.clear()
        self._created[row.saga_id] = row
        self._driver(row.saga_id)

    def _resume(self, saga_id: str) -> None:
        if not self._stopped:
            self._driver(saga_id)

    def _in_transaction(self) -> bool:
        """Whether the caller is inside an open write transaction of this database."""
        tx = _ambient.get()
        return tx is not None and tx.db is self.db and not tx.closed and not tx.readonly

    def _driver(self, saga_id: str) -> asyncio.Task[SagaOutcome]:
        """The task driving ``saga_id`` in this process, started if there is none."""
        task = self._driving.get(saga_id)
        if task is None:
            # A context of its own: the driver must not join its starter's transaction,
            # nor inherit its deadline; every step sets up its own call context.
            task = asyncio.get_running_loop().create_task(
                self._drive(saga_id), context=contextvars.Context()
            )
            self._driving[saga_id] = task

            def forget(_: asyncio.Task[SagaOutcome]) -> None:
                self._driving.pop(saga_id, None)

            task.add_done_callback(forget)
        return task

    def _outcome(self, row: _Row) -> SagaOutcome:
        status = _STATUS.get(row.state, "running")
        state = self.decoder.decode(row.data)
        return SagaOutcome(row.saga_id, status, state, row.reason, row.last_error)

    async def _current(self, saga_id: str) -> SagaOutcome:
        outcome = await self.get(saga_id)
        if outcome is None:
            raise LifecycleError(
                f"there is no saga {saga_id!r} of kind {self.kind}: create() it first (or the "
                "transaction that created it rolled back)"
            )
        return outcome

    async def _claim(self, saga_id: str) -> _Row | None:
        """Take (or renew) the lease on a live saga: its row, or None if we may not drive it.

        None: another owner holds it, or it is done, failed, stuck or gone.
        """
        async with self.db.transaction() as tx:
            found = await _LEASE.take(tx, saga_id, self.owner, self.saga.lease)
        return None if found is None else _Row(found)

    async def _save(self, tx: Transaction, row: _Row, **changes: Any) -> None:
        """Write ``changes`` to the saga's record (if it is still ours), then to ``row``."""
        now = time.time()
        changes.setdefault("lease_until", now + self.saga.lease)
        values = {f"p_{c}": changes.get(c, getattr(row, c)) for c in _MUTABLE}
        values["p_saga_id"] = row.saga_id
        values["p_owner"] = self.owner
        values["p_lease_until"] = changes["lease_until"]
        values["p_updated_at"] = now
        if await tx.run(_SAVE, values) != 1:
            raise _LostLease(row.saga_id)
        for name, value in changes.items():
            setattr(row, name, value)

    async def _drive(self, saga_id: str) -> SagaOutcome:
        async with self._limit:
            row = self._created.pop(saga_id, None)
            try:
                while True:
                    if row is None:
                        row = await self._claim(saga_id)
                        if row is None:
                            return await self._current(saga_id)
                    if row.state not in _LIVE:
                        return self._outcome(row)
                    if row.lease_until - time.time() < self.saga.lease / 2:
                        # What is left of the lease must outlast the next step (lease / 2 is
                        # at least step_timeout), or another replica could run it too.
                        row = None
                        continue
                    pause = row.next_attempt_at - time.time()
                    if pause > 0:
                        await asyncio.sleep(min(pause, self.saga.lease / 3))
                        row = None  # renew the lease, and see what others did meanwhile
                        continue
                    if row.state == "running":
                        await self._forward(row)
                    else:
                        await self._backward(row)
            except _LostLease:
                self.log.info("saga taken over by another owner", saga_id=saga_id, kind=self.kind)
                return await self._current(saga_id)

    async def _forward(self, row: _Row) -> None:
        saga = self.saga
        state = self.decoder.decode(row.data)
        step = saga.steps[row.step]
        now = time.time()
        if now >= row.deadline_at:
            reason = f"timed out after {saga.timeout:g}s in step {step.name}" + (
                f" ({row.last_error})" if row.last_error else ""
            )
            await self._to_compensation(row, reason)
            return
        try:
            if step.local:
                async with self.db.transaction() as tx:
                    new_state = await self._call(
                        step.fn, row, step.name, (state,), row.deadline_at - now
                    )
                    await self._advance(tx, row, new_state)
                return
            new_state = await self._call(
                step.fn, row, step.name, (state,), min(saga.step_timeout, row.deadline_at - now)
            )
        except Abort as exc:
            await self._to_compensation(row, exc.reason)
            return
        except ServiceError as exc:
            await self._to_compensation(row, f"{step.name}: {exc}")
            return
        except _LostLease:
            raise
        except Exception as exc:
            await self._retry(row, f"{step.name}: {_describe(exc)}")
            return
        async with self.db.transaction() as tx:
            await self._advance(tx, row, new_state)

    async def _advance(self, tx: Transaction, row: _Row, new_state: Any) -> None:
        if type(new_state) is not self.saga.state:
            raise DefinitionError(
                f"saga step {self.kind}.{self.saga.steps[row.step].name} must return the "
                f"saga's {self.saga.state.__name__}, got {type(new_state).__name__}"
            )
        done = row.step + 1 >= len(self.saga.steps)
        values: dict[str, Any] = {"lease_until": 0.0} if done else {}
        await self._save(
            tx,
            row,
            step=row.step + 1,
            data=to_msgpack(new_state),
            attempts=0,
            last_error=None,
            state="done" if done else "running",
            next_attempt_at=time.time(),
            **values,
        )
        if done:
            self.completed += 1
            self.log.debug("saga done", kind=self.kind, saga_id=row.saga_id)

    async def _to_compensation(self, row: _Row, reason: str) -> None:
        self.log.info("saga compensating", saga_id=row.saga_id, kind=self.kind, reason=reason)
        async with self.db.transaction() as tx:
            # The failing step is compensated too: it may have happened in part.
            await self._save(
                tx,
                row,
                state="compensating",
                step=min(row.step, len(self.saga.steps) - 1),
                attempts=0,
                reason=reason,
                next_attempt_at=time.time(),
            )

    async def _backward(self, row: _Row) -> None:
        state = self.decoder.decode(row.data)
        if row.step < 0:
            try:
                async with self.db.transaction() as tx:
                    if self.saga.failure_hook is not None:
                        await self._call(
                            self.saga.failure_hook,
                            row,
                            "on_failure",
                            (state, row.reason or "failed"),
                            self.saga.step_timeout,
                        )
                    await self._save(tx, row, state="failed", lease_until=0.0)
            except _LostLease:
                raise
            except Exception as exc:
                await self._retry(row, f"on_failure: {_describe(exc)}")
                return
            self.failed += 1
            self.log.info("saga failed", kind=self.kind, saga_id=row.saga_id, reason=row.reason)
            return
        step = self.saga.steps[row.step]
        if step.compensate is not None:
            try:
                await self._call(
                    step.compensate, row, step.compensate.__name__, (state,), self.saga.step_timeout
                )
            except _LostLease:
                raise
            except Exception as exc:
                await self._retry(row, f"{step.compensate.__name__}: {_describe(exc)}")
                return
        async with self.db.transaction() as tx:
            await self._save(
                tx,
                row,
                step=row.step - 1,
                attempts=0,
                last_error=None,
                next_attempt_at=time.time(),
            )

    async def _retry(self, row: _Row, error: str) -> None:
        attempts = row.attempts + 1
        if row.state == "compensating" and attempts > self.saga.compensation_retries:
            await self._stick(row, attempts, error)
            return
        delay = backoff(attempts, base=0.2, cap=5.0, jitter=0.3)
        self.log.warning(
            "saga step failed; will retry",
            saga_id=row.saga_id,
            kind=self.kind,
            error=error,
            attempt=attempts,
            retry_in=round(delay, 2),
        )
        async with self.db.transaction() as tx:
            await self._save(
                tx,
                row,
                attempts=attempts,
                last_error=error[:500],
                next_attempt_at=time.time() + delay,
            )

    async def _stick(self, row: _Row, attempts: int, error: str) -> None:
        """A compensation failed past its retries: stop, and tell an operator."""
        step = self.saga.steps[row.step] if row.step >= 0 else None
        where = "on_failure"
        if step is not None and step.compensate is not None:
            where = step.compensate.__name__
        async with self.db.transaction() as tx:
            await self._save(
                tx, row, state="stuck", attempts=attempts, last_error=error[:500], lease_until=0.0
            )
        self.got_stuck += 1
        self.log.error(
            f"saga stuck: {where} failed {attempts} times in a row, so the saga stopped; fix "
            f"the cause, then take it up again with {self.service}'s {self.saga.attr}."
            f"retry({row.saga_id!r})",
            saga_id=row.saga_id,
            kind=self.kind,
            step=where,
            attempts=attempts,
            error=error,
            reason=row.reason,
        )

    async def _call(
        self,
        fn: Callable[..., Awaitable[Any]],
        row: _Row,
        label: str,
        args: tuple[Any, ...],
        timeout: float,
    ) -> Any:
        timeout = max(timeout, 0.05)
        traceparent = row.traceparent
        span = None
        if tracer.enabled:
            span = tracer.start(
                f"saga {self.saga.attr}: {label}", INTERNAL, self.service, traceparent
            )
            if span is not None:
                traceparent = span.traceparent
                span.attributes["saga_id"] = row.saga_id
                span.attributes["attempt"] = row.attempts + 1
        ctx = CallContext(
            time.time() + timeout,
            f"saga-{row.saga_id}.{label}",
            self.service,
            traceparent,
            service=self.service,
        )
        token = _current.set(ctx)
        try:
            async with asyncio.timeout(timeout):
                result = await fn(self.instance, *args)
        except Abort as exc:
            if span is not None:
                tracer.finish(span, f"aborted: {exc.reason}")
            raise
        except TimeoutError:
            if span is not None:
                tracer.finish(span, f"timed out after {timeout:.2f}s")
            raise _StepTimeout(f"{label} took over {timeout:.2f}s") from None
        except BaseException as exc:
            if span is not None:
                tracer.finish(span, _describe(exc))
            raise
        else:
            if span is not None:
                if label == "on_failure":
                    span.attributes["reason"] = args[-1]
                tracer.finish(span, f"saga failed: {args[-1]}" if label == "on_failure" else "")
            return result
        finally:
            _current.reset(token)

    # -- recovery ----------------------------------------------------------------------------

    def start_recovery(self, interval: float = 1.0) -> None:
        """Resume, in the background, sagas left by a crash (or by another replica)."""
        self._recovery = asyncio.get_running_loop().create_task(
            self._recover(interval), context=contextvars.Context()
        )

    async def _recover(self, interval: float) -> None:
        table = schema.sagas
        while True:
            try:
                now = time.time()
                async with self.db.read() as tx:
                    ids = (
                        (
                            await tx.execute(
                                sa.select(table.c.saga_id)
                                .where(table.c.kind == self.kind)
                                .where(table.c.state.in_(_LIVE))
                                .where(
                                    sa.or_(
                                        table.c.lease_until < now,
                                        table.c.owner == self.owner,
                                        table.c.owner == "",
                                    )
                                )
                                .where(table.c.next_attempt_at <= now + interval)
                                .limit(200)
                            )
                        )
                        .scalars()
                        .all()
                    )
                for saga_id in ids:
                    self._driver(saga_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.log.warning(
                    "saga recovery failed; retrying", kind=self.kind, error=_describe(exc)
                )
            await asyncio.sleep(interval)

    async def pending(self) -> int:
        """Sagas of this kind not finished yet (stuck ones aside)."""
        return await self._count(_LIVE)

    async def stuck(self) -> int:
        """Sagas of this kind that are stuck, waiting for :meth:`retry`."""
        return await self._count(("stuck",))

    async def _count(self, states: tuple[str, ...]) -> int:
        table = schema.sagas
        async with self.db.read() as tx:
            n = await tx.scalar(
                sa.select(sa.func.count())
                .select_from(table)
                .where(table.c.kind == self.kind)
                .where(table.c.state.in_(states))
            )
        return int(n or 0)

    async def stop(self) -> None:
        """Stop driving; sagas in progress keep their record and are resumed later."""
        self._stopped = True
        if self._recovery is not None:
            await cancel_and_wait(self._recovery)
            self._recovery = None
        tasks = list(self._driving.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        # Hand our leases back so another replica need not wait for them to run out.
        with contextlib.suppress(Exception):
            async with self.db.transaction() as tx:
                await _LEASE.release_all(tx, self.owner)


class _LostLease(Exception):
    """Another owner took the saga over; stop driving it."""


class _StepTimeout(Exception):
    pass


_STATUS: dict[str, Status] = {"done": "done", "failed": "failed", "stuck": "stuck"}


def _describe(exc: BaseException) -> str:
    if isinstance(exc, CallError):
        return f"{exc.kind}: {exc}"
    return f"{type(exc).__name__}: {exc}"
