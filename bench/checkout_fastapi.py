"""The checkout of the shop, written the usual way: FastAPI services calling each other with httpx.

The baseline of the checkout benchmark: a minimal implementation of the same
three-hop checkout (gateway -> orders -> inventory + billing), four FastAPI
apps on uvicorn (asyncio loop, httptools), each its own process, each with a
shared ``httpx.AsyncClient`` for its outgoing calls (the FastAPI docs'
advice), each service with its own SQLite file through SQLAlchemy Core.

It is given every advantage that does not change what it is: the same SQLite
promise as Cleave's default (WAL, ``synchronous=FULL``: an answered order is on
disk and survives a power cut, as Cleave's group commit guarantees; queries on
the event loop's thread, which is faster than a thread pool for SQLite), no retries, no
idempotency keys, no saga record, no events, no tracing or metrics. The
checkout is: the gateway validates the order and forwards it to orders;
orders records it as pending, asks inventory to reserve the stock (which
prices it), asks billing to charge the account, releases the stock if the
charge is declined, and records the outcome.

Usage: python -m bench.checkout_fastapi SERVICE PORT DATA_DIR [UPSTREAM_PORT ...]
  gateway PORT DIR ORDERS_PORT | orders PORT DIR INVENTORY_PORT BILLING_PORT
  inventory PORT DIR | billing PORT DIR
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
import uvicorn
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field
from sqlalchemy import event as sa_event

from bench.common import UVICORN
from shop.seed import ACCOUNTS, PRODUCTS


class Line(BaseModel):
    sku: str
    qty: int = Field(gt=0)


class PlaceOrder(BaseModel):
    account_id: str
    items: list[Line] = Field(min_length=1)


class ReserveRequest(BaseModel):
    order_id: str
    items: list[Line]


class ChargeRequest(BaseModel):
    order_id: str
    account_id: str
    amount_cents: int


class OrderIdRequest(BaseModel):
    order_id: str


def engine(path: Path) -> sa.Engine:
    eng = sa.create_engine(f"sqlite:///{path}", pool_size=8, max_overflow=8)

    @sa_event.listens_for(eng, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")  # Cleave's default promise (group commit)
        cursor.close()

    return eng


def database(
    path: Path, metadata: sa.MetaData, seed: sa.Table, rows: list[dict[str, Any]]
) -> sa.Engine:
    """The service's SQLite file, its tables created and ``seed`` filled on first start."""
    db = engine(path)
    metadata.create_all(db)
    with db.begin() as tx:
        if rows and not tx.scalar(sa.select(sa.func.count()).select_from(seed)):
            tx.execute(seed.insert(), rows)
    return db


def client() -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    return httpx.AsyncClient(limits=limits, timeout=30.0)


# -- gateway -------------------------------------------------------------------------------------


def gateway(data: Path, orders_port: str) -> FastAPI:
    http: dict[str, httpx.AsyncClient] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        http["orders"] = client()
        yield
        await http["orders"].aclose()

    api = FastAPI(lifespan=lifespan)
    orders_url = f"http://127.0.0.1:{orders_port}/orders"

    @api.post("/v1/orders", status_code=201)
    async def place_order(order: PlaceOrder) -> Any:
        resp = await http["orders"].post(
            orders_url,
            content=order.model_dump_json(),
            headers={"content-type": "application/json"},
        )
        if resp.status_code >= 400:
            raise HTTPException(resp.status_code, resp.json().get("detail"))
        return resp.json()

    return api


# -- orders --------------------------------------------------------------------------------------

