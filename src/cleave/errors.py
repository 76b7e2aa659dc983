"""Every error Cleave raises, in one tree.

::

    CleaveError                  root: catch this to catch anything from Cleave
    ├── DefinitionError          a message, contract, service or app is declared wrongly
    ├── ConfigError              cleave.toml or a command-line setting is wrong
    ├── LifecycleError           something was used in the wrong state (not started, stopped)
    └── CallError                a call failed; says which service and method
        ├── ServiceError         raised on purpose by service code; crosses the wire typed
        │   ├── InvalidArgument  the request is wrong (HTTP 422)
        │   ├── NotFound         the thing asked for does not exist (HTTP 404)
        │   ├── PermissionDenied the caller's identity may not do this (HTTP 403)
        │   └── Conflict         the request clashes with current state (HTTP 409)
        ├── DeadlineExceeded     the call's deadline passed; it may still have run (HTTP 504)
        ├── Unavailable          nobody could take the call right now (HTTP 503)
        │   ├── CircuitOpen      calls to the service fail too often; not sent for a while
        │   └── BulkheadFull     too many calls to the service in flight; not sent
        └── RemoteError          the callee failed with an error that is not allow-listed

A service raises :class:`ServiceError` subclasses on purpose. Its contract
lists its own subclasses (``errors=[...]``); together with the built-in ones
above they form the allow-list: only those are rebuilt, typed, on the caller's
side. Anything else a callee raises reaches the caller as :class:`RemoteError`
carrying the original type name and message, in every placement alike.

A caller that gets :class:`DeadlineExceeded` or :class:`RemoteError` cannot
know whether the callee's effects happened: make such methods idempotent
(``@cleave.idempotent``) so a retry is safe.
"""

from __future__ import annotations

from typing import ClassVar

import msgspec

__all__ = [
    "BulkheadFull",
    "CallError",
    "CircuitOpen",
    "CleaveError",
    "ConfigError",
    "Conflict",
    "DeadlineExceeded",
    "DefinitionError",
    "ErrorInfo",
    "InvalidArgument",
    "LifecycleError",
    "NotFound",
    "PermissionDenied",
    "RemoteError",
    "ServiceError",
    "Unavailable",
    "from_info",
    "to_info",
]


class CleaveError(Exception):
    """Root of every error Cleave raises."""


class DefinitionError(CleaveError, TypeError):
    """A message, contract, service or app is declared wrongly; the text says how to fix it."""


class ConfigError(CleaveError, ValueError):
    """A setting in cleave.toml or on the command line is wrong; the text names it."""


class LifecycleError(CleaveError, RuntimeError):
    """A component was used in a state that does not allow it (not started, stopped)."""


class CallError(CleaveError):
    """A call to a service method failed.

    ``service`` and ``method`` name where the error came from; ``kind`` is the
    error's type name as it travels on the wire.
    """

    kind: ClassVar[str] = "CallError"
    #: HTTP status the gateway answers with when this error reaches it.
    http_status: ClassVar[int] = 500

    def __init__(self, message: str = "", *, service: str = "", method: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.service = service
        self.method = method

    @property
    def origin(self) -> str:
        """``service.method`` where the error was raised, or ``""`` if unknown."""
        if self.service and self.method:
            return f"{self.service}.{self.method}"
        return self.service

    def __str__(self) -> str:
        return f"{self.message} (from {self.origin})" if self.origin else self.message

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), self.message, self.service, self.method))


def _rebuild(cls: type[CallError], message: str, service: str, method: str) -> CallError:
    return cls(message, service=service, method=method)


class ServiceError(CallError):
    """Base for errors a service raises on purpose; they cross the wire typed.

    Subclass it for your domain and list the subclass in the contract's
    ``errors=[...]``; the ``kind`` defaults to the class name::

        class InsufficientFunds(cleave.ServiceError):
            http_status = 409
    """

    kind = "ServiceError"
    http_status = 400

    def __init_subclass__(cls, **kw: object) -> None:
        super().__init_subclass__(**kw)
        if "kind" not in cls.__dict__:
            cls.kind = cls.__name__


