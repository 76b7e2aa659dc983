"""The caller's side of a call: typed clients and the router behind them.

A client (what ``cleave.use(Billing)`` gives a service) has one coroutine per
contract method. Each call goes to the :class:`Router` of its process, which
builds the call's context (deadline, request id, caller, trace) and sends it
to the callee: a direct await when the callee runs in this process, the
remote transport otherwise. The caller cannot tell which, except by speed.

This is the hottest path of the monolith, so it avoids allocation and
indirection it does not need: no timer is armed for a local call unless its
deadline is tighter than the one its caller already runs under.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from cleave.context import CallContext, _current, _tightened, new_request_id
from cleave.errors import DeadlineExceeded, DefinitionError, Unavailable

if TYPE_CHECKING:
    from cleave.contracts import ContractSpec, MethodSpec
    from cleave.messages import Message
    from cleave.runtime.dispatch import Dispatcher
    from cleave.transport.base import RpcClient

__all__ = ["Client", "Router", "make_client"]


class Router:
    """Sends each call to the right place: this process or the remote transport."""

    def __init__(
        self,
        *,
        local: dict[str, Dispatcher] | None = None,
        remote: RpcClient | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.local: dict[str, Dispatcher] = local if local is not None else {}
        self.remote = remote
        self.timeout = timeout

    async def call(self, method: MethodSpec, request: Message, caller: str) -> Message:
        """Call ``method`` with ``request`` on behalf of ``caller``."""
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
            ctx = CallContext(deadline, parent.child_request_id(), caller, parent.traceparent)
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
        dispatcher = self.local.get(method.contract.name)
        if dispatcher is not None:
            if not armed:
                return await dispatcher.invoke(method, request, ctx)
            return await _with_deadline(dispatcher.invoke(method, request, ctx), ctx, method)
        if self.remote is None:
            raise Unavailable(
                f"{method.contract.name} does not run in this process and there is no remote "
                "transport",
                service=method.contract.name,
                method=method.name,
            )
        return await self.remote.call(method, request, ctx)


async def _with_deadline(
    call: Coroutine[Any, Any, Message], ctx: CallContext, method: MethodSpec
) -> Message:
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout_at(loop.time() + (ctx.deadline - time.time())):
            return await call
    except TimeoutError:
        raise DeadlineExceeded(
            f"{method.qualname} did not answer before its deadline; it may still have run",
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
    call: Callable[[MethodSpec, Message, str], Coroutine[Any, Any, Message]],
    method: MethodSpec,
    caller: str,
) -> Callable[[Message], Coroutine[Any, Any, Message]]:
    def invoke(request: Message) -> Coroutine[Any, Any, Message]:
        return call(method, request, caller)

    invoke.__name__ = invoke.__qualname__ = method.name
    invoke.__doc__ = f"Call {method.qualname} (v{method.contract.version})."
    return invoke


def make_client(contract: ContractSpec, router: Router, caller: str) -> Any:
    """A client of ``contract`` that calls through ``router`` as ``caller``.

    Typed as the contract Protocol where it is used (``cleave.use(Billing)``).
    """
    client = Client(contract, caller)
    for name, method in contract.methods.items():
        setattr(client, name, _bind(router.call, method, caller))
    return client
