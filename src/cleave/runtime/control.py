"""How commands reach a running ``cleave up``: a small HTTP API on loopback.

The supervisor writes ``.cleave/run/supervisor.json`` (its pid, the control
port, the gateway URL) and serves the API on that port; ``cleave ps`` and
``cleave down`` read the file and call the API, with the run's token from
``.cleave/run/control-token`` (the API is behind :mod:`cleave.runtime.guard`:
changes need the token, a loopback ``Host`` and no foreign ``Origin``). If the
supervisor is gone or does not answer, ``stop`` still makes sure no process
of the app is left.
"""

from __future__ import annotations

import contextlib
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from cleave.config import mask_url
from cleave.errors import CleaveError, LifecycleError
from cleave.runtime.guard import read_token
from cleave.runtime.procs import alive, terminate

if TYPE_CHECKING:
    from cleave.app import LoadedApp
    from cleave.runtime.natscluster import EmbeddedCluster

__all__ = ["Operated", "control_app", "read_state", "request", "state_path", "stop", "write_state"]


class Operated(Protocol):
    """What the control API operates: ``cleave up``'s supervisor, or ``cleave run``'s monolith."""

    loaded: LoadedApp
    _status: str
    gateway_url: str
    nats_url: str
    #: The embedded NATS cluster's nodes, when ``[nats] cluster`` started one.
    cluster: EmbeddedCluster | None

    def processes(self) -> list[dict[str, Any]]: ...
    async def status(self) -> dict[str, Any]: ...
    def request_stop(self) -> None: ...
    async def scale(self, service: str, replicas: int) -> dict[str, Any]: ...
    async def deploy(self, service: str) -> dict[str, Any]: ...
    async def chaos(
        self, action: str, service: str, replica: int | None, value: float | None
    ) -> dict[str, Any]: ...


def control_app(sup: Operated, extra: list[Route] | None = None) -> Starlette:
    """The API the supervisor serves: ps, status, down, scale, deploy, chaos (+ ``extra``)."""

    async def ps(request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "app": sup.loaded.app.name,
                "status": sup._status,
                "gateway_url": sup.gateway_url,
                "nats_url": mask_url(sup.nats_url),
                "nats_nodes": sup.cluster.describe() if sup.cluster is not None else [],
                "processes": sup.processes(),
            }
        )

    async def status(request: Request) -> JSONResponse:
        return JSONResponse({"app": sup.loaded.app.name, "workers": await sup.status()})

    async def down(request: Request) -> JSONResponse:
        sup.request_stop()
        return JSONResponse({"stopping": True})

    async def scale(request: Request) -> JSONResponse:
        body = await _body(request, ("service", "replicas"))
        return JSONResponse(await sup.scale(str(body["service"]), int(body["replicas"])))

    async def deploy(request: Request) -> JSONResponse:
        body = await _body(request, ("service",))
        return JSONResponse(await sup.deploy(str(body["service"])))

    async def chaos(request: Request) -> JSONResponse:
        body = await _body(request, ("action", "service"))
        replica = body.get("replica")
        value = body.get("value")
        return JSONResponse(
            await sup.chaos(
                str(body["action"]),
                str(body["service"]),
                int(replica) if replica is not None else None,
                float(value) if value is not None else None,
            )
        )

    async def refused(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(
            {"error": {"kind": type(exc).__name__, "message": str(exc)}}, status_code=400
        )

    return Starlette(
        routes=[
            Route("/api/ps", ps, methods=["GET"]),
            Route("/api/status", status, methods=["GET"]),
            Route("/api/down", down, methods=["POST"]),
            Route("/api/scale", scale, methods=["POST"]),
            Route("/api/deploy", deploy, methods=["POST"]),
            Route("/api/chaos", chaos, methods=["POST"]),
            *(extra or []),
        ],
        exception_handlers={CleaveError: refused, ValueError: refused},
    )


async def _body(request: Request, required: tuple[str, ...]) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise ValueError("the request body must be JSON") from None
    if not isinstance(body, dict) or any(k not in body for k in required):
        raise ValueError(f"the request body must be an object with {', '.join(required)}")
    return body


def state_path(loaded: LoadedApp) -> Path:
    return loaded.run_dir / "supervisor.json"


def write_state(loaded: LoadedApp, state: dict[str, Any]) -> None:
    path = state_path(loaded)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(path)


def read_state(loaded: LoadedApp) -> dict[str, Any] | None:
    """The running supervisor's state, or None if none runs."""
    path = state_path(loaded)
    try:
        state: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not alive(int(state.get("pid", 0))):
        return None
    return state


def request(
    loaded: LoadedApp, method: str, path: str, body: Any = None, timeout: float = 10.0
) -> Any:
    """Call the control API of the running ``cleave up`` of ``loaded``."""
    state = read_state(loaded)
    if state is None:
        raise LifecycleError(
            f"no `cleave up` or `cleave run` is running for app {loaded.app.name} (no live "
            f"process in {loaded.run_dir}); start one with `cleave up {loaded.root}` or "
            f"`cleave run {loaded.root}`"
        )
    url = f"http://127.0.0.1:{state['control_port']}{path}"
    data = json.dumps(body).encode() if body is not None else None
    headers = {"content-type": "application/json"}
    token = read_token(loaded.run_dir)
    if token:
        headers["authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        with contextlib.suppress(ValueError, KeyError, TypeError):
            detail = json.loads(detail)["error"]["message"]
        raise LifecycleError(f"cleave up of {loaded.app.name} refused: {detail}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        raise LifecycleError(
            f"the supervisor of {loaded.app.name} (pid {state['pid']}) does not answer on "
            f"{url}: {exc}"
        ) from None


def stop(loaded: LoadedApp, timeout: float = 60.0) -> bool:
    """Stop the running ``cleave up``; True if one was running. Leaves no process behind."""
    state = read_state(loaded)
    if state is None:
        _reap_leftovers(loaded)
        return False
    pid = int(state["pid"])
    try:
        request(loaded, "POST", "/api/down")
    except LifecycleError:
        terminate([pid], timeout=10)
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if alive(pid):
        terminate([pid], timeout=5)
    _reap_leftovers(loaded, state)
    return True


def _ours(pid: int, marker: str) -> bool:
    """Whether ``pid`` still is a process of this app (pids get reused)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    return marker in cmdline


def _reap_leftovers(loaded: LoadedApp, state: dict[str, Any] | None = None) -> None:
    """Kill processes a supervisor that died badly may have left (PDEATHSIG covers most)."""
    if state is None:
        try:
            state = json.loads(state_path(loaded).read_text())
        except (OSError, ValueError):
            return
    marker = str(loaded.state_dir)
    pids = [int(p) for p in state.get("children", []) if alive(int(p)) and _ours(int(p), marker)]
    if pids:
        terminate(pids, timeout=10)
    state_path(loaded).unlink(missing_ok=True)
