"""OpenAPI 3.1 for a gateway, generated from the contract types.

The request and response messages are the schema: msgspec turns their types
and constraints (``Meta(ge=1)``, ``min_length``...) into JSON Schema, so the
document cannot drift from what the gateway validates. Each operation lists
the error statuses the gateway can answer it with, every one with the error
body's schema (``{"error": {"kind", "message", "request_id"}}``), the
headers it reads and sets, its links (``Gateway.route(links=...)``) and who
may call it: the ``bearer`` security scheme (a JWT) is required by every
route but public ones, where it is optional; a route that needs a scope
names it (OpenAPI 3.1 allows role names for an http scheme).
"""

from __future__ import annotations

import copy
from typing import Any

import msgspec

from cleave.contracts import MethodSpec
from cleave.errors import DefinitionError
from cleave.gateway.access import Scope
from cleave.gateway.routes import IDEMPOTENCY_KEY_SCHEMA, Gateway, Route

__all__ = ["openapi"]

_REF = "#/components/schemas/{name}"

_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "additionalProperties": False,
    "properties": {
        "error": {
            "type": "object",
            "required": ["kind", "message", "request_id"],
            "additionalProperties": False,
            "properties": {
                "kind": {
                    "type": "string",
                    "description": "What went wrong, for code to branch on.",
                    "examples": ["InvalidArgument", "NotFound", "Unavailable"],
                },
                "message": {
                    "type": "string",
                    "minLength": 1,
                    "description": "What went wrong and what to do, for people.",
                },
                "request_id": {
                    "type": "string",
                    "description": "The request's id (empty if it had none yet); logs carry it.",
                },
            },
        }
    },
}

_REQUEST_ID: dict[str, Any] = {
    "description": "The request's id: the call tree and its logs carry it.",
    "schema": {"type": "string"},
}
_CHALLENGE: dict[str, Any] = {
    "description": "How to authenticate, and what was wrong (RFC 6750).",
    "schema": {"type": "string"},
}
_RETRY_AFTER: dict[str, Any] = {
    "description": "Seconds to wait before trying again.",
    "required": True,
    "schema": {"type": "integer", "minimum": 1},
}


def openapi(gateway: Gateway, *, title: str) -> dict[str, Any]:
    """The OpenAPI document of ``gateway``."""
    types = {r.method.request for r in gateway.routes} | {r.method.response for r in gateway.routes}
    ordered = sorted(types, key=lambda t: t.__name__)
    _, components = msgspec.json.schema_components(ordered, ref_template=_REF)
    components["Error"] = _ERROR_SCHEMA
    paths: dict[str, dict[str, Any]] = {}
    for route in gateway.routes:
        operation = _operation(route, components, gateway)
        paths.setdefault(route.path, {})[route.http_method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": gateway.title or title,
            "version": gateway.version,
            "description": gateway.description,
        },
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": {"bearer": _BEARER}},
    }


_BEARER: dict[str, Any] = {
    "type": "http",
    "scheme": "bearer",
    "bearerFormat": "JWT",
    "description": (
        "A JWT from the app's issuer (`[auth]` in cleave.toml); locally, from "
        "`cleave token <app> --sub <account id>`."
    ),
}


def _security(route: Route) -> list[dict[str, list[str]]]:
    if route.auth == "public":
        return [{}, {"bearer": []}]  # a token is optional
    return [{"bearer": [route.auth.name] if isinstance(route.auth, Scope) else []}]


def operation_id(method: MethodSpec) -> str:
    # A later major's method may be routed beside the first's: each keeps its own id.
    major = f"_v{method.contract.version}" if method.contract.version > 1 else ""
    return f"{method.contract.name}_{method.name}{major}"


def _operation(route: Route, components: dict[str, Any], gateway: Gateway) -> dict[str, Any]:
    request = route.method.request
    req_schema = components[request.__name__]
    props: dict[str, Any] = req_schema.get("properties", {})
    required = set(req_schema.get("required", ()))
    params = [
        {"name": p, "in": "path", "required": True, "schema": props.get(p, {"type": "string"})}
        for p in route.path_params
    ]
    params += [
        {"name": q, "in": "query", "required": q in required, "schema": props.get(q, {})}
        for q in route.query_params
    ]
    if route.idempotency_key:
        params.append(
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "description": (
                    "Repeat a request safely: the same key gives the same result. 1 to 255 "
                    "printable ASCII characters, not starting or ending with a space "
                    "(a UUID works)."
                ),
                "schema": IDEMPOTENCY_KEY_SCHEMA,
            }
        )
    op: dict[str, Any] = {
        "operationId": operation_id(route.method),
        "summary": route.summary or f"{route.method.qualname}",
        "tags": [route.method.contract.name],
        "parameters": params,
        "security": _security(route),
        "responses": _responses(route, components, gateway),
    }
    if route.has_body:
        body = copy.deepcopy(req_schema)
        for p in route.path_params:
            body.get("properties", {}).pop(p, None)
            if p in body.get("required", []):
                body["required"].remove(p)
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return op


