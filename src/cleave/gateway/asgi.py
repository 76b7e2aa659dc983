"""The gateway as an ASGI app (Starlette): HTTP in, contract calls out, JSON back.

Every answer is JSON, errors included: ``{"error": {"kind", "message",
"request_id"}}``. Input problems are 4xx with a message that names the
field; no input produces a 500 or a traceback; a method that a path does
not serve is a 405 whose ``Allow`` names every method it does. Each request
is the edge of a call tree: it gets a deadline (the app's timeout), a
request id (from ``Idempotency-Key`` when the route honours it, so a repeat
is the same call), a trace parent (``traceparent`` header, if any) and the
caller's identity, from its bearer token (:mod:`cleave.gateway.auth`), which
every call made for it carries. Before the call, the caller (its token's
subject, or its address without a valid token) takes a request from its rate
limit (:mod:`cleave.gateway.limits`): 429 with ``Retry-After`` when it is spent.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route as StarletteRoute
from starlette.routing import request_response
from starlette.types import Receive, Scope, Send

from cleave.context import CallContext, Identity, _current, new_request_id
from cleave.errors import CallError, DeadlineExceeded, RemoteError, Unavailable
from cleave.gateway.auth import Authenticator, AuthFailure
from cleave.gateway.limits import RateLimiter
from cleave.gateway.openapi import openapi
from cleave.gateway.routes import Gateway, Route, idempotency_key_problem
from cleave.messages import to_json
from cleave.observability.tracing import SERVER, Span, id_attributes, tracer
from cleave.runtime.router import Router

__all__ = ["MAX_BODY", "build_asgi"]

# Initial values, not .bind(): bind() builds the logger now, before logs are configured.
log = structlog.get_logger("cleave.gateway", service="gateway")

MAX_BODY = 1 << 20
_JSON = "application/json"

Endpoint = Callable[[Request], Awaitable[Response]]


class _BadRequest(Exception):
    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message


def _error(
    status: int, kind: str, message: str, request_id: str, headers: dict[str, str] | None = None
) -> Response:
    body = to_json({"error": {"kind": kind, "message": message, "request_id": request_id}})
    if request_id:
        headers = {**(headers or {}), "x-request-id": request_id}
    return Response(body, status, headers=headers, media_type=_JSON)


def _request_id(request: Request, route: Route, identity: Identity) -> str:
    if route.idempotency_key:
        key = request.headers.get("idempotency-key")
        if key is not None:
            problem = idempotency_key_problem(key)
            if problem:
                raise _BadRequest(400, "InvalidArgument", problem)
            if identity.subject:
                # Each caller's keys are its own: another's key can neither clash nor replay.
                who = hashlib.blake2b(identity.subject.encode(), digest_size=6).hexdigest()
                return f"idem:{route.name}:{who}:{key}"
            return f"idem:{route.name}:{key}"
    return new_request_id()


def _number(literal: str) -> float | int:
    # JSON Schema, and so the OpenAPI document, counts 2.0 as an `integer`; msgspec does not.
    value = float(literal)
    return int(value) if value.is_integer() else value


_BODY = msgspec.json.Decoder(float_hook=_number)


async def _decode(request: Request, route: Route) -> Any:
    data: dict[str, Any] = {}
    if route.has_body:
        body = await _read_body(request)
        if not body.strip():
            raise _BadRequest(
                422,
                "InvalidArgument",
                f"the request body is empty; send a JSON object ({route.method.request.__name__})",
            )
        try:
            parsed = _BODY.decode(body)
        except msgspec.DecodeError as exc:
            raise _BadRequest(
                400, "InvalidJSON", f"the request body is not valid JSON: {exc}"
            ) from None
        if not isinstance(parsed, dict):
            raise _BadRequest(
                422,
                "InvalidArgument",
                f"the request body must be a JSON object, got {type(parsed).__name__}",
            )
        data = parsed
    for name in route.path_params:
        data[name] = _param(route, name, request.path_params[name], "path parameter")
    for name in route.query_params:
        value = request.query_params.get(name)
        if value is not None:
            data[name] = _param(route, name, value, "query parameter")
    try:
        return msgspec.convert(data, route.method.request)
    except msgspec.ValidationError as exc:
        text = str(exc)
        if not route.has_body and "missing required field" in text:
            text = text.replace("Object missing required field", "missing query parameter")
        raise _BadRequest(422, "InvalidArgument", text) from None


def _param(route: Route, name: str, value: str, where: str) -> Any:
    field = route.fields[name]
    try:
        return msgspec.convert(value, field.type, strict=False)
    except msgspec.ValidationError as exc:
        raise _BadRequest(422, "InvalidArgument", f"{where} `{name}`: {exc}") from None


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
        raise _BadRequest(413, "TooLarge", f"the request body is over {MAX_BODY} bytes")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise _BadRequest(413, "TooLarge", f"the request body is over {MAX_BODY} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class _Edge:
    """What every endpoint checks before the call: the caller's token and rate."""

    def __init__(self, auth: Authenticator, limiter: RateLimiter) -> None:
        self.auth = auth
        self.limiter = limiter

    async def admit(self, request: Request, route: Route) -> Identity | Response:
        """The caller's identity, or the response that refuses it (401, 403, 429, 503)."""
        address = request.client.host if request.client is not None else "unknown"
        try:
            identity = await self.auth.identify(request.headers.get("authorization"), route.auth)
        except AuthFailure as exc:
            # Refused requests count against the address: guessing tokens is rate limited.
            return self._limited(f"addr:{address}") or self._refused(exc)
        key = f"sub:{identity.subject}" if identity.subject else f"addr:{address}"
        return self._limited(key) or identity

    def _limited(self, key: str) -> Response | None:
        wait = self.limiter.wait(key)
        if not wait:
            return None
        return _error(
            429,
            "TooManyRequests",
            f"over the limit of {self.limiter.rate:g} requests per second (bursts of "
            f"{self.limiter.burst:g}) for this caller; retry after Retry-After seconds",
            "",
            {"retry-after": self.limiter.retry_after(wait)},
        )

    @staticmethod
    def _refused(exc: AuthFailure) -> Response:
        if exc.status == 503:
            return _error(503, Unavailable.kind, exc.message, "", {"retry-after": "5"})
        kind = "Unauthenticated" if exc.status == 401 else "PermissionDenied"
        return _error(exc.status, kind, exc.message, "", {"www-authenticate": exc.challenge})


