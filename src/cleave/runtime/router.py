"""The caller's side of a call: typed clients and the router behind them.

A client (what ``cleave.use(Billing)`` gives a service) has one coroutine per
contract method, each bound to the :class:`~cleave.resilience.Policy` of that
(caller, method). A call goes to the :class:`Router` of its process, which
builds the call's context (deadline, request id, caller, trace), applies the
policy (bulkhead, circuit breaker, retries, fallback; see
:mod:`cleave.resilience`) and sends each attempt to the callee: a direct
await when the callee runs in this process, the remote transport otherwise.
The caller cannot tell which, except by speed.

This is the hottest path of the monolith, so it avoids allocation and
indirection it does not need: an in-process attempt is bounded by its
policy's timeout through a shared watchdog (:mod:`cleave.runtime.timers`),
and an asyncio timer is armed only when the call's deadline is tighter than
the one its caller already runs under.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from time import perf_counter
from typing import TYPE_CHECKING, Any

from cleave.context import CallContext, _current, _tightened, new_request_id
from cleave.errors import (
    BulkheadFull,
    CallError,
    CircuitOpen,
    DeadlineExceeded,
    DefinitionError,
    Unavailable,
)
from cleave.observability.metrics import CallStats
from cleave.observability.tracing import CLIENT, id_attributes, tracer
from cleave.resilience import (
    CLOSED,
    Bulkhead,
    CircuitBreaker,
    Policy,
    ResilienceOverride,
    ResilienceSettings,
    is_failure,
    should_retry,
)
from cleave.runtime.timers import Watchdog

if TYPE_CHECKING:
    from cleave.contracts import ContractSpec, MethodSpec
    from cleave.messages import Message
    from cleave.runtime.dispatch import Dispatcher
    from cleave.transport.base import RpcClient

__all__ = ["Client", "Router", "make_client"]

#: Overrides by caller, then by "service" or "service.method".
Overrides = dict[str, dict[str, ResilienceOverride]]


class Router:
    """Sends each call to the right place: this process or the remote transport."""

    def __init__(
        self,
        *,
        local: dict[str, Dispatcher] | None = None,
        remote: RpcClient | None = None,
        timeout: float = 10.0,
        resilience: ResilienceSettings | None = None,
        overrides: Overrides | None = None,
    ) -> None:
        self.local: dict[str, Dispatcher] = local if local is not None else {}
        self.remote = remote
        self.timeout = timeout
        self.resilience = resilience or ResilienceSettings()
        self.overrides = overrides or {}
        self.breakers: dict[tuple[str, str], CircuitBreaker] = {}
        self.bulkheads: dict[tuple[str, str], Bulkhead] = {}
        #: Calls made, by (caller, "service.method").
        self.stats: dict[tuple[str, str], CallStats] = {}
        #: Bounds in-process attempts by their policy's timeout.
        self.watchdog = Watchdog()

    def policy(self, caller: str, method: MethodSpec, fallback: Any = None) -> Policy:
        """The policy of ``caller`` calling ``method``; breakers are shared per service."""
        own = self.overrides.get(caller, {})
        target = method.contract.name
        settings = self.resilience.merged(own.get(target), own.get(method.qualname))
        service_level = self.resilience.merged(own.get(target))
        key = (caller, target)
        breaker = self.breakers.get(key)
        if breaker is None and service_level.breaker:
            breaker = self.breakers[key] = CircuitBreaker(f"{caller}->{target}", service_level)
        bulkhead = self.bulkheads.get(key)
        if bulkhead is None and service_level.bulkhead:
            bulkhead = self.bulkheads[key] = Bulkhead(f"{caller}->{target}", service_level.bulkhead)
        policy = Policy(
            settings,
            breaker if settings.breaker else None,
            bulkhead if settings.bulkhead else None,
            fallback,
        )
        policy.stats = self.stats.setdefault((caller, method.qualname), CallStats())
        return policy

    async def call(
        self, method: MethodSpec, request: Message, caller: str, policy: Policy | None = None
    ) -> Message:
        """Call ``method`` with ``request`` on behalf of ``caller``, under ``policy``.

        One coroutine on the way of a call that works the first time; retries,
        refusals and fallbacks take the slow path (:meth:`_recover`).
        """
        if type(request) is not method.request:
            raise DefinitionError(
                f"{caller} called {method.qualname} with {type(request).__name__}; the contract "
                f"takes {method.request.__name__}"
            )
        now = time.time()
        deadline = now + self.timeout
        parent = _current.get()
        armed = parent is None
        if parent is not None:
            if parent.deadline < deadline:
                deadline = parent.deadline
            # The end user travels on; an event's causer does not become the acting user.
            ctx = CallContext(
                deadline,
                parent.child_request_id(),
                caller,
                parent.traceparent,
                identity=parent.identity,
            )
        else:
            ctx = CallContext(deadline, new_request_id(), caller)
        tight = _tightened.get()
        if tight is not None and tight < ctx.deadline:
            ctx.deadline = tight
            armed = True
        if ctx.deadline <= now:
            raise DeadlineExceeded(
                f"no time left to call {method.qualname} (the deadline passed "
                f"{now - ctx.deadline:.3f}s ago)",
                service=method.contract.name,
                method=method.name,
            )
        if policy is None:
            return await self._attempt(method, request, ctx, armed, None)
        span = None
        if tracer.enabled:
            span = tracer.start(method.qualname, CLIENT, caller, ctx.traceparent)
            if span is not None:
                ctx.traceparent = span.traceparent
                id_attributes(request, span.attributes)
        stats = policy.stats
        started = perf_counter()
        bulkhead = policy.bulkhead
        breaker = policy.breaker
        target = method.contract.name
        entered = None  # the bulkhead this call holds a place in
        probe = False  # whether this call holds one of a half-open breaker's places
        try:
            if bulkhead is not None:
                if bulkhead.active >= bulkhead.limit:
                    bulkhead.enter(target, method.name)  # refuses, with the why
                bulkhead.active += 1
                entered = bulkhead
            if breaker is not None and breaker.state is not CLOSED:
                probe = breaker.allow(target, method.name)
            dispatcher = self.local.get(target)
            try:
                if dispatcher is not None and not armed:
                    # In-process: the caller's side counts the call for both. The hottest
                    # path of the monolith, so _local's body is inlined here.
                    watchdog = self.watchdog
                    timer = watchdog.arm(policy.timeout)
                    try:
                        result = await dispatcher.invoke(method, request, ctx, True)
                    except asyncio.CancelledError:
                        if not watchdog.disarm(timer):
                            raise
                        watchdog.uncancel(timer)
                        raise _attempt_timed_out(method, policy.timeout) from None
                    except BaseException:
                        watchdog.disarm(timer)
                        raise
                    if watchdog.disarm(timer):
                        watchdog.uncancel(timer)
                else:
                    result = await self._attempt(method, request, ctx, armed, policy.timeout)
            except CallError as exc:
                if breaker is not None:
                    breaker.record(is_failure(exc, target), probe=probe)
                probe = False
                result = await self._recover(method, request, ctx, armed, policy, exc, started)
            else:
                if breaker is not None:
                    breaker.record(False, started, probe)
                probe = False
        except BaseException as exc:
            if probe and breaker is not None:
                # Cancelled or crashed before its outcome was known: a probe that never
                # answered is a failed one, and its place goes back.
                breaker.record(True, probe=True)
            outcome = exc.kind if isinstance(exc, CallError) else type(exc).__name__
            stats.record(perf_counter() - started, outcome)
            if span is not None:
                tracer.finish(span, f"{outcome}: {exc}")
            if isinstance(exc, CircuitOpen | BulkheadFull) and policy.fallback is not None:
                return await _fall_back(policy, request, exc)
            raise
        finally:
            if entered is not None:
                entered.active -= 1
        stats.record_ok(perf_counter() - started)
        if span is not None:
            tracer.finish(span)
        return result

    async def _recover(
        self,
        method: MethodSpec,
        request: Message,
        ctx: CallContext,
        armed: bool,
        policy: Policy,
        exc: CallError,
        started: float,
    ) -> Message:
        """After a failed first attempt: retry while it is safe and time allows, else fall back."""
        breaker = policy.breaker
        target = method.contract.name
        attempt = 1
        while True:
            if attempt > policy.retries or not should_retry(exc, method.retry_safe):
                return await _fall_back(policy, request, _gave_up(exc, attempt, started, policy))
            pause = policy.delay(attempt)
            if time.time() + pause >= ctx.deadline:
                # Deadlines win over retries.
                return await _fall_back(policy, request, _gave_up(exc, attempt, started, policy))
            await asyncio.sleep(pause)
            attempt += 1
            # The same call again: same id, same deadline, a fresh count for its children.
            ctx = CallContext(
                ctx.deadline, ctx.request_id, ctx.caller, ctx.traceparent, identity=ctx.identity
            )
            probe = False
            try:
                if breaker is not None:
                    probe = breaker.allow(target, method.name)
            except Unavailable as refused:
                return await _fall_back(policy, request, refused)
            try:
                result = await self._attempt(method, request, ctx, armed, policy.timeout)
            except CallError as again:
                if breaker is not None:
                    breaker.record(is_failure(again, target), probe=probe)
                exc = again
                continue
            except BaseException:
                if probe and breaker is not None:
                    breaker.record(True, probe=True)
                raise
            if breaker is not None:
                breaker.record(False, probe=probe)
            return result

    async def _attempt(
        self,
        method: MethodSpec,
        request: Message,
        ctx: CallContext,
        armed: bool,
        attempt_timeout: float | None,
    ) -> Message:
        dispatcher = self.local.get(method.contract.name)
        if dispatcher is not None:
            if not armed:
                if attempt_timeout is None:
                    return await dispatcher.invoke(method, request, ctx)
                return await self._local(dispatcher, method, request, ctx, attempt_timeout)
            call = dispatcher.invoke(method, request, ctx)
            if attempt_timeout is not None and time.time() + attempt_timeout < ctx.deadline:
                limit = f"within its attempt timeout of {attempt_timeout:g}s"
                return await _with_deadline(call, time.time() + attempt_timeout, method, limit)
            return await _with_deadline(call, ctx.deadline, method, "before its deadline")
        if self.remote is None:
            raise Unavailable(
                f"{method.contract.name} does not run in this process and there is no remote "
                "transport",
                service=method.contract.name,
                method=method.name,
                ran=False,
            )
        if attempt_timeout is not None and time.time() + attempt_timeout < ctx.deadline:
            ctx = CallContext(
                time.time() + attempt_timeout,
                ctx.request_id,
                ctx.caller,
                ctx.traceparent,
                identity=ctx.identity,
            )
        return await self.remote.call(method, request, ctx)

    async def _local(
        self,
        dispatcher: Dispatcher,
        method: MethodSpec,
        request: Message,
        ctx: CallContext,
        timeout: float,
    ) -> Message:
        """An in-process attempt, bounded by ``timeout`` as a remote one would be."""
        watchdog = self.watchdog
        timer = watchdog.arm(timeout)
        try:
            result = await dispatcher.invoke(method, request, ctx)
        except asyncio.CancelledError:
            if not watchdog.disarm(timer):
                raise  # not ours: the caller, or the process, is giving up
            watchdog.uncancel(timer)
            raise _attempt_timed_out(method, timeout) from None
        except BaseException:
            watchdog.disarm(timer)
            raise
        if watchdog.disarm(timer):
            watchdog.uncancel(timer)  # the callee swallowed the cancel and answered anyway
        return result


def _gave_up(exc: CallError, attempts: int, started: float, policy: Policy) -> CallError:
    """``exc``, or for attempts that all timed out, what the caller waited for in all.

    The last attempt's "did not answer within 2.5s" would hide the retries and
    the seconds the caller really waited (a 504 after 7.6 s).
    """
    if attempts < 2 or type(exc) is not DeadlineExceeded:
        return exc
    waited = perf_counter() - started
    each = f", {policy.timeout:g}s each" if policy.timeout is not None else ""
    error = DeadlineExceeded(
        f"{exc.origin or 'the callee'} did not answer: {attempts} attempts over {waited:.1f}s"
        f"{each}; it may still have run",
        service=exc.service,
        method=exc.method,
    )
    error.__cause__ = exc
    return error


def _attempt_timed_out(method: MethodSpec, timeout: float) -> DeadlineExceeded:
    return DeadlineExceeded(
        f"{method.qualname} did not answer within its attempt timeout of {timeout:g}s; "
        "it may still have run",
        service=method.contract.name,
        method=method.name,
    )


async def _fall_back(policy: Policy, request: Message, exc: CallError) -> Message:
    """The fallback's answer to a call that could not be made, else the error."""
    if policy.fallback is not None and isinstance(exc, Unavailable | DeadlineExceeded):
        result: Message = await policy.fallback(request)
        return result
    raise exc


