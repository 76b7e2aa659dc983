"""The shipping service: one shipment per confirmed order, created from the event."""

from __future__ import annotations

import os
import time
from pathlib import Path

import sqlalchemy as sa

import cleave
from shop.access import is_admin, may_see
from shop.contracts.orders import GetOrder, OrderConfirmed, Orders
from shop.contracts.shipping import (
    ListShipments,
    Shipment,
    ShipmentCreated,
    ShipmentList,
    Shipping,
)

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
metadata = sa.MetaData()
shipments = sa.Table(
    "shipments",
    metadata,
    sa.Column("shipment_id", sa.String(64), primary_key=True),
    sa.Column("order_id", sa.String(64), nullable=False, unique=True),
    sa.Column("account_id", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)


# The statements of the event handler, built once (see cleave.Prepared).
SHIPMENT_OF_ORDER = cleave.Prepared(
    sa.select(shipments.c.shipment_id).where(shipments.c.order_id == sa.bindparam("order_id"))
)
NEW_SHIPMENT = cleave.Prepared(
    shipments.insert().values({c.name: sa.bindparam(c.name) for c in shipments.c})
)


class ShippingService(cleave.Service, implements=Shipping):
    db = cleave.Database(metadata, migrations=MIGRATIONS / "shipping")
    # Only to ask whose an order is, for a customer asking about one not shipped yet.
    orders = cleave.use(Orders)

    async def list_shipments(self, req: ListShipments) -> ShipmentList:
        async with self.db.read() as tx:
            rows = (
                await tx.execute(
                    sa.select(shipments)
                    .where(shipments.c.order_id == req.order_id)
                    .order_by(shipments.c.created_at)
                )
            ).all()
        if rows and not may_see(rows[0].account_id):
            raise cleave.NotFound(f"no order {req.order_id!r}")  # another's looks unknown
        if not rows and not is_admin():
            # Nothing shipped yet: the orders service (which the caller's identity reaches
            # too) says whether the order is the caller's; NotFound if not.
            await self.orders.get_order(GetOrder(order_id=req.order_id))
        return ShipmentList(
            shipments=tuple(
                Shipment(
                    shipment_id=r.shipment_id,
                    order_id=r.order_id,
                    status=r.status,
                    created_at=r.created_at,
                )
                for r in rows
            )
        )

    @cleave.subscribe(OrderConfirmed)
    async def on_order_confirmed(self, event: OrderConfirmed) -> None:
        async with self.db.transaction() as tx:
            if await tx.fetch_one(SHIPMENT_OF_ORDER, {"order_id": event.order_id}):
                return
            shipment_id = f"shp_{os.urandom(8).hex()}"
            await tx.run(
                NEW_SHIPMENT,
                {
                    "shipment_id": shipment_id,
                    "order_id": event.order_id,
                    "account_id": event.account_id,
                    "status": "preparing",
                    "created_at": time.time(),
                },
            )
            tx.publish(
                ShipmentCreated(
                    shipment_id=shipment_id, order_id=event.order_id, account_id=event.account_id
                )
            )
