"""The context every call carries: deadline, request id, caller, trace.

A :class:`CallContext` is created at the edge (an HTTP request, an event
delivery) and travels with every call made while handling it, in-process
through a context variable and across processes in the wire envelope.

- The **deadline** is absolute (seconds since the epoch, so it survives a hop
  between processes). A nested call inherits it; :func:`timeout` tightens it
  for the calls inside its block, never loosens it.
- The **request id** is stable across retries of the same call, so it is the
  idempotency key. Nested calls get ids derived from their parent's id and the
  order in which the parent made them (``<parent>.1``, ``<parent>.2``, ...),
  so a retried handler repeats the same ids for the same calls.
- The **caller** names the service (or ``gateway``) that made the call.
- The **identity** is the end user the call acts for (see :class:`Identity`):
  set by the gateway from a verified token, it travels with every nested call
  for the services to authorize and audit with. ``None`` means the system:
  Cleave's own background work (saga steps, event handlers, timers) acts for
  no user. An event handler reads who caused its event in ``caused_by``,
  for auditing only.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import msgspec

from cleave.errors import ConfigError

__all__ = [
    "ANONYMOUS",
    "CAUSED_BY",
    "CallContext",
    "Identity",
    "current",
    "decode_identity",
    "encode_identity",
    "new_request_id",
    "remaining",
    "timeout",
]


class Identity(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """Who a call acts for: the subject of a token the gateway verified, and its scopes.

    Only the gateway makes one, from a verified token; a service reads it from
    ``cleave.current().identity`` and never from a field of the request::

        me = cleave.current().identity
        if me is not None and not me.may_act_for(req.account_id):
            raise cleave.NotFound(...)

    The empty subject is :data:`ANONYMOUS`: a caller of a public route with no token.
    """

    subject: str
    scopes: tuple[str, ...] = ()

    @property
    def anonymous(self) -> bool:
        return not self.subject

    def has(self, scope: str) -> bool:
        """Whether the token granted ``scope``."""
        return scope in self.scopes

    def may_act_for(self, subject: str, *, admin: str = "admin") -> bool:
        """Whether this identity is ``subject`` itself, or holds the ``admin`` scope."""
        return (not self.anonymous and self.subject == subject) or admin in self.scopes


#: The identity of a request without a token, on a public route.
ANONYMOUS = Identity("")

#: The event header that says who caused an event (see :func:`encode_identity`).
CAUSED_BY = "Cleave-Caused-By"

_identity_json = msgspec.json.Decoder(Identity)


def encode_identity(identity: Identity) -> str:
    """``identity`` as a short JSON text, for an event header."""
    return msgspec.json.encode(identity).decode()


def decode_identity(text: str) -> Identity | None:
    """The identity in an event header; None if there is none or it does not decode."""
    if not text:
        return None
    try:
        return _identity_json.decode(text)
    except msgspec.DecodeError:
        return None  # audit data only: a malformed header must not poison the event


class CallContext(msgspec.Struct, gc=False):
    """Deadline, request id, caller and trace parent of the call being handled.

    A Struct, not a plain class: one is made per call, and msgspec builds it
    in a third of the time.
    """

    deadline: float
    request_id: str
    caller: str
    traceparent: str = ""
    #: Calls made so far while handling this one (numbers the children's ids).
    calls: int = 0
    #: The service handling this call (set by whoever runs it; names its log lines).
    service: str = ""
    #: The end user the call acts for; None: the system (Cleave's background work).
    identity: Identity | None = None
    #: In an event handler: who caused the event (for auditing; never for authorization).
    caused_by: Identity | None = None

    def child_request_id(self) -> str:
        """The request id of the next call made while handling this one."""
        self.calls += 1
        return f"{self.request_id}.{self.calls}"

    def __repr__(self) -> str:
        left = self.deadline - time.time()
        who = "" if self.identity is None else f" for {self.identity.subject or 'anonymous'}"
        return f"<CallContext {self.request_id} from {self.caller}{who} {left:.3f}s left>"


_current: ContextVar[CallContext | None] = ContextVar("cleave_call", default=None)
_tightened: ContextVar[float | None] = ContextVar("cleave_deadline", default=None)

_prefix = ""
_counter = itertools.count(1)


def new_request_id() -> str:
    """A fresh, process-unique request id: cheap, sortable within a process."""
    global _prefix
    pid = os.getpid()
    if not _prefix or not _prefix.startswith(f"{pid:x}-"):
        # Re-seed after fork so children never reuse the parent's ids.
        _prefix = f"{pid:x}-{os.urandom(4).hex()}-"
    return f"{_prefix}{next(_counter):x}"


def current() -> CallContext | None:
    """The context of the call being handled, or None outside any call."""
    return _current.get()


def remaining() -> float | None:
    """Seconds left before the current deadline (tightened ones included), or None."""
    ctx = _current.get()
    tight = _tightened.get()
    deadline = ctx.deadline if ctx is not None else None
    if tight is not None and (deadline is None or tight < deadline):
        deadline = tight
    return None if deadline is None else deadline - time.time()


@contextmanager
def timeout(seconds: float) -> Iterator[None]:
    """Tighten the deadline of every call made inside the block.

    ::

        with cleave.timeout(0.5):
            receipt = await self.billing.charge(req)   # at most 0.5 s, or less if
                                                       # the caller has less left
    """
    if not seconds > 0:
        raise ConfigError(f"cleave.timeout() takes a positive number of seconds, got {seconds!r}")
    deadline = time.time() + seconds
    outer = _tightened.get()
    token = _tightened.set(deadline if outer is None else min(outer, deadline))
    try:
        yield
    finally:
        _tightened.reset(token)