def _responses(route: Route, components: dict[str, Any], gateway: Gateway) -> dict[str, Any]:
    response = route.method.response
    schema: dict[str, Any] = {"$ref": _REF.format(name=response.__name__)}
    if route.unwrap is not None:
        schema = components[response.__name__]["properties"][route.unwrap]
    links = _links(route, components, gateway)
    out: dict[str, Any] = {}
    for status in route.statuses:
        out[str(status)] = {
            "description": "Success.",
            "headers": {"X-Request-Id": _REQUEST_ID},
            "content": {"application/json": {"schema": schema}},
        }
        if links:
            out[str(status)]["links"] = links
    for code, text in sorted(_errors(route).items()):
        headers = {"X-Request-Id": _REQUEST_ID}
        if code in ("429", "503"):
            headers["Retry-After"] = _RETRY_AFTER
        if code in ("401", "403"):
            headers["WWW-Authenticate"] = _CHALLENGE
        out[code] = {
            "description": text,
            "headers": headers,
            "content": {"application/json": {"schema": {"$ref": _REF.format(name="Error")}}},
        }
    return out


def _errors(route: Route) -> dict[str, str]:
    """The error statuses the gateway can answer ``route`` with, and why."""
    errors: dict[str, list[str]] = {}

    def add(status: int, text: str) -> None:
        errors.setdefault(str(status), []).append(text)

    if route.has_body:
        add(400, "The request body is not valid JSON (InvalidJSON).")
    if route.idempotency_key:
        add(400, "The Idempotency-Key header breaks its format (InvalidArgument).")
    if route.auth == "public":
        add(401, "A bearer token was sent, and it is not valid (Unauthenticated).")
    else:
        add(401, "No bearer token, or one that is not valid (Unauthenticated).")
        if isinstance(route.auth, Scope):
            add(403, f"The token does not grant the {route.auth.name!r} scope (PermissionDenied).")
        add(403, "The caller may not do this (PermissionDenied).")
    add(404, "The thing named does not exist (NotFound).")
    add(409, "The request clashes with current state (Conflict).")
    if route.idempotency_key:
        add(409, "The Idempotency-Key was already used for a different request (Conflict).")
    if route.has_body:
        add(413, "The request body is over 1 MiB (TooLarge).")
    add(
        422,
        "A field is missing, has the wrong type, breaks a constraint or names something "
        "unknown (InvalidArgument).",
    )
    for kind, error in sorted(route.method.contract.errors.items()):
        doc = (error.__doc__ or "").strip().split("\n")[0]
        add(error.http_status, f"{doc} ({kind})." if doc else f"{kind}.")
    add(429, "The caller sent too many requests; retry after Retry-After (TooManyRequests).")
    add(502, "A service failed; its logs hold the details under the request id (RemoteError).")
    add(503, "No service could take the request now; retry after Retry-After (Unavailable).")
    add(
        504,
        "The request did not finish before its deadline; it may still complete (DeadlineExceeded).",
    )
    return {status: " ".join(texts) for status, texts in errors.items()}


def _links(route: Route, components: dict[str, Any], gateway: Gateway) -> dict[str, Any]:
    """``route``'s links as OpenAPI link objects, their parameters found by name if not given."""
    out: dict[str, Any] = {}
    for name, (target, given) in route.links.items():
        to = _route_serving(gateway, target)
        if to is None:
            raise DefinitionError(
                f"route {route.name}: link {name!r} leads to {target.qualname}, which no route "
                "of the gateway serves; declare a route for it, or drop the link"
            )
        schema = components[to.method.request.__name__]
        required = set(schema.get("required", ()))
        unknown = set(given) - {*to.path_params, *to.query_params}
        if unknown:
            raise DefinitionError(
                f"route {route.name}: link {name!r} sets {sorted(unknown)}, which are not "
                f"parameters of {to.name} (it takes {[*to.path_params, *to.query_params]})"
            )
        parameters: dict[str, str] = {}
        for p in (*to.path_params, *to.query_params):
            expression = given.get(p) or _expression_for(route, p, components)
            if expression:
                parameters[p] = expression
            elif p in to.path_params or p in required:
                raise DefinitionError(
                    f"route {route.name}: link {name!r} to {to.name} needs `{p}`, which is not "
                    f"a field of {route.method.response.__name__} nor of "
                    f"{route.method.request.__name__}; give it, e.g. "
                    f'({target.qualname}, {{"{p}": "$response.body#/id"}})'
                )
        out[name] = {
            "operationId": operation_id(to.method),
            "parameters": parameters,
            "description": f"{to.name}: {to.summary}" if to.summary else to.name,
        }
    return out


def _route_serving(gateway: Gateway, method: MethodSpec) -> Route | None:
    """The route that serves ``method`` (a GET one if there are several)."""
    routes = [r for r in gateway.routes if r.method is method]
    return next((r for r in routes if r.http_method == "GET"), routes[0] if routes else None)


def _expression_for(route: Route, name: str, components: dict[str, Any]) -> str:
    """Where a value named ``name`` is in ``route``'s response, else its request ("" if nowhere)."""
    if route.unwrap is None and name in components[route.method.response.__name__].get(
        "properties", {}
    ):
        return f"$response.body#/{name}"
    if name in route.path_params:
        return f"$request.path.{name}"
    if name in route.query_params:
        return f"$request.query.{name}"
    if route.has_body and name in route.fields:
        return f"$request.body#/{name}"
    return ""
