"""The app's public HTTP API, declared as routes onto contract methods.

::

    gateway = cleave.Gateway(title="Shop", version="1.0.0")
    gateway.get("/v1/products/{sku}", Catalog.get_product, auth="public")
    gateway.get("/v1/products", Catalog.list_products, unwrap="products", auth="public")
    gateway.get("/v1/accounts", Billing.list_accounts, auth=cleave.Scope("admin"))
    gateway.post(
        "/v1/orders",
        Orders.place_order,
        status=201,
        idempotency_key=True,
        links={"GetOrder": Orders.get_order},
    )

The request message is filled from the path parameters, the query string
(for fields not in the path) and, for POST/PUT/PATCH, the JSON body; it is
then validated against the message type, so a bad field is answered with
422 and a message naming it (``$.items[0].qty``). The response message is
sent as JSON, or one of its fields with ``unwrap=``.

``auth=`` says who may call a route: ``"public"`` (anyone), ``"user"``
(any caller with a valid token: the default, so a route is never public by
oversight) or ``cleave.Scope("admin")`` (a token granting that scope). See
:mod:`cleave.gateway.auth`. The route only lets callers in: the service
decides what each caller may see (``cleave.current().identity``).

``links=`` says where a response leads, as OpenAPI links (clients and
fuzzers follow them): each names a contract method that another route
serves. Its parameters are taken from the response's fields of the same
name (``order_id`` above), else the request's; name them yourself with
``(Orders.get_order, {"order_id": "$response.body#/id"})``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from cleave.contracts import ContractSpec, MethodSpec, method_of
from cleave.errors import DefinitionError
from cleave.gateway.access import Access, access_problem
from cleave.messages import Message

__all__ = ["IDEMPOTENCY_KEY_SCHEMA", "Gateway", "Route", "idempotency_key_problem"]

_PARAM = re.compile(r"{([a-zA-Z_][a-zA-Z0-9_]*)}")
_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})

#: What an ``Idempotency-Key`` may be: 1 to 255 printable ASCII characters (a space only
#: inside, since HTTP strips it at either end). The gateway enforces exactly this.
IDEMPOTENCY_KEY_SCHEMA: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "maxLength": 255,
    "pattern": "^[!-~]([ -~]*[!-~])?$",
}


def idempotency_key_problem(key: str) -> str:
    """What is wrong with ``key`` as an ``Idempotency-Key``, or "" if nothing."""
    advice = "send 1 to 255 printable ASCII characters, e.g. a UUID"
    if not key:
        return f"the Idempotency-Key header is empty; {advice}"
    if len(key) > 255:
        return f"the Idempotency-Key header is {len(key)} characters long; {advice}"
    for i, c in enumerate(key):
        if not " " <= c <= "~":
            return (
                f"the Idempotency-Key header holds {c!r} at position {i}, which is not "
                f"printable ASCII; {advice}"
            )
    if key[0] == " " or key[-1] == " ":
        return f"the Idempotency-Key header starts or ends with a space; {advice}"
    return ""


#: A fixed status code, or one computed from the response message.
Status = int | Callable[[Any], int]
#: Where a response leads: a contract method (parameters found by name), or one with
#: its parameters as OpenAPI runtime expressions (``{"order_id": "$response.body#/id"}``).
LinkTarget = Callable[..., Any] | tuple[Callable[..., Any], Mapping[str, str]]


class Route:
    """One HTTP route onto one contract method."""

    def __init__(
        self,
        http_method: str,
        path: str,
        method: MethodSpec,
        *,
        status: Status,
        unwrap: str | None,
        idempotency_key: bool,
        summary: str,
        statuses: tuple[int, ...] = (),
        links: Mapping[str, LinkTarget] | None = None,
        auth: Access = "user",
    ) -> None:
        problem = access_problem(auth)
        if problem:
            raise DefinitionError(f"route {http_method} {path}: {problem}")
        #: Who may call it: "public", "user" (any valid token) or a Scope.
        self.auth = auth
        self.http_method = http_method
        self.path = path
        self.method = method
        self.status = status
        if callable(status) and not statuses:
            raise DefinitionError(
                f"route {http_method} {path}: a computed status needs statuses=(...) listing the "
                "codes it can return, for the OpenAPI document"
            )
        self.statuses = (status,) if isinstance(status, int) else statuses
        self.unwrap = unwrap
        self.idempotency_key = idempotency_key
        self.summary = summary
        self.path_params = tuple(_PARAM.findall(path))
        self.has_body = http_method in _WITH_BODY
        fields = {f.name: f for f in msgspec.structs.fields(method.request)}
        self.fields = fields
        for p in self.path_params:
            if p not in fields:
                raise DefinitionError(
                    f"route {http_method} {path}: path parameter {{{p}}} is not a field of "
                    f"{method.request.__name__}"
                )
        self.query_params = (
            () if self.has_body else tuple(n for n in fields if n not in self.path_params)
        )
        if unwrap is not None and unwrap not in {
            f.name for f in msgspec.structs.fields(method.response)
        }:
            raise DefinitionError(
                f"route {http_method} {path}: unwrap={unwrap!r} is not a field of "
                f"{method.response.__name__}"
            )
        #: name -> (the method it leads to, the parameters given; the others are found by name)
        self.links: dict[str, tuple[MethodSpec, dict[str, str]]] = {}
        for name, target in (links or {}).items():
            call, parameters = target if isinstance(target, tuple) else (target, {})
            self.links[name] = (method_of(call), dict(parameters))

    @property
    def name(self) -> str:
        return f"{self.http_method} {self.path}"

    def status_for(self, response: Message) -> int:
        return self.status(response) if callable(self.status) else self.status

    def __repr__(self) -> str:
        return f"<route {self.name} -> {self.method.qualname}>"


class Gateway:
    """Public HTTP routes of an app, each mapped to a contract method."""

    def __init__(self, *, title: str = "", version: str = "1.0.0", description: str = "") -> None:
        self.title = title
        self.version = version
        self.description = description
        self.routes: list[Route] = []

    def route(
        self,
        http_method: str,
        path: str,
        call: Callable[..., Any],
        *,
        status: Status = 200,
        unwrap: str | None = None,
        idempotency_key: bool = False,
        summary: str = "",
        statuses: tuple[int, ...] = (),
        links: Mapping[str, LinkTarget] | None = None,
        auth: Access = "user",
    ) -> Route:
        """Map ``http_method path`` to the contract method ``call`` (e.g. ``Billing.charge``).

        ``auth``: who may call it, ``"public"``, ``"user"`` (default) or ``Scope(name)``.
        """
        http_method = http_method.upper()
        if not path.startswith("/"):
            raise DefinitionError(f"route path {path!r} must start with '/'")
        if any(r.http_method == http_method and r.path == path for r in self.routes):
            raise DefinitionError(f"route {http_method} {path} is declared twice")
        route = Route(
            http_method,
            path,
            method_of(call),
            status=status,
            unwrap=unwrap,
            idempotency_key=idempotency_key,
            summary=summary or (getattr(call, "__doc__", None) or "").strip().split("\n")[0],
            statuses=statuses,
            links=links,
            auth=auth,
        )
        self.routes.append(route)
        return route

    def get(self, path: str, call: Callable[..., Any], **options: Any) -> Route:
        return self.route("GET", path, call, **options)

    def post(self, path: str, call: Callable[..., Any], **options: Any) -> Route:
        return self.route("POST", path, call, **options)

    def put(self, path: str, call: Callable[..., Any], **options: Any) -> Route:
        return self.route("PUT", path, call, **options)

    def delete(self, path: str, call: Callable[..., Any], **options: Any) -> Route:
        return self.route("DELETE", path, call, **options)

    @property
    def contracts(self) -> list[ContractSpec]:
        """The contracts the gateway calls (each major apart), in route order, without repeats."""
        seen: dict[tuple[str, int], ContractSpec] = {}
        for r in self.routes:
            seen.setdefault((r.method.contract.name, r.method.contract.version), r.method.contract)
        return list(seen.values())
