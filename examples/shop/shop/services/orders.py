"""The orders service: checkout, as a saga, and order status.

Checkout validates the order against the catalog and billing, then records
the order as ``pending`` together with its checkout saga, in one
transaction. The saga reserves stock, charges the account and confirms; a
"no" from inventory or billing, or a step still failing when the saga's time
is up, compensates (refund, release) and cancels the order with a reason.
The saga's record lives in this service's database, so a crash anywhere
resumes it: no order stays pending for ever.

The request id of the call (the gateway's Idempotency-Key) identifies the
order, so a repeated request returns the same order.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from pathlib import Path
from typing import Any

import msgspec
import sqlalchemy as sa
import structlog

import cleave
from cleave.context import new_request_id
from shop.access import may_see
from shop.contracts.billing import BillingV2, ChargeV2, GetAccount, Refund
from shop.contracts.catalog import Catalog, GetPrices
from shop.contracts.inventory import Inventory, Release, Reserve
from shop.contracts.orders import (
    GetOrder,
    Line,
    ListOrders,
    OrderCancelled,
    OrderConfirmed,
    OrderList,
    Orders,
    OrderView,
    PlaceOrder,
)

log = structlog.get_logger("shop.orders")

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
#: The currency of the shop's prices and orders.
CURRENCY = "EUR"
metadata = sa.MetaData()
orders = sa.Table(
    "orders",
    metadata,
    sa.Column("order_id", sa.String(64), primary_key=True),
    sa.Column("request_key", sa.String(255), nullable=False, unique=True),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("account_id", sa.String(64), nullable=False, index=True),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("total_cents", sa.BigInteger, nullable=False),
    sa.Column("items", sa.LargeBinary, nullable=False),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

_lines = msgspec.json.Decoder(tuple[Line, ...])

# The checkout's statements, built once (see cleave.Prepared); the rest use tx.execute.
_VIEW = (
    orders.c.order_id,
    orders.c.account_id,
    orders.c.status,
    orders.c.total_cents,
    orders.c["items"],  # not .items: that is the column collection's method
    orders.c.reason,
    orders.c.fingerprint,
)
ORDER_BY_ID = cleave.Prepared(
    sa.select(*_VIEW).where(orders.c.order_id == sa.bindparam("order_id"))
)
ORDER_BY_KEY = cleave.Prepared(
    sa.select(*_VIEW).where(orders.c.request_key == sa.bindparam("request_key"))
)
NEW_ORDER = cleave.Prepared(
    orders.insert().values({c.name: sa.bindparam(c.name) for c in orders.c})
)
FINISH_ORDER = cleave.Prepared(
    orders.update()
    .where(orders.c.order_id == sa.bindparam("order_id"))
    .where(orders.c.status == "pending")
    .values(
        status=sa.bindparam("status"),
        reason=sa.bindparam("reason"),
        updated_at=sa.bindparam("updated_at"),
    )
)


class CheckoutState(cleave.Message):
    order_id: str
    account_id: str
    items: tuple[Line, ...]
    total_cents: int


def _view(row: Any) -> OrderView:
    return OrderView(
        order_id=row.order_id,
        account_id=row.account_id,
        status=row.status,
        total_cents=row.total_cents,
        items=_lines.decode(row.items),
        reason=row.reason,
    )


class OrdersService(cleave.Service, implements=Orders):
    db = cleave.Database(metadata, migrations=MIGRATIONS / "orders")
    catalog = cleave.use(Catalog)
    inventory = cleave.use(Inventory)
    billing = cleave.use(BillingV2)

    checkout = cleave.Saga(CheckoutState, timeout=20.0, step_timeout=5.0)

    # -- the contract ------------------------------------------------------------------------

    async def get_order(self, req: GetOrder) -> OrderView:
        row = await self._find(ORDER_BY_ID, order_id=req.order_id)
        if row is None or not may_see(row.account_id):  # another's order looks unknown
            raise cleave.NotFound(f"no order {req.order_id!r}")
        return _view(row)

    async def list_orders(self, req: ListOrders) -> OrderList:
        if not may_see(req.account_id):
            raise cleave.NotFound(f"no account {req.account_id!r}")
        query = sa.select(orders).where(orders.c.account_id == req.account_id)
        async with self.db.read() as tx:
            if req.after:
                # Oldest first: the page starts after the cursor order, ties broken by id.
                at = await tx.scalar(
                    sa.select(orders.c.created_at)
                    .where(orders.c.order_id == req.after)
                    .where(orders.c.account_id == req.account_id)
                )
                if at is None:
                    return OrderList(orders=())  # no such order of the account: nothing after it
                query = query.where(
                    (orders.c.created_at > at)
                    | ((orders.c.created_at == at) & (orders.c.order_id > req.after))
                )
            rows = (
                await tx.execute(
                    query.order_by(orders.c.created_at, orders.c.order_id).limit(req.limit)
                )
            ).all()
        return OrderList(orders=tuple(_view(r) for r in rows))

    async def place_order(self, req: PlaceOrder) -> OrderView:
        if not may_see(req.account_id):
            # Checked before the idempotency lookup: another's key and order stay unseen.
            raise cleave.PermissionDenied(
                f"this token may order only on its own account, not {req.account_id!r}"
            )
        ctx = cleave.current()
        key = ctx.request_id if ctx is not None else new_request_id()
        fingerprint = hashlib.blake2b(msgspec.msgpack.encode(req), digest_size=16).hexdigest()
        existing = await self._find(ORDER_BY_KEY, request_key=key)
        if existing is not None:
            return self._same_request(existing, fingerprint)
        total = await self._validate(req)
        order_id = f"ord_{os.urandom(8).hex()}"
        now = time.time()
        try:
            async with self.db.transaction() as tx:
                await tx.run(
                    NEW_ORDER,
                    {
                        "order_id": order_id,
                        "request_key": key,
                        "fingerprint": fingerprint,
                        "account_id": req.account_id,
                        "status": "pending",
                        "total_cents": total,
                        "items": msgspec.json.encode(req.items),
                        "reason": None,
                        "created_at": now,
                        "updated_at": now,
                    },
                )
                await self.checkout.create(
                    order_id,
                    CheckoutState(
                        order_id=order_id,
                        account_id=req.account_id,
                        items=req.items,
                        total_cents=total,
                    ),
                )
        except sa.exc.IntegrityError:
            # The same request arrived twice at once; the other one created the order.
            existing = await self._find(ORDER_BY_KEY, request_key=key)
            if existing is None:
                raise
            return self._same_request(existing, fingerprint)
        await self.checkout.run(order_id)  # until done, or until our caller's deadline
        return await self.get_order(GetOrder(order_id=order_id))

    # -- the checkout saga -------------------------------------------------------------------

    @checkout.step
    async def reserve(self, s: CheckoutState) -> CheckoutState:
        reservation = await self.inventory.reserve(Reserve(order_id=s.order_id, lines=s.items))
        if reservation.status != "reserved":
            raise cleave.Abort(reservation.reason or "stock not available")
        return s

    @checkout.compensation(reserve)
    async def release(self, s: CheckoutState) -> None:
        await self.inventory.release(Release(order_id=s.order_id))

    @checkout.step
    async def charge(self, s: CheckoutState) -> CheckoutState:
        receipt = await self.billing.charge(
            ChargeV2(
                order_id=s.order_id,
                account_id=s.account_id,
                amount_cents=s.total_cents,
                currency=CURRENCY,
            )
        )
        if receipt.status != "captured":
            raise cleave.Abort(f"payment declined: {receipt.reason}")
        return s

    @checkout.compensation(charge)
    async def refund(self, s: CheckoutState) -> None:
        await self.billing.refund(Refund(order_id=s.order_id))

    @checkout.step(local=True)
    async def confirm(self, s: CheckoutState) -> CheckoutState:
        if await self._finish(s.order_id, "confirmed", None):
            async with self.db.transaction() as tx:
                tx.publish(
                    OrderConfirmed(
                        order_id=s.order_id,
                        account_id=s.account_id,
                        total_cents=s.total_cents,
                        items=s.items,
                    )
                )
        return s

    @checkout.on_failure
    async def cancel(self, s: CheckoutState, reason: str) -> None:
        if await self._finish(s.order_id, "cancelled", reason):
            async with self.db.transaction() as tx:
                tx.publish(
                    OrderCancelled(order_id=s.order_id, account_id=s.account_id, reason=reason)
                )

    # -- helpers -----------------------------------------------------------------------------

    async def _finish(self, order_id: str, status: str, reason: str | None) -> bool:
        """Move a pending order to its final status; False if it was not pending."""
        async with self.db.transaction() as tx:
            updated = await tx.run(
                FINISH_ORDER,
                {
                    "order_id": order_id,
                    "status": status,
                    "reason": reason,
                    "updated_at": time.time(),
                },
            )
        return updated == 1

    async def _validate(self, req: PlaceOrder) -> int:
        """Check SKUs and account; return the order's total in cents."""
        seen: dict[str, int] = {}
        for i, line in enumerate(req.items):
            if line.sku in seen:
                raise cleave.InvalidArgument(
                    f"sku {line.sku!r} appears twice (at `$.items[{seen[line.sku]}]` and "
                    f"`$.items[{i}]`); put the whole quantity on one line"
                )
            seen[line.sku] = i
        prices, account = await asyncio.gather(
            self.catalog.get_prices(GetPrices(skus=tuple(seen))),
            self.billing.get_account(GetAccount(account_id=req.account_id)),
            return_exceptions=True,
        )
        if isinstance(account, cleave.NotFound):
            raise cleave.InvalidArgument(f"unknown account {req.account_id!r} at `$.account_id`")
        for result in (prices, account):
            if isinstance(result, BaseException):
                raise result
        assert not isinstance(prices, BaseException)
        if prices.missing:
            sku = prices.missing[0]
            raise cleave.InvalidArgument(f"unknown sku {sku!r} at `$.items[{seen[sku]}].sku`")
        price = {p.sku: p.price_cents for p in prices.prices}
        return sum(price[line.sku] * line.qty for line in req.items)

    async def _find(self, query: cleave.Prepared, **params: str) -> Any | None:
        async with self.db.read() as tx:
            return await tx.fetch_one(query, params)

    @staticmethod
    def _same_request(row: Any, fingerprint: str) -> OrderView:
        if row.fingerprint != fingerprint:
            raise cleave.Conflict(
                "this Idempotency-Key was already used for a different order; "
                "use a new key for a new order"
            )
        return _view(row)
