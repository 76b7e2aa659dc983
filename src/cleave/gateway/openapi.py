"""OpenAPI 3.1 for a gateway, generated from the contract types.

The request and response messages are the schema: msgspec turns their types
and constraints (``Meta(ge=1)``, ``min_length``...) into JSON Schema, so the
document cannot drift from what the gateway validates.
"""

from __future__ import annotations

import copy
from typing import Any

import msgspec

from cleave.gateway.routes import Gateway, Route

__all__ = ["openapi"]

_REF = "#/components/schemas/{name}"

_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["kind", "message"],
            "properties": {
                "kind": {"type": "string", "examples": ["InvalidArgument"]},
                "message": {"type": "string"},
                "request_id": {"type": "string"},
            },
        }
    },
}

_ERRORS = {
    "400": "The request body is not valid JSON.",
    "404": "The thing named does not exist.",
    "409": "The request clashes with current state, or an idempotency key was reused.",
    "422": "A field is missing, has the wrong type, or breaks a constraint.",
    "503": "The service that would answer is unavailable; retry after Retry-After.",
    "504": "The request did not finish before its deadline.",
}


def openapi(gateway: Gateway, *, title: str) -> dict[str, Any]:
    """The OpenAPI document of ``gateway``."""
    types = {r.method.request for r in gateway.routes} | {r.method.response for r in gateway.routes}
    ordered = sorted(types, key=lambda t: t.__name__)
    _, components = msgspec.json.schema_components(ordered, ref_template=_REF)
    components["Error"] = _ERROR_SCHEMA
    paths: dict[str, dict[str, Any]] = {}
    for route in gateway.routes:
        paths.setdefault(route.path, {})[route.http_method.lower()] = _operation(route, components)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": gateway.title or title,
            "version": gateway.version,
            "description": gateway.description,
        },
        "paths": paths,
        "components": {"schemas": components},
    }


def _operation(route: Route, components: dict[str, Any]) -> dict[str, Any]:
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
                "description": "Repeat a request safely: the same key gives the same result.",
                "schema": {"type": "string", "maxLength": 255},
            }
        )
    op: dict[str, Any] = {
        "operationId": f"{route.method.contract.name}_{route.method.name}",
        "summary": route.summary or f"{route.method.qualname}",
        "tags": [route.method.contract.name],
        "parameters": params,
        "responses": _responses(route, components),
    }
    if route.has_body:
        body = copy.deepcopy(req_schema)
        for p in route.path_params:
            body.get("properties", {}).pop(p, None)
            if p in body.get("required", []):
                body["required"].remove(p)
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return op


def _responses(route: Route, components: dict[str, Any]) -> dict[str, Any]:
    response = route.method.response
    schema: dict[str, Any] = {"$ref": _REF.format(name=response.__name__)}
    if route.unwrap is not None:
        schema = components[response.__name__]["properties"][route.unwrap]
    out: dict[str, Any] = {
        str(s): {"description": "Success.", "content": {"application/json": {"schema": schema}}}
        for s in route.statuses
    }
    for code, text in _ERRORS.items():
        out[code] = {
            "description": text,
            "content": {"application/json": {"schema": {"$ref": _REF.format(name="Error")}}},
        }
    return out
