"""The catalog service: products and prices, seeded on first start."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

import cleave
from shop.contracts.catalog import (
    Catalog,
    GetPrices,
    GetProduct,
    ListProducts,
    Price,
    Prices,
    Product,
    ProductList,
)
from shop.seed import PRODUCTS

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
metadata = sa.MetaData()
products = sa.Table(
    "products",
    metadata,
    sa.Column("sku", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("price_cents", sa.Integer, nullable=False),
)


# The checkout's statement, built once (see cleave.Prepared); the rest use tx.execute.
PRICE = cleave.Prepared(
    sa.select(products.c.price_cents).where(products.c.sku == sa.bindparam("sku"))
)


class CatalogService(cleave.Service, implements=Catalog):
    db = cleave.Database(metadata, migrations=MIGRATIONS / "catalog")

    async def on_start(self) -> None:
        async with self.db.transaction() as tx:
            if await tx.scalar(sa.select(sa.func.count()).select_from(products)):
                return
            await tx.execute(
                products.insert(),
                [{"sku": p.sku, "name": p.name, "price_cents": p.price_cents} for p in PRODUCTS],
            )

    async def list_products(self, req: ListProducts) -> ProductList:
        async with self.db.read() as tx:
            rows = (
                await tx.execute(
                    sa.select(products)
                    .where(products.c.sku > req.after)
                    .order_by(products.c.sku)
                    .limit(req.limit)
                )
            ).all()
        return ProductList(
            products=tuple(Product(sku=r.sku, name=r.name, price_cents=r.price_cents) for r in rows)
        )

    async def get_product(self, req: GetProduct) -> Product:
        async with self.db.read() as tx:
            row = (await tx.execute(sa.select(products).where(products.c.sku == req.sku))).first()
        if row is None:
            raise cleave.NotFound(f"no product with sku {req.sku!r}")
        return Product(sku=row.sku, name=row.name, price_cents=row.price_cents)

    async def get_prices(self, req: GetPrices) -> Prices:
        found: dict[str, int] = {}
        async with self.db.read() as tx:
            for sku in req.skus:
                row = await tx.fetch_one(PRICE, {"sku": sku})
                if row is not None:
                    found[sku] = row.price_cents
        return Prices(
            prices=tuple(Price(sku=s, price_cents=found[s]) for s in req.skus if s in found),
            missing=tuple(s for s in req.skus if s not in found),
        )
