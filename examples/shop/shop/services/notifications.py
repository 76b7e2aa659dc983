"""The notifications service: tells customers about their orders (here: records it)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import sqlalchemy as sa

import cleave
from shop.access import is_admin, may_see
from shop.contracts.notifications import (
    ListNotifications,
    Notification,
    NotificationList,
    Notifications,
)
from shop.contracts.orders import GetOrder, OrderCancelled, OrderConfirmed, Orders
from shop.contracts.shipping import ShipmentCreated

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
metadata = sa.MetaData()
notifications = sa.Table(
    "notifications",
    metadata,
    sa.Column("notification_id", sa.String(64), primary_key=True),
    sa.Column("order_id", sa.String(64), nullable=False, index=True),
    sa.Column("account_id", sa.String(64), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    # One notification of each kind per order, even if an event arrives twice
    # under different ids (a replay from outside Cleave).
    sa.UniqueConstraint("order_id", "kind", name="one_notification_per_kind"),
)


# The statements of the event handlers, built once (see cleave.Prepared).
SENT = cleave.Prepared(
    sa.select(notifications.c.notification_id)
    .where(notifications.c.order_id == sa.bindparam("order_id"))
    .where(notifications.c.kind == sa.bindparam("kind"))
)
NEW_NOTIFICATION = cleave.Prepared(
    notifications.insert().values({c.name: sa.bindparam(c.name) for c in notifications.c})
)


class NotificationsService(cleave.Service, implements=Notifications):
    db = cleave.Database(metadata, migrations=MIGRATIONS / "notifications")
    # Only to ask whose an order is, for a customer asking about one not notified yet.
    orders = cleave.use(Orders)

    async def list_notifications(self, req: ListNotifications) -> NotificationList:
        async with self.db.read() as tx:
            rows = (
                await tx.execute(
                    sa.select(notifications)
                    .where(notifications.c.order_id == req.order_id)
                    .order_by(notifications.c.created_at)
                )
            ).all()
        if rows and not may_see(rows[0].account_id):
            raise cleave.NotFound(f"no order {req.order_id!r}")  # another's looks unknown
        if not rows and not is_admin():
            await self.orders.get_order(GetOrder(order_id=req.order_id))  # NotFound if not theirs
        return NotificationList(
            notifications=tuple(
                Notification(
                    notification_id=r.notification_id,
                    order_id=r.order_id,
                    account_id=r.account_id,
                    kind=r.kind,
                    text=r.text,
                    created_at=r.created_at,
                )
                for r in rows
            )
        )

    async def _record(self, order_id: str, account_id: str, kind: str, text: str) -> None:
        async with self.db.transaction() as tx:
            if await tx.fetch_one(SENT, {"order_id": order_id, "kind": kind}):
                return
            await tx.run(
                NEW_NOTIFICATION,
                {
                    "notification_id": f"ntf_{os.urandom(8).hex()}",
                    "order_id": order_id,
                    "account_id": account_id,
                    "kind": kind,
                    "text": text,
                    "created_at": time.time(),
                },
            )

    @cleave.subscribe(OrderConfirmed)
    async def on_order_confirmed(self, event: OrderConfirmed) -> None:
        await self._record(
            event.order_id,
            event.account_id,
            "order_confirmed",
            f"Your order {event.order_id} is confirmed: {event.total_cents / 100:.2f} charged.",
        )

    @cleave.subscribe(OrderCancelled)
    async def on_order_cancelled(self, event: OrderCancelled) -> None:
        await self._record(
            event.order_id,
            event.account_id,
            "order_cancelled",
            f"Your order {event.order_id} was cancelled: {event.reason}.",
        )

    @cleave.subscribe(ShipmentCreated)
    async def on_shipment_created(self, event: ShipmentCreated) -> None:
        await self._record(
            event.order_id,
            event.account_id,
            "shipment_created",
            f"Your order {event.order_id} is on its way ({event.shipment_id}).",
        )
