from __future__ import annotations

import pickle

import pytest

import cleave
from cleave.errors import ErrorInfo, from_info, to_info


class Declined(cleave.ServiceError):
    http_status = 402


def test_the_tree() -> None:
    for cls in (cleave.InvalidArgument, cleave.NotFound, cleave.Conflict):
        assert issubclass(cls, cleave.ServiceError)
    for cls in (
        cleave.ServiceError,
        cleave.DeadlineExceeded,
        cleave.Unavailable,
        cleave.RemoteError,
    ):
        assert issubclass(cls, cleave.CallError)
    for cls in (
        cleave.CallError,
        cleave.DefinitionError,
        cleave.ConfigError,
        cleave.LifecycleError,
    ):
        assert issubclass(cls, cleave.CleaveError)


def test_service_error_kind_defaults_to_class_name() -> None:
    assert Declined.kind == "Declined"
    assert cleave.NotFound.kind == "NotFound"


@pytest.mark.parametrize(
    "exc",
    [
        cleave.NotFound("no such thing"),
        cleave.InvalidArgument("bad"),
        cleave.Conflict("clash"),
        cleave.DeadlineExceeded("late"),
        cleave.ServiceError("generic"),
    ],
)
def test_builtin_errors_round_trip_typed(exc: cleave.CallError) -> None:
    back = from_info(to_info(exc, service="billing", method="charge"), {})
    assert type(back) is type(exc)
    assert back.message == exc.message
    assert (back.service, back.method) == ("billing", "charge")
    assert str(back) == f"{exc.message} (from billing.charge)"


def test_unavailable_keeps_retry_after() -> None:
    back = from_info(
        to_info(cleave.Unavailable("busy", retry_after=3.0), service="s", method="m"), {}
    )
    assert isinstance(back, cleave.Unavailable)
    assert back.retry_after == 3.0


def test_declared_errors_are_rebuilt_only_when_allowed() -> None:
    info = to_info(Declined("no money"), service="billing", method="charge")
    assert type(from_info(info, {"Declined": Declined})) is Declined
    remote = from_info(info, {})
    assert type(remote) is cleave.RemoteError
    assert remote.remote_kind == "Declined"
    assert str(remote) == "Declined: no money (from billing.charge)"


def test_unexpected_exceptions_become_remote_errors() -> None:
    info = to_info(KeyError("k"), service="s", method="m")
    assert info == ErrorInfo("KeyError", "'k'", "s", "m")
    err = from_info(info, {})
    assert isinstance(err, cleave.RemoteError)
    assert err.remote_kind == "KeyError"


def test_a_remote_error_passing_through_keeps_what_really_failed() -> None:
    first = from_info(to_info(ValueError("x"), service="billing", method="charge"), {})
    again = from_info(to_info(first, service="orders", method="place"), {})
    assert isinstance(again, cleave.RemoteError)
    assert (again.remote_kind, again.origin) == ("ValueError", "billing.charge")


def test_errors_pickle() -> None:
    err = cleave.NotFound("x", service="a", method="b")
    back = pickle.loads(pickle.dumps(err))
    assert (type(back), back.message, back.origin) == (cleave.NotFound, "x", "a.b")
