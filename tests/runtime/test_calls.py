"""Calls behave the same in every placement: context, errors, deadlines, idempotency."""

from __future__ import annotations

import time
from typing import Any

import pytest
import sample_app
from sample_app import Add, Audit, Fail, Front, Greet, Greeter, Hello, Names, SetFailures, Sleep

import cleave
from cleave.context import CallContext, _current


async def test_a_call_carries_id_caller_and_deadline(placed: Any) -> None:
    greeting = await placed.client(Greeter, caller="tester").greet(Greet(name="ann"))
    assert greeting.text == "hello ann"
    assert greeting.caller == "tester"
    assert greeting.request_id
    assert 0 < greeting.deadline_left <= 10.0  # the default timeout


async def test_nested_calls_derive_their_ids_in_call_order(placed: Any) -> None:
    token = _current.set(CallContext(time.time() + 5, "root", "tester"))
    try:
        result = await placed.client(Front).twice(Hello(name="bo"))
    finally:
        _current.reset(token)
    assert result.text == "root.1.1 root.1.2"


async def test_nested_calls_inherit_the_deadline(placed: Any) -> None:
    token = _current.set(CallContext(time.time() + 0.8, "root", "tester"))
    try:
        result = await placed.client(Front).hello(Hello(name="cy"))
    finally:
        _current.reset(token)
    assert result.text == "hello cy"
    assert 0 < result.deadline_left <= 0.8


@pytest.mark.parametrize(
    ("how", "error", "kind"),
    [
        ("not_found", cleave.NotFound, "NotFound"),
        ("invalid", cleave.InvalidArgument, "InvalidArgument"),
        ("conflict", cleave.Conflict, "Conflict"),
        ("teapot", sample_app.Teapot, "Teapot"),
        ("nested", cleave.RemoteError, "Undeclared"),
        ("crash", cleave.RemoteError, "KeyError"),
        ("wrong_type", cleave.RemoteError, "TypeError"),
    ],
)
async def test_errors_arrive_typed_or_as_remote_errors(
    placed: Any, how: str, error: type[cleave.CallError], kind: str
) -> None:
    with pytest.raises(error) as caught:
        await placed.client(Greeter).fail(Fail(how=how))  # type: ignore[arg-type]
    exc = caught.value
    assert type(exc) is error
    assert (exc.service, exc.method) == ("greeter", "fail")
    if isinstance(exc, cleave.RemoteError):
        assert exc.remote_kind == kind


async def test_a_deadline_is_never_a_hang(placed: Any) -> None:
    started = time.monotonic()
    with pytest.raises(cleave.DeadlineExceeded) as caught, cleave.timeout(0.2):
        await placed.client(Greeter).sleep(Sleep(seconds=3))
    assert time.monotonic() - started < 1.0
    assert caught.value.service == "greeter"


async def test_no_call_starts_after_the_deadline(placed: Any) -> None:
    token = _current.set(CallContext(time.time() - 0.01, "late", "tester"))
    try:
        with pytest.raises(cleave.DeadlineExceeded, match="no time left"):
            await placed.client(Greeter).greet(Greet(name="x"))
    finally:
        _current.reset(token)


async def test_a_request_of_the_wrong_type_is_refused(placed: Any) -> None:
    with pytest.raises(cleave.DefinitionError, match="takes Greet"):
        await placed.client(Greeter).greet(Hello(name="x"))  # type: ignore[arg-type]


async def _call_as(request_id: str, coro_fn: Any) -> Any:
    token = _current.set(CallContext(time.time() + 5, request_id, "tester"))
    try:
        return await coro_fn()
    finally:
        _current.reset(token)


async def test_idempotent_methods_run_once_per_request_id(placed: Any) -> None:
    greeter = placed.client(Greeter)
    first = await _call_as("retry-1", lambda: greeter.add(Add(key="k", amount=5)))
    again = await _call_as("retry-1", lambda: greeter.add(Add(key="k", amount=5)))
    assert first == again == sample_app.Total(key="k", total=5, calls=1)
    assert sample_app.GreeterService.executions == 1
    other = await _call_as("retry-2", lambda: greeter.add(Add(key="k", amount=5)))
    assert other.total == 10
    assert sample_app.GreeterService.executions == 2


async def test_a_reused_id_with_another_request_is_a_conflict(placed: Any) -> None:
    greeter = placed.client(Greeter)
    await _call_as("reuse", lambda: greeter.add(Add(key="k", amount=1)))
    with pytest.raises(cleave.Conflict, match="already used for a different request"):
        await _call_as("reuse", lambda: greeter.add(Add(key="k", amount=2)))


async def test_typed_errors_of_idempotent_methods_replay(placed: Any) -> None:
    greeter = placed.client(Greeter)
    for _ in range(2):
        with pytest.raises(cleave.InvalidArgument, match="negative"):
            await _call_as("neg", lambda: greeter.add(Add(key="n", amount=-1)))
    assert sample_app.GreeterService.executions == 1


async def test_events_reach_consumers_once_each(placed: Any) -> None:
    await placed.client(Greeter).greet(Greet(name="dee", times=3))
    await placed.client(Greeter).greet(Greet(name="eve"))
    await placed.settle()
    names = (await placed.client(Audit).names(Names())).names
    assert sorted(names) == ["dee", "dee", "dee", "eve"]


async def test_a_failing_handler_is_retried_and_its_writes_roll_back(placed: Any) -> None:
    audit = placed.client(Audit)
    await audit.set_failures(SetFailures(count=2))
    await placed.client(Greeter).greet(Greet(name="fay"))
    await placed.settle(timeout=15)
    assert (await audit.names(Names())).names == ("fay",)
    assert sample_app.AuditService.failures_left == 0
