"""The dashboard: one page that shows the whole running app, live.

Served by ``cleave run`` and ``cleave up`` on the admin port (8001 by
default): the topology from the declared dependencies (every call and event
flow with its live rate, error rate and p99), the processes, throughput over
the last minutes, event streams with their lag and dead letters, and recent
traces with a waterfall and a search by order id, trace id or any other id.
Dead letters are listed with replay and purge buttons, which do what
``cleave dlq replay`` and ``cleave dlq purge`` do: ``GET /api/dead-letters``,
``POST /api/dead-letters/replay`` and ``/purge`` with ``{"ids": [...]}`` or
``{"all": true}``, and ``"service"`` to keep to one service.

Those actions change the app: the server wraps this app in the runtime's
guard (:mod:`cleave.runtime.guard`), which wants the run's token. The page
carries it (``token``, in a ``<meta>`` tag): a page of another site cannot
read this one (no CORS), and the guard refuses a Host that is not loopback.

The page polls small JSON endpoints (``/api/overview``, ``/api/traces``) and
draws with plotly.js, served from the ``plotly`` package: no build step, no
network. A :class:`Source` gives the numbers: the monolith's own host, or the
supervisor asking every worker.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import html
import itertools
import time
from importlib import resources
from typing import TYPE_CHECKING, Any, Protocol

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from cleave._aio import cancel_and_wait
from cleave.errors import CleaveError, ConfigError
from cleave.observability.metrics import merge_snapshots, p99_of
from cleave.observability.tracing import summaries

if TYPE_CHECKING:
    from cleave.app import App

__all__ = ["Dashboard", "Source"]

#: Seconds of history the rates are computed over.
WINDOW = 10.0
SAMPLE_EVERY = 2.0


class Source(Protocol):
    """Where the dashboard's numbers come from."""

    async def processes(self) -> list[dict[str, Any]]: ...
    async def snapshots(self) -> list[dict[str, Any]]: ...
    async def spans(self, query: str, limit: int) -> list[dict[str, Any]]: ...
    async def trace(self, trace_id: str) -> list[dict[str, Any]]: ...
    async def dead_letters(self) -> list[dict[str, Any]]: ...
    async def replay_dead_letters(
        self, ids: list[str] | None, service: str | None
    ) -> list[dict[str, Any]]: ...
    async def purge_dead_letters(
        self, ids: list[str] | None, service: str | None
    ) -> list[dict[str, Any]]: ...
    async def metrics(self) -> bytes: ...