orders_md = sa.MetaData()
orders = sa.Table(
    "orders",
    orders_md,
    sa.Column("order_id", sa.String(64), primary_key=True),
    sa.Column("account_id", sa.String(64), nullable=False, index=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("total_cents", sa.BigInteger, nullable=True),
    sa.Column("items", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)


def orders_app(data: Path, inventory_port: str, billing_port: str) -> FastAPI:
    db = database(data / "orders.db", orders_md, orders, [])
    http: dict[str, httpx.AsyncClient] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        http["inventory"] = client()
        http["billing"] = client()
        yield
        for c in http.values():
            await c.aclose()

    api = FastAPI(lifespan=lifespan)
    inventory = f"http://127.0.0.1:{inventory_port}"
    billing = f"http://127.0.0.1:{billing_port}"

    def finish(order_id: str, status: str, total: int | None, reason: str | None) -> None:
        with db.begin() as tx:
            tx.execute(
                orders.update()
                .where(orders.c.order_id == order_id)
                .values(status=status, total_cents=total, reason=reason, updated_at=time.time())
            )

    @api.post("/orders")
    async def place_order(order: PlaceOrder) -> dict[str, Any]:
        order_id = f"ord_{os.urandom(8).hex()}"
        now = time.time()
        with db.begin() as tx:
            tx.execute(
                orders.insert().values(
                    order_id=order_id,
                    account_id=order.account_id,
                    status="pending",
                    items=order.model_dump_json(include={"items"}),
                    created_at=now,
                    updated_at=now,
                )
            )
        items = [line.model_dump() for line in order.items]
        reserved = await http["inventory"].post(
            f"{inventory}/reserve", json={"order_id": order_id, "items": items}
        )
        if reserved.status_code != 200:
            reason = reserved.json()["detail"]
            finish(order_id, "cancelled", None, reason)
            return {"order_id": order_id, "status": "cancelled", "reason": reason}
        total = reserved.json()["total_cents"]
        charged = await http["billing"].post(
            f"{billing}/charge",
            json={"order_id": order_id, "account_id": order.account_id, "amount_cents": total},
        )
        if charged.status_code != 200:
            reason = charged.json()["detail"]
            await http["inventory"].post(f"{inventory}/release", json={"order_id": order_id})
            finish(order_id, "cancelled", total, reason)
            return {"order_id": order_id, "status": "cancelled", "reason": reason}
        finish(order_id, "confirmed", total, None)
        return {
            "order_id": order_id,
            "account_id": order.account_id,
            "status": "confirmed",
            "total_cents": total,
            "items": items,
        }

    return api


# -- inventory -----------------------------------------------------------------------------------

inventory_md = sa.MetaData()
stock = sa.Table(
    "stock",
    inventory_md,
    sa.Column("sku", sa.String(64), primary_key=True),
    sa.Column("price_cents", sa.BigInteger, nullable=False),
    sa.Column("available", sa.Integer, nullable=False),
)
reserved_lines = sa.Table(
    "reserved_lines",
    inventory_md,
    sa.Column("order_id", sa.String(64), primary_key=True),
    sa.Column("sku", sa.String(64), primary_key=True),
    sa.Column("qty", sa.Integer, nullable=False),
)


def inventory_app(data: Path) -> FastAPI:
    rows = [{"sku": p.sku, "price_cents": p.price_cents, "available": p.stock} for p in PRODUCTS]
    db = database(data / "inventory.db", inventory_md, stock, rows)
    api = FastAPI()

    @api.post("/reserve")
    async def reserve(req: ReserveRequest) -> dict[str, Any]:
        total = 0
        with db.begin() as tx:
            for line in req.items:
                row = tx.execute(
                    sa.select(stock.c.price_cents, stock.c.available).where(stock.c.sku == line.sku)
                ).first()
                if row is None:
                    raise HTTPException(404, f"unknown sku {line.sku!r}")
                if row.available < line.qty:
                    raise HTTPException(409, f"not enough {line.sku} in stock")
                total += row.price_cents * line.qty
                tx.execute(
                    stock.update()
                    .where(stock.c.sku == line.sku)
                    .values(available=stock.c.available - line.qty)
                )
                tx.execute(
                    reserved_lines.insert().values(
                        order_id=req.order_id, sku=line.sku, qty=line.qty
                    )
                )
        return {"order_id": req.order_id, "total_cents": total}

    @api.post("/release")
    async def release(req: OrderIdRequest) -> dict[str, Any]:
        with db.begin() as tx:
            lines = tx.execute(
                sa.delete(reserved_lines)
                .where(reserved_lines.c.order_id == req.order_id)
                .returning(reserved_lines.c.sku, reserved_lines.c.qty)
            ).all()
            for sku, qty in lines:
                tx.execute(
                    stock.update()
                    .where(stock.c.sku == sku)
                    .values(available=stock.c.available + qty)
                )
        return {"order_id": req.order_id, "released": len(lines)}

    return api


# -- billing -------------------------------------------------------------------------------------

billing_md = sa.MetaData()
accounts = sa.Table(
    "accounts",
    billing_md,
    sa.Column("account_id", sa.String(64), primary_key=True),
    sa.Column("balance_cents", sa.BigInteger, nullable=False),
)
payments = sa.Table(
    "payments",
    billing_md,
    sa.Column("order_id", sa.String(64), primary_key=True),
    sa.Column("account_id", sa.String(64), nullable=False),
    sa.Column("amount_cents", sa.BigInteger, nullable=False),
)


def billing_app(data: Path) -> FastAPI:
    rows = [{"account_id": a.account_id, "balance_cents": a.balance_cents} for a in ACCOUNTS]
    db = database(data / "billing.db", billing_md, accounts, rows)
    api = FastAPI()

    @api.post("/charge")
    async def charge(req: ChargeRequest) -> dict[str, Any]:
        with db.begin() as tx:
            balance = tx.scalar(
                sa.select(accounts.c.balance_cents).where(accounts.c.account_id == req.account_id)
            )
            if balance is None:
                raise HTTPException(404, f"unknown account {req.account_id!r}")
            if balance < req.amount_cents:
                raise HTTPException(402, "insufficient funds")
            tx.execute(
                accounts.update()
                .where(accounts.c.account_id == req.account_id)
                .values(balance_cents=accounts.c.balance_cents - req.amount_cents)
            )
            tx.execute(payments.insert().values(**req.model_dump()))
        return {"order_id": req.order_id, "status": "captured"}

    return api


def main(argv: list[str]) -> None:
    service, port, data, *upstream = argv
    folder = Path(data)
    folder.mkdir(parents=True, exist_ok=True)
    factories = {
        "gateway": gateway,
        "orders": orders_app,
        "inventory": inventory_app,
        "billing": billing_app,
    }
    api = factories[service](folder, *upstream)
    uvicorn.run(api, port=int(port), **UVICORN)


if __name__ == "__main__":
    main(sys.argv[1:])
