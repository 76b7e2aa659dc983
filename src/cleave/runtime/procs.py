"""Small OS-process helpers: no orphans, clean stops."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import os
import signal
import sys
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["alive", "die_with_parent", "freeze_heap", "prepare", "run_main", "terminate"]

T = TypeVar("T")

_PR_SET_PDEATHSIG = 1
_libc: ctypes.CDLL | None = None


def prepare() -> None:
    """Load libc now, so :func:`die_with_parent` does no loading in a forked child."""
    global _libc
    if _libc is None and sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            _libc = ctypes.CDLL(None, use_errno=True)


def die_with_parent() -> None:
    """Ask Linux to SIGTERM this process when its parent dies (even by SIGKILL).

    Call it first thing in a child process, or as ``preexec_fn`` after
    :func:`prepare` in the parent. A no-op where prctl is unavailable.
    """
    prepare()
    if _libc is not None:
        with contextlib.suppress(AttributeError):
            _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def freeze_heap() -> None:
    """Collect once, then keep what is alive now out of every later collection.

    What a process builds to start (modules, contracts, SQLAlchemy tables and
    compiled statements, the ASGI app) lives as long as it does, and a full
    collection walks all of it again: 75-80 ms with the shop in one process
    on a 2-core machine, an order stalled that long every 15 s or so under
    load. Frozen (``gc.freeze``), a full collection walks only what was made
    since. Call it once the process is ready to serve.
    """
    gc.collect()
    gc.freeze()


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def terminate(pids: list[int], timeout: float = 10.0) -> None:
    """SIGTERM ``pids``, wait up to ``timeout`` seconds, then SIGKILL what is left."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in pids:
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def run_main(main: Coroutine[Any, Any, T], *, grace: float = 5.0) -> T:
    """Like ``asyncio.run(main)``, but never waits for ever on tasks left behind.

    ``asyncio.run`` cancels the tasks still pending when ``main`` returns and
    waits for each to finish. A library task that swallows its cancellation
    (a NATS client still reconnecting to a server that died with the
    supervisor, say) then keeps a stopped process alive for ever; here it
    gets ``grace`` seconds.
    """
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(main)
    finally:
        try:
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.wait(pending, timeout=grace))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            if not any(not t.done() for t in asyncio.all_tasks(loop)):
                loop.close()