def _endpoint(
    route: Route, router: Router, timeout: float, access_log: bool, edge: _Edge
) -> Endpoint:
    method = route.method
    # The gateway is a caller like any other: [gateway.calls.<service>] tunes this policy.
    policy = router.policy("gateway", method)

    async def endpoint(request: Request) -> Response:
        span = None
        traceparent = request.headers.get("traceparent", "")
        if tracer.enabled:
            span = tracer.start(route.name, SERVER, "gateway", traceparent)
            if span is not None:
                traceparent = span.traceparent
                span.attributes["http.method"] = route.http_method
                span.attributes["http.route"] = route.path
        started = time.perf_counter()
        response = await handle(request, span, traceparent)
        status = response.status_code
        # What went wrong, as the client was told (the error body is small JSON, no internals).
        error = f"HTTP {status}: {bytes(response.body)[:300].decode()}" if status >= 400 else ""
        if status >= 400 or access_log:
            (log.warning if status >= 500 else log.info)(
                "request",
                method=route.http_method,
                path=request.url.path,
                status=status,
                ms=round((time.perf_counter() - started) * 1000, 2),
                request_id=response.headers.get("x-request-id", ""),
                trace_id=span.trace_id if span is not None else "",
                error=error,
            )
        if span is not None:
            span.attributes["http.status_code"] = response.status_code
            tracer.finish(span, error)
            response.headers["traceparent"] = span.traceparent
        return response

    async def handle(request: Request, span: Span | None, traceparent: str) -> Response:
        request_id = ""
        try:
            admitted = await edge.admit(request, route)
            if isinstance(admitted, Response):
                return admitted
            request_id = _request_id(request, route, admitted)
            message = await _decode(request, route)
            if span is not None:
                span.attributes["request_id"] = request_id
                id_attributes(message, span.attributes)
            ctx = CallContext(
                time.time() + timeout, request_id, "gateway", traceparent, identity=admitted
            )
            token = _current.set(ctx)
            try:
                async with asyncio.timeout(timeout):
                    result = await router.call(method, message, "gateway", policy)
            finally:
                _current.reset(token)
            if span is not None:
                id_attributes(result, span.attributes)
            body = to_json(getattr(result, route.unwrap) if route.unwrap else result)
            return Response(
                body,
                route.status_for(result),
                media_type=_JSON,
                headers={"x-request-id": request_id},
            )
        except _BadRequest as exc:
            return _error(exc.status, exc.kind, exc.message, request_id)
        except TimeoutError:
            return _error(
                504,
                DeadlineExceeded.kind,
                f"{method.qualname} did not finish within {timeout:g}s; it may still complete",
                request_id,
            )
        except CallError as exc:
            return _call_error(exc, request_id)
        except Exception:
            log.exception("gateway error", route=route.name, request_id=request_id)
            return _error(500, "Internal", f"internal error (request id {request_id})", request_id)

    endpoint.__name__ = f"{method.contract.name}_{method.name}"
    return endpoint


