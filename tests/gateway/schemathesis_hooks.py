"""Schemathesis hooks for the shop's fuzz run (``schemathesis.toml`` beside this file loads them).

One check stands in for ``positive_data_acceptance`` on ``POST /v1/orders``,
where the built-in one is off: the shop checks an order against live data,
so a schema-valid order can still be refused on purpose (an unknown SKU or
account, a SKU on two lines: 422 with a message naming the field). No JSON
Schema can say "a SKU that exists", so those refusals are accepted, and only
those: any other refusal of a schema-valid order still fails the run.
"""

from __future__ import annotations

import re
from typing import Any

import schemathesis
from schemathesis.checks import positive_data_acceptance
from schemathesis.openapi.checks import RejectedPositiveData

ORDERS = "POST /v1/orders"

#: The shop's own refusals of schema-valid orders (``OrdersService._validate``).
BUSINESS_RULES = re.compile(
    r"^(unknown sku '.*' at `\$\.items\[\d+\]\.sku`"
    r"|unknown account '.*' at `\$\.account_id`"
    r"|sku '.*' appears twice .*)$",
    re.DOTALL,
)


@schemathesis.check
def orders_accept_valid_data(ctx: Any, response: Any, case: Any) -> bool | None:
    """``positive_data_acceptance`` for orders, allowing the shop's business-rule refusals."""
    if case.operation.label != ORDERS:
        return None  # the built-in check covers every other operation
    try:
        return positive_data_acceptance(ctx, response, case)  # type: ignore[no-any-return]
    except RejectedPositiveData:
        if response.status_code == 422 and BUSINESS_RULES.match(_message(response)):
            return None
        raise


def _message(response: Any) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return ""