class _LetterAction(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The body of a replay or purge: some letters by id, or all (of one service)."""

    ids: list[str] = []
    all: bool = False
    service: str | None = None


class Dashboard:
    """Samples a :class:`Source` and serves the page and its API."""

    def __init__(self, app: App, source: Source, placement: str, *, token: str = "") -> None:
        self.app = app
        #: The run's control token, embedded in the page for its buttons.
        self.token = token
        self.source = source
        self.placement = placement
        self.history: collections.deque[tuple[float, dict[str, Any]]] = collections.deque(
            maxlen=int(300 / SAMPLE_EVERY)
        )
        self._task: asyncio.Task[None] | None = None
        self.layout = _layout(app)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._sample(), name="dashboard")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)

    async def _sample(self) -> None:
        while True:
            with contextlib.suppress(Exception):  # a worker restarting is not our problem
                await self.sample()
            await asyncio.sleep(SAMPLE_EVERY)

    async def sample(self) -> dict[str, Any]:
        merged = merge_snapshots(await self.source.snapshots())
        self.history.append((time.time(), merged))
        return merged

    # -- what the page shows -----------------------------------------------------------------

    def _window(self) -> tuple[tuple[float, dict[str, Any]], tuple[float, dict[str, Any]]]:
        now = self.history[-1]
        past = self.history[0]
        for entry in self.history:
            if now[0] - entry[0] <= WINDOW:
                past = entry
                break
        return past, now

    async def overview(self) -> dict[str, Any]:
        if not self.history:
            await self.sample()
        (t0, old), (t1, new) = self._window()
        span = max(t1 - t0, 1e-9)
        processes = await self.source.processes()
        running = {p["service"] for p in processes}
        for name in self.layout:  # a service with no process at all is shown, and down
            if name not in running and (name != "gateway" or self.app.gateway is not None):
                processes.append(
                    {
                        "service": name,
                        "replica": "-",
                        "pid": None,
                        "group": "",
                        "status": "not running",
                        "uptime_s": None,
                        "restarts": 0,
                        "version": "",
                    }
                )
        edges = [self._edge(e, old, new, span) for e in self.app.edges]
        nodes = self._nodes(processes, old, new, span, edges)
        return {
            "app": self.app.name,
            "placement": self.placement,
            "time": t1,
            "window_s": round(t1 - t0, 1),
            "nodes": nodes,
            "edges": edges,
            "processes": processes,
            "streams": self._streams(old, new, span),
            "outbox": new.get("outbox", {}),
            "sagas": new.get("sagas", {}),
            "sagas_stuck": {k: v for k, v in new.get("sagas_stuck", {}).items() if v},
            "breakers": [b for b in new.get("breakers", []) if b["state"] != "closed"],
            "series": self._series(),
        }

    def _edge(
        self, edge: Any, old: dict[str, Any], new: dict[str, Any], span: float
    ) -> dict[str, Any]:
        if edge.kind == "call":

            def pick(snap: dict[str, Any]) -> list[dict[str, Any]]:
                return [
                    c
                    for c in snap.get("calls", [])
                    if c["caller"] == edge.source and c["service"] == edge.target
                ]

            count, errors, buckets = _delta(pick(old), pick(new))
            p99 = p99_of(buckets)
            return {
                "source": edge.source,
                "target": edge.target,
                "kind": "call",
                "event": "",
                "rate": round(count / span, 2),
                "error_rate": round(errors / count, 4) if count else 0.0,
                "p99_ms": round(p99 * 1000, 2) if p99 is not None and p99 != float("inf") else None,
            }

        def pick_events(snap: dict[str, Any]) -> list[dict[str, Any]]:
            return [
                c
                for c in snap.get("consumers", [])
                if c["source"] == edge.source
                and c["service"] == edge.target
                and c["event"] == edge.event
            ]

        handled = sum(c["processed"] + c["duplicates"] for c in pick_events(new)) - sum(
            c["processed"] + c["duplicates"] for c in pick_events(old)
        )
        failed = sum(c["failures"] for c in pick_events(new)) - sum(
            c["failures"] for c in pick_events(old)
        )
        attempts = handled + failed
        return {
            "source": edge.source,
            "target": edge.target,
            "kind": "event",
            "event": edge.event,
            "rate": round(max(0, handled) / span, 2),
            "error_rate": round(failed / attempts, 4) if attempts > 0 else 0.0,
            "p99_ms": None,
            "lag": sum(c["pending"] for c in pick_events(new)),
            "dead_letters": sum(c["dead_lettered"] for c in pick_events(new)),
        }

    def _nodes(
        self,
        processes: list[dict[str, Any]],
        old: dict[str, Any],
        new: dict[str, Any],
        span: float,
        edges: list[dict[str, Any]],
    ) -> list[dict[str, Any]]:
        nodes = []
        for name, (x, y) in self.layout.items():
            rows = [p for p in processes if p["service"] == name and p["pid"] is not None]
            ready = sum(1 for p in rows if p["status"] == "ready")
            served_old = [s for s in old.get("served", []) if s["service"] == name]
            served_new = [s for s in new.get("served", []) if s["service"] == name]
            count, errors, buckets = _delta(served_old, served_new)
            incoming = [e for e in edges if e["target"] == name]
            dead = sum(e.get("dead_letters", 0) for e in incoming)
            if ready == 0:
                health = "down"  # no process running it, or none of them ready
            elif (
                (rows and ready < len(rows))
                or (count and errors / count > 0.05)
                or dead
                or any(e["error_rate"] > 0.05 for e in incoming)
            ):
                health = "degraded"
            else:
                health = "ok"
            p99 = p99_of(buckets)
            nodes.append(
                {
                    "name": name,
                    "x": x,
                    "y": y,
                    "health": health,
                    "replicas": len(rows),
                    "ready": ready,
                    "rate": round(count / span, 2),
                    "error_rate": round(errors / count, 4) if count else 0.0,
                    "p99_ms": round(p99 * 1000, 2) if p99 not in (None, float("inf")) else None,
                }
            )
        return nodes

    def _streams(
        self, old: dict[str, Any], new: dict[str, Any], span: float
    ) -> list[dict[str, Any]]:
        before = {c["name"]: c for c in old.get("consumers", [])}
        rows = []
        for c in sorted(new.get("consumers", []), key=lambda c: c["name"]):
            prev = before.get(c["name"], {})
            rows.append(
                {
                    **{
                        k: c[k]
                        for k in (
                            "name",
                            "source",
                            "service",
                            "event",
                            "processed",
                            "duplicates",
                            "failures",
                            "dead_lettered",
                            "redeliveries",
                            "pending",
                        )
                    },
                    "rate": round((c["processed"] - prev.get("processed", 0)) / span, 2),
                }
            )
        return rows

    def _series(self) -> dict[str, Any]:
        """Calls served per second, per service, over the history."""
        points = list(self.history)
        times, per_service = [], collections.defaultdict(list)
        names = sorted({s["service"] for _, snap in points for s in snap.get("served", [])})
        for (t0, a), (t1, b) in itertools.pairwise(points):
            times.append(t1)
            for name in names:
                count, _, _ = _delta(
                    [s for s in a.get("served", []) if s["service"] == name],
                    [s for s in b.get("served", []) if s["service"] == name],
                )
                per_service[name].append(round(max(0, count) / max(t1 - t0, 1e-9), 2))
        return {"time": times, "services": dict(per_service)}

    async def traces(self, query: str, limit: int) -> list[dict[str, Any]]:
        return summaries(await self.source.spans(query, limit), limit)

    # -- the web app -------------------------------------------------------------------------

    def routes(self) -> list[Route]:
        page = resources.files("cleave.observability").joinpath("dashboard.html").read_text()

        async def index(request: Request) -> HTMLResponse:
            meta = f'<meta name="cleave-token" content="{html.escape(self.token)}">'
            # Never cached, never framed: the token is for this page only.
            headers = {
                "cache-control": "no-store",
                "x-frame-options": "DENY",
                "content-security-policy": "frame-ancestors 'none'",
            }
            return HTMLResponse(page.replace("</head>", meta + "\n</head>", 1), headers=headers)

        async def plotly_js(request: Request) -> Response:
            path = resources.files("plotly").joinpath("package_data/plotly.min.js")
            return FileResponse(
                str(path),
                media_type="application/javascript",
                headers={"cache-control": "max-age=86400"},
            )

        async def overview(request: Request) -> JSONResponse:
            return JSONResponse(await self.overview())

        async def traces(request: Request) -> JSONResponse:
            query = request.query_params.get("q", "").strip()
            limit = min(200, int(request.query_params.get("limit", "40")))
            return JSONResponse(await self.traces(query, limit))

        async def trace(request: Request) -> JSONResponse:
            spans = await self.source.trace(request.path_params["trace_id"])
            spans.sort(key=lambda s: s["start"])
            return JSONResponse(
                {"summary": summaries(spans, 1)[0] if spans else None, "spans": spans}
            )

        async def dead_letters(request: Request) -> JSONResponse:
            return JSONResponse(await self.source.dead_letters())

        async def act_on_letters(request: Request) -> JSONResponse:
            # The same as `cleave dlq replay|purge`: ids, or all (of one service).
            try:
                body = msgspec.json.decode(await request.body() or b"{}", type=_LetterAction)
                if bool(body.ids) == body.all:
                    raise ConfigError('give the letters\' "ids", or "all": true (not both)')
                ids = None if body.all else body.ids
                if request.url.path.endswith("/replay"):
                    done = await self.source.replay_dead_letters(ids, body.service)
                else:
                    done = await self.source.purge_dead_letters(ids, body.service)
            except (msgspec.DecodeError, CleaveError) as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
            return JSONResponse(done)

        async def metrics(request: Request) -> Response:
            return Response(await self.source.metrics(), media_type="text/plain; version=0.0.4")

        return [
            Route("/", index, methods=["GET"]),
            Route("/static/plotly.min.js", plotly_js, methods=["GET"]),
            Route("/api/overview", overview, methods=["GET"]),
            Route("/api/traces", traces, methods=["GET"]),
            Route("/api/traces/{trace_id}", trace, methods=["GET"]),
            Route("/api/dead-letters", dead_letters, methods=["GET"]),
            Route("/api/dead-letters/replay", act_on_letters, methods=["POST"]),
            Route("/api/dead-letters/purge", act_on_letters, methods=["POST"]),
            Route("/metrics", metrics, methods=["GET"]),
        ]

    def asgi(self) -> Starlette:
        return Starlette(routes=self.routes())


def _delta(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> tuple[int, int, list[int]]:
    """Calls, errors and histogram buckets added between two snapshots of the same rows."""

    def total(rows: list[dict[str, Any]]) -> tuple[int, int, list[int]]:
        count = sum(r["count"] for r in rows)
        errors = sum(r["errors"] for r in rows)
        buckets = [sum(col) for col in zip(*(r["buckets"] for r in rows), strict=True)]
        return count, errors, buckets

    c1, e1, b1 = total(new)
    c0, e0, b0 = total(old)
    if not b1:
        return 0, 0, []
    if not b0 or c1 < c0:  # nothing before, or a worker restarted and counts began again
        return c1, e1, b1
    return c1 - c0, e1 - e0, [max(0, a - b) for a, b in zip(b1, b0, strict=True)]


def _layout(app: App) -> dict[str, tuple[float, float]]:
    """Positions for the topology: callers left of callees, event consumers after producers."""
    layer: dict[str, int] = {"gateway": 0}
    names = ["gateway", *app.services]
    calls = [(e.source, e.target) for e in app.edges if e.kind == "call"]
    events = [(e.source, e.target) for e in app.edges if e.kind == "event"]
    for name in app.services:
        layer.setdefault(name, 1)
    for _ in range(len(names)):  # longest path, bounded: calls may form cycles
        changed = False
        for src, dst in calls:
            if src != dst and layer[src] + 1 > layer[dst] and layer[src] + 1 < len(names):
                layer[dst] = layer[src] + 1
                changed = True
        if not changed:
            break
    called = {dst for _, dst in calls if _ != "gateway"}
    for src, dst in events:
        if dst not in called and layer[dst] <= layer[src]:
            layer[dst] = layer[src] + 1
    columns: dict[int, list[str]] = collections.defaultdict(list)
    for name in names:
        columns[layer[name]].append(name)
    positions = {}
    for x, members in columns.items():
        for i, name in enumerate(members):
            positions[name] = (float(x), 1.4 * (float(i) - (len(members) - 1) / 2))
    return positions