def _call_error(exc: CallError, request_id: str) -> Response:
    headers = None
    if isinstance(exc, Unavailable):
        headers = {"retry-after": str(max(1, round(exc.retry_after or 1)))}
    if isinstance(exc, RemoteError):
        # The remote message may hold internals; the logs of the service have it.
        log.warning("remote error", error=str(exc), request_id=request_id)
        message = (
            f"{exc.origin or 'a service'} failed ({exc.remote_kind or 'error'}); "
            f"see its logs for request id {request_id}"
        )
        return _error(exc.http_status, exc.kind, message, request_id)
    return _error(exc.http_status, exc.kind, exc.message or exc.kind, request_id, headers)


class _Path:
    """Every method of one path: the endpoint of each, and a 405 naming them all for others.

    An ASGI app rather than a function, so that Starlette passes every method through.
    """

    def __init__(self, table: dict[str, Endpoint]) -> None:
        self.table = dict(table)
        if "GET" in self.table:
            self.table.setdefault("HEAD", self.table["GET"])  # the server sends no body to HEAD
        self.allow = ", ".join(sorted(self.table))
        self.app = request_response(self.dispatch)

    async def dispatch(self, request: Request) -> Response:
        endpoint = self.table.get(request.method)
        if endpoint is None:
            return _error(
                405,
                "MethodNotAllowed",
                f"{request.method} is not allowed on {request.url.path}; use {self.allow}",
                "",
                {"allow": self.allow},
            )
        return await endpoint(request)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


def build_asgi(
    gateway: Gateway,
    router: Router,
    *,
    timeout: float,
    app_name: str,
    auth: Authenticator,
    limiter: RateLimiter,
    access_log: bool = False,
) -> Starlette:
    """The gateway's Starlette app, calling contract methods through ``router``.

    ``auth`` verifies callers' tokens; ``limiter`` holds their rate limits.
    """
    document = to_json(openapi(gateway, title=app_name))
    edge = _Edge(auth, limiter)

    async def openapi_json(request: Request) -> Response:
        return Response(document, media_type=_JSON)

    async def healthz(request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type=_JSON)

    # One Starlette route per path, whatever its methods: a 405 must name all of them.
    by_path: dict[str, dict[str, Endpoint]] = {}
    for r in gateway.routes:
        by_path.setdefault(r.path, {})[r.http_method] = _endpoint(
            r, router, timeout, access_log, edge
        )
    by_path.setdefault("/openapi.json", {})["GET"] = openapi_json
    by_path.setdefault("/healthz", {})["GET"] = healthz
    routes = [StarletteRoute(path, _Path(table)) for path, table in by_path.items()]

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        kind = {404: "NotFound", 405: "MethodNotAllowed"}.get(exc.status_code, "HTTPError")
        message = {
            404: f"no route for {request.method} {request.url.path}; see /openapi.json",
            405: f"{request.method} is not allowed on {request.url.path}",
        }.get(exc.status_code, str(exc.detail))
        return _error(exc.status_code, kind, message, "", dict(exc.headers or {}))

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("unhandled gateway error", path=request.url.path)
        return _error(500, "Internal", "internal error", "")

    return Starlette(
        routes=routes,
        exception_handlers={HTTPException: http_error, Exception: server_error},
    )
