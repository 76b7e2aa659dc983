"""Orders: checkout and order status."""

from __future__ import annotations

from typing import Annotated, Literal, Protocol

import msgspec

import cleave
from shop.contracts.paging import MAX_PAGE, After, PageSize

OrderStatus = Literal["pending", "confirmed", "cancelled"]


class Line(cleave.Message):
    sku: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    qty: Annotated[int, msgspec.Meta(ge=1, le=1000)]


class PlaceOrder(cleave.Message):
    account_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    items: Annotated[tuple[Line, ...], msgspec.Meta(min_length=1, max_length=50)]


class GetOrder(cleave.Message):
    order_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class OrderView(cleave.Message):
    order_id: str
    account_id: str
    status: OrderStatus
    total_cents: int
    items: tuple[Line, ...]
    reason: str | None = None


class ListOrders(cleave.Message):
    account_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    #: At most this many orders.
    limit: PageSize = MAX_PAGE
    #: Orders placed after this one (the last of the previous page); "" for the first page.
    after: After = ""


class OrderList(cleave.Message):
    orders: tuple[OrderView, ...]


class OrderConfirmed(cleave.Event):
    order_id: str
    account_id: str
    total_cents: int
    items: tuple[Line, ...]


class OrderCancelled(cleave.Event):
    order_id: str
    account_id: str
    reason: str


@cleave.contract("orders", version=1, events=[OrderConfirmed, OrderCancelled])
class Orders(Protocol):
    """Checkout: reserve stock, charge, confirm; or cancel with a reason."""

    @cleave.idempotent(store=False)  # the order is keyed by the request id
    async def place_order(self, req: PlaceOrder) -> OrderView:
        """Check out; the same request id (Idempotency-Key) gives the same order."""
        ...

    @cleave.readonly
    async def get_order(self, req: GetOrder) -> OrderView:
        """One order; NotFound if unknown."""
        ...

    @cleave.readonly
    async def list_orders(self, req: ListOrders) -> OrderList:
        """The orders of one account, oldest first, a page (`limit`, `after`) at a time."""
        ...
