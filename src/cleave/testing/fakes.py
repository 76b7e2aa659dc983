"""Fakes of the services a service ``use()``\\ s, that behave like the real thing.

A fake is a plain object with some of the contract's methods. :func:`fake`
puts it behind the same boundary a real call crosses, so a unit test meets
what production meets:

- the request must be the contract's type, and is round-tripped through the
  wire codec (its constraints checked, as the callee's decoder would);
- the answer must be the contract's response type, round-tripped too;
- an error leaves as a caller sees it: typed if the contract (or Cleave)
  allow-lists its kind, :class:`~cleave.errors.RemoteError` otherwise, so a
  fake that raises ``KeyError`` teaches the caller what a crash looks like.

::

    class FakeVisits:
        async def record(self, req: Record) -> Count:
            return Count(name=req.name, count=1)

    visits = cleave.testing.fake(Visits, FakeVisits())   # typed as Visits
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import msgspec

from cleave.contracts import ContractSpec, MethodSpec, spec_of
from cleave.errors import CallError, DefinitionError, InvalidArgument, from_info, to_info
from cleave.messages import Message, from_msgpack, to_msgpack

__all__ = ["Fake", "fake"]

C = TypeVar("C")


class Fake:
    """``impl`` behind a contract's boundary; see :func:`fake`."""

    def __init__(self, spec: ContractSpec, impl: object) -> None:
        self.spec = spec
        #: The object the test wrote (its recorded calls, its state).
        self.impl = impl
        missing = [name for name in spec.methods if not callable(getattr(impl, name, None))]
        if len(missing) == len(spec.methods):
            raise DefinitionError(
                f"{type(impl).__name__} has none of {spec.name}'s methods "
                f"({', '.join(spec.methods)}); a fake needs at least the ones the test calls"
            )

    def __getattr__(self, name: str) -> Any:
        method = self.spec.methods.get(name)
        if method is None:
            raise AttributeError(f"contract {self.spec.name} v{self.spec.version} has no {name!r}")
        return lambda request: self._call(method, request)

    async def _call(self, method: MethodSpec, request: Message) -> Message:
        if type(request) is not method.request:
            raise DefinitionError(
                f"called {method.qualname} with {type(request).__name__}; the contract takes "
                f"{method.request.__name__}"
            )
        impl = getattr(self.impl, method.name, None)
        if impl is None:
            raise DefinitionError(
                f"the fake of {self.spec.name} ({type(self.impl).__name__}) has no "
                f"{method.name}; add `async def {method.name}(self, req: "
                f"{method.request.__name__}) -> {method.response.__name__}` to it"
            )
        try:
            request = from_msgpack(to_msgpack(request), method.request)
        except msgspec.DecodeError as exc:  # what the callee's decoder would answer
            raise InvalidArgument(
                f"bad request for {method.qualname}: {exc}",
                service=self.spec.name,
                method=method.name,
            ) from None
        try:
            result: Message = await impl(request)
            if type(result) is not method.response:
                raise TypeError(
                    f"{method.qualname} returned {type(result).__name__}; the contract says "
                    f"{method.response.__name__}"
                )
            return from_msgpack(to_msgpack(result), method.response)
        except Exception as exc:
            info = to_info(exc, service=self.spec.name, method=method.name)
            seen: CallError = from_info(info, self.spec.errors)
            raise seen from exc

    def __repr__(self) -> str:
        return f"<fake {self.spec.name} v{self.spec.version}: {type(self.impl).__name__}>"


def fake(contract: Callable[..., C], impl: object) -> C:
    """``impl`` typed as ``contract``, behaving at its boundary like a real callee.

    Pass the result to :func:`cleave.testing.build` (or the ``cleave_service``
    fixture, which wraps for you) in place of the real dependency.
    """
    proxy: C = Fake(spec_of(contract), impl)  # type: ignore[assignment]  # a structural stand-in
    return proxy
