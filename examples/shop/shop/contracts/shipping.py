"""Shipping: shipments for confirmed orders."""

from __future__ import annotations

from typing import Annotated, Protocol

import msgspec

import cleave


class Shipment(cleave.Message):
    shipment_id: str
    order_id: str
    status: str
    created_at: float


class ListShipments(cleave.Message):
    order_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class ShipmentList(cleave.Message):
    shipments: tuple[Shipment, ...]


class ShipmentCreated(cleave.Event):
    shipment_id: str
    order_id: str
    account_id: str


@cleave.contract("shipping", version=1, events=[ShipmentCreated])
class Shipping(Protocol):
    """Creates one shipment per confirmed order, from the OrderConfirmed event."""

    @cleave.readonly
    async def list_shipments(self, req: ListShipments) -> ShipmentList:
        """The shipments of one order (none until it is confirmed)."""
        ...
