"""Catalog: products and their prices."""

from __future__ import annotations

from typing import Annotated, Protocol

import msgspec

import cleave
from shop.contracts.paging import MAX_PAGE, After, PageSize

Sku = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class Product(cleave.Message):
    sku: str
    name: str
    price_cents: int


class ProductList(cleave.Message):
    products: tuple[Product, ...]


class ListProducts(cleave.Message):
    #: At most this many products, by SKU.
    limit: PageSize = MAX_PAGE
    #: Products after this SKU (the last of the previous page).
    after: After = ""


class GetProduct(cleave.Message):
    sku: Sku


class GetPrices(cleave.Message):
    skus: tuple[Sku, ...]


class Price(cleave.Message):
    sku: str
    price_cents: int


class Prices(cleave.Message):
    prices: tuple[Price, ...]
    #: Requested SKUs the catalog does not sell.
    missing: tuple[str, ...] = ()


@cleave.contract("catalog", version=1)
class Catalog(Protocol):
    """Products and their prices."""

    @cleave.readonly
    async def list_products(self, req: ListProducts) -> ProductList:
        """Products by SKU, a page at a time."""
        ...

    @cleave.readonly
    async def get_product(self, req: GetProduct) -> Product:
        """One product; NotFound if the SKU is unknown."""
        ...

    @cleave.readonly
    async def get_prices(self, req: GetPrices) -> Prices:
        """Prices of several SKUs at once, and which of them are unknown."""
        ...
