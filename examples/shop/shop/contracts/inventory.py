"""Inventory: stock levels and reservations."""

from __future__ import annotations

from typing import Literal, Protocol

import cleave
from shop.contracts.catalog import Sku
from shop.contracts.orders import Line


class StockLevel(cleave.Message):
    sku: str
    available: int
    reserved: int


class GetStock(cleave.Message):
    sku: Sku


class Reserve(cleave.Message):
    order_id: str
    lines: tuple[Line, ...]


class Reservation(cleave.Message):
    order_id: str
    status: Literal["reserved", "rejected"]
    reason: str | None = None


class Release(cleave.Message):
    order_id: str


class Released(cleave.Message):
    order_id: str
    #: False when nothing was held (never reserved, or released or committed already).
    released: bool


@cleave.contract("inventory", version=1)
class Inventory(Protocol):
    """Stock per SKU: `available` to sell and `reserved` for orders in checkout."""

    @cleave.readonly
    async def get_stock(self, req: GetStock) -> StockLevel:
        """Stock of one SKU; NotFound if the SKU is unknown."""
        ...

    @cleave.idempotent
    async def reserve(self, req: Reserve) -> Reservation:
        """Hold every line of an order, or none of them."""
        ...

    @cleave.idempotent
    async def release(self, req: Release) -> Released:
        """Give an order's held stock back; a later reserve for that order is rejected."""
        ...
