"""The inventory service: stock per SKU and per-order reservations.

A reservation moves quantity from ``available`` to ``reserved``; confirming
the order (the OrderConfirmed event) removes it from ``reserved`` for good;
releasing it (a cancelled order) returns it to ``available``. Each order's
reservation has one state, so a late or repeated reserve, release or commit
cannot move stock twice.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import sqlalchemy as sa
import structlog

import cleave
from shop.contracts.inventory import (
    GetStock,
    Inventory,
    Release,
    Released,
    Reservation,
    Reserve,
    StockLevel,
)
from shop.contracts.orders import OrderCancelled, OrderConfirmed
from shop.seed import PRODUCTS

log = structlog.get_logger("shop.inventory")

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
metadata = sa.MetaData()
stock = sa.Table(
    "stock",
    metadata,
    sa.Column("sku", sa.String(64), primary_key=True),
    sa.Column("available", sa.Integer, nullable=False),
    sa.Column("reserved", sa.Integer, nullable=False),
    sa.CheckConstraint("available >= 0 AND reserved >= 0", name="stock_not_negative"),
)
reservations = sa.Table(
    "reservations",
    metadata,
    sa.Column("order_id", sa.String(64), primary_key=True),
    # held -> committed | released; rejected; released also as a tombstone
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("updated_at", sa.Float, nullable=False),
)
reserved_lines = sa.Table(
    "reserved_lines",
    metadata,
    sa.Column("order_id", sa.String(64), primary_key=True),
    sa.Column("sku", sa.String(64), primary_key=True),
    sa.Column("qty", sa.Integer, nullable=False),
)


# The checkout's statements, built once (see cleave.Prepared); the rest use tx.execute.
RESERVATION = cleave.Prepared(
    sa.select(reservations.c.state, reservations.c.reason).where(
        reservations.c.order_id == sa.bindparam("order_id")
    )
)
NEW_RESERVATION = cleave.Prepared(
    reservations.insert().values({c.name: sa.bindparam(c.name) for c in reservations.c})
)
SET_RESERVATION = cleave.Prepared(
    reservations.update()
    .where(reservations.c.order_id == sa.bindparam("order_id"))
    .values(
        state=sa.bindparam("state"),
        reason=sa.bindparam("reason"),
        updated_at=sa.bindparam("updated_at"),
    )
)
LOCK_STOCK = cleave.Prepared(
    sa.select(stock.c.available).where(stock.c.sku == sa.bindparam("sku")).with_for_update()
)
MOVE_STOCK = cleave.Prepared(
    stock.update()
    .where(stock.c.sku == sa.bindparam("sku"))
    .values(
        available=stock.c.available + sa.bindparam("available", type_=sa.Integer),
        reserved=stock.c.reserved + sa.bindparam("reserved", type_=sa.Integer),
    )
)
RESERVED_LINES = cleave.Prepared(
    sa.select(reserved_lines.c.sku, reserved_lines.c.qty).where(
        reserved_lines.c.order_id == sa.bindparam("order_id")
    )
)
RESERVE_LINE = cleave.Prepared(
    reserved_lines.insert().values({c.name: sa.bindparam(c.name) for c in reserved_lines.c})
)


class InventoryService(cleave.Service, implements=Inventory):
    db = cleave.Database(metadata, migrations=MIGRATIONS / "inventory")

    async def on_start(self) -> None:
        async with self.db.transaction() as tx:
            if await tx.scalar(sa.select(sa.func.count()).select_from(stock)):
                return
            await tx.execute(
                stock.insert(),
                [{"sku": p.sku, "available": p.stock, "reserved": 0} for p in PRODUCTS],
            )

    async def get_stock(self, req: GetStock) -> StockLevel:
        async with self.db.read() as tx:
            row = (await tx.execute(sa.select(stock).where(stock.c.sku == req.sku))).first()
        if row is None:
            raise cleave.NotFound(f"no stock record for sku {req.sku!r}")
        return StockLevel(sku=row.sku, available=row.available, reserved=row.reserved)

    async def reserve(self, req: Reserve) -> Reservation:
        wanted = Counter[str]()
        for line in req.lines:
            wanted[line.sku] += line.qty
        async with self.db.transaction() as tx:
            state, reason = await self._state(tx, req.order_id)
            if state in ("held", "committed"):
                return Reservation(order_id=req.order_id, status="reserved")
            if state == "released":
                return self._rejected(req.order_id, "the order was already released")
            if state == "rejected":
                return self._rejected(req.order_id, reason or "rejected")
            problem = None
            for sku, qty in sorted(wanted.items()):  # one order of locks: no deadlocks
                row = await tx.fetch_one(LOCK_STOCK, {"sku": sku})
                if row is None:
                    problem = f"unknown sku {sku!r}"
                elif row.available < qty:
                    problem = f"out of stock: {sku} has {row.available} available, {qty} asked"
                if problem:
                    break
            if problem is not None:
                await self._set_state(tx, req.order_id, "rejected", problem, new=True)
                return self._rejected(req.order_id, problem)
            for sku, qty in wanted.items():
                await tx.run(MOVE_STOCK, {"sku": sku, "available": -qty, "reserved": qty})
            await tx.run_many(
                RESERVE_LINE,
                [{"order_id": req.order_id, "sku": s, "qty": q} for s, q in wanted.items()],
            )
            await self._set_state(tx, req.order_id, "held", None, new=True)
        return Reservation(order_id=req.order_id, status="reserved")

    async def release(self, req: Release) -> Released:
        async with self.db.transaction() as tx:
            state, _ = await self._state(tx, req.order_id)
            if state is None:
                # Released before it was reserved (a reserve still in flight): a tombstone
                # makes that reserve fail when it arrives.
                await self._set_state(tx, req.order_id, "released", "released early", new=True)
                return Released(order_id=req.order_id, released=False)
            if state != "held":
                return Released(order_id=req.order_id, released=False)
            await self._move(tx, req.order_id, available=+1, reserved=-1)
            await self._set_state(tx, req.order_id, "released", None)
        return Released(order_id=req.order_id, released=True)

    @cleave.subscribe(OrderConfirmed)
    async def on_order_confirmed(self, event: OrderConfirmed) -> None:
        async with self.db.transaction() as tx:
            state, _ = await self._state(tx, event.order_id)
            if state != "held":
                log.warning(
                    "confirmed order has no held reservation", order_id=event.order_id, state=state
                )
                return
            await self._move(tx, event.order_id, available=0, reserved=-1)
            await self._set_state(tx, event.order_id, "committed", None)

    @cleave.subscribe(OrderCancelled)
    async def on_order_cancelled(self, event: OrderCancelled) -> None:
        # The checkout releases on cancel already; this covers a release that was lost.
        await self.release(Release(order_id=event.order_id))

    # -- helpers -----------------------------------------------------------------------------

    @staticmethod
    def _rejected(order_id: str, reason: str) -> Reservation:
        return Reservation(order_id=order_id, status="rejected", reason=reason)

    @staticmethod
    async def _state(tx: cleave.Transaction, order_id: str) -> tuple[str | None, str | None]:
        row = await tx.fetch_one(RESERVATION, {"order_id": order_id})
        return (row.state, row.reason) if row is not None else (None, None)

    @staticmethod
    async def _set_state(
        tx: cleave.Transaction, order_id: str, state: str, reason: str | None, new: bool = False
    ) -> None:
        values = {"order_id": order_id, "state": state, "reason": reason, "updated_at": time.time()}
        await tx.run(NEW_RESERVATION if new else SET_RESERVATION, values)

    @staticmethod
    async def _move(
        tx: cleave.Transaction, order_id: str, *, available: int, reserved: int
    ) -> None:
        for line in await tx.fetch(RESERVED_LINES, {"order_id": order_id}):
            await tx.run(
                MOVE_STOCK,
                {
                    "sku": line.sku,
                    "available": available * line.qty,
                    "reserved": reserved * line.qty,
                },
            )