class InvalidArgument(ServiceError):
    """The request is wrong: a field fails validation or names something unknown."""

    http_status = 422


class NotFound(ServiceError):
    """The entity the request names does not exist."""

    http_status = 404


class PermissionDenied(ServiceError):
    """The caller's identity (``cleave.current().identity``) may not do what it asked.

    For something the caller may not even know exists, raise :class:`NotFound`
    instead, so that a refusal does not reveal it.
    """

    http_status = 403


class Conflict(ServiceError):
    """The request clashes with the current state (e.g. an idempotency key reused)."""

    http_status = 409


class DeadlineExceeded(CallError):
    """The deadline passed before an answer came. The callee may still have run."""

    kind = "DeadlineExceeded"
    http_status = 504


class Unavailable(CallError):
    """No replica could take the call now (none running, draining, or overloaded)."""

    kind = "Unavailable"
    http_status = 503

    def __init__(
        self,
        message: str = "",
        *,
        service: str = "",
        method: str = "",
        retry_after: float | None = None,
        ran: bool | None = None,
    ) -> None:
        super().__init__(message, service=service, method=method)
        self.retry_after = retry_after
        #: False when the callee provably did not run the call (safe to retry); else unknown.
        self.ran = ran


class CircuitOpen(Unavailable):
    """Calls to the service failed too often lately; this one was not sent."""

    kind = "CircuitOpen"


class BulkheadFull(Unavailable):
    """Too many calls to the service are in flight already; this one was not sent."""

    kind = "BulkheadFull"


class RemoteError(CallError):
    """The callee failed with an error that is not allow-listed.

    ``remote_kind`` holds the original exception's type name, e.g. ``KeyError``.
    """

    kind = "RemoteError"
    http_status = 502

    def __init__(
        self, message: str = "", *, service: str = "", method: str = "", remote_kind: str = ""
    ) -> None:
        super().__init__(message, service=service, method=method)
        self.remote_kind = remote_kind

    def __str__(self) -> str:
        prefix = f"{self.remote_kind}: " if self.remote_kind else ""
        return prefix + super().__str__()


class ErrorInfo(msgspec.Struct, frozen=True, array_like=True):
    """An error as it travels between services."""

    kind: str
    message: str
    service: str
    method: str
    retry_after: float | None = None
    #: False when the callee provably did not run the call.
    ran: bool | None = None


_BUILTIN: dict[str, type[CallError]] = {
    c.kind: c
    for c in (
        ServiceError,
        InvalidArgument,
        NotFound,
        PermissionDenied,
        Conflict,
        DeadlineExceeded,
        Unavailable,
        CircuitOpen,
        BulkheadFull,
        RemoteError,
    )
}


def to_info(exc: BaseException, *, service: str, method: str) -> ErrorInfo:
    """Describe ``exc``, raised by ``service.method``, for the wire."""
    if isinstance(exc, CallError):
        # A RemoteError passing through keeps the name of what really failed.
        kind = exc.remote_kind if isinstance(exc, RemoteError) and exc.remote_kind else exc.kind
        return ErrorInfo(
            kind=kind,
            message=exc.message,
            service=exc.service or service,
            method=exc.method or method,
            retry_after=getattr(exc, "retry_after", None),
            ran=getattr(exc, "ran", None),
        )
    return ErrorInfo(
        kind=type(exc).__name__,
        message=str(exc) or type(exc).__name__,
        service=service,
        method=method,
    )


def from_info(info: ErrorInfo, allowed: dict[str, type[ServiceError]]) -> CallError:
    """Rebuild an error from the wire: typed if allow-listed, else :class:`RemoteError`."""
    cls: type[CallError] | None = allowed.get(info.kind) or _BUILTIN.get(info.kind)
    if cls is None:
        return RemoteError(
            info.message, service=info.service, method=info.method, remote_kind=info.kind
        )
    if issubclass(cls, Unavailable):
        return cls(
            info.message,
            service=info.service,
            method=info.method,
            retry_after=info.retry_after,
            ran=info.ran,
        )
    return cls(info.message, service=info.service, method=info.method)