async def _with_deadline(
    call: Coroutine[Any, Any, Message], deadline: float, method: MethodSpec, limit: str
) -> Message:
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout_at(loop.time() + (deadline - time.time())):
            return await call
    except TimeoutError:
        raise DeadlineExceeded(
            f"{method.qualname} did not answer {limit}; it may still have run",
            service=method.contract.name,
            method=method.name,
        ) from None


class Client:
    """A typed stand-in for a contract; its methods send calls through a router."""

    def __init__(self, contract: ContractSpec, caller: str) -> None:
        self.__contract = contract
        self.__caller = caller

    def __repr__(self) -> str:
        return f"<client of {self.__contract.name} for {self.__caller}>"


def _bind(
    call: Callable[[MethodSpec, Message, str, Policy], Coroutine[Any, Any, Message]],
    method: MethodSpec,
    caller: str,
    policy: Policy,
) -> Callable[[Message], Coroutine[Any, Any, Message]]:
    def invoke(request: Message) -> Coroutine[Any, Any, Message]:
        return call(method, request, caller, policy)

    invoke.__name__ = invoke.__qualname__ = method.name
    invoke.__doc__ = f"Call {method.qualname} (v{method.contract.version})."
    return invoke


def make_client(contract: ContractSpec, router: Router, caller: str, fallback: Any = None) -> Any:
    """A client of ``contract`` that calls through ``router`` as ``caller``.

    Typed as the contract Protocol where it is used (``cleave.use(Billing)``).
    ``fallback``'s methods of the same name answer calls that could not be made.
    """
    client = Client(contract, caller)
    for name, method in contract.methods.items():
        policy = router.policy(caller, method, getattr(fallback, name, None))
        setattr(client, name, _bind(router.call, method, caller, policy))
    return client
