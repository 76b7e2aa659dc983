"""The shop's seed data, loaded by each service into its own database on first start.

``SHOP_SEED_MULTIPLIER`` (an integer, default 1) multiplies every stock level
and balance: the benchmarks use it so that thousands of orders are confirmed
rather than refused for lack of stock or money.
"""

from __future__ import annotations

import os
from typing import NamedTuple


class SeedProduct(NamedTuple):
    sku: str
    name: str
    price_cents: int
    stock: int


class SeedAccount(NamedTuple):
    account_id: str
    balance_cents: int


def _scale() -> int:
    raw = os.environ.get("SHOP_SEED_MULTIPLIER", "").strip() or "1"
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(
            f"SHOP_SEED_MULTIPLIER must be a whole number of at least 1, got {raw!r}; "
            "unset it for the documented seed data"
        )
    return int(raw)


_SCALE = _scale()

_PRODUCTS = (
    SeedProduct("KB-01", "Mechanical keyboard", 8_900, 50),
    SeedProduct("MS-01", "Wireless mouse", 2_900, 100),
    SeedProduct("MN-27", "27-inch monitor", 24_900, 20),
    SeedProduct("HUB-01", "USB-C hub", 3_900, 80),
    SeedProduct("CBL-01", "USB-C cable", 900, 500),
    SeedProduct("LMP-01", "Desk lamp", 4_500, 40),
    SeedProduct("CHR-01", "Office chair", 19_900, 5),  # scarce
    SeedProduct("GPU-01", "Graphics card", 59_900, 3),  # scarce
)

_ACCOUNTS = (
    SeedAccount("acc-alice", 500_000),
    SeedAccount("acc-bob", 250_000),
    SeedAccount("acc-carol", 1_000_000),
    SeedAccount("acc-dave", 100_000),
    SeedAccount("acc-poor", 500),  # cannot pay for anything: the cheapest product is 900
)

PRODUCTS = tuple(p._replace(stock=p.stock * _SCALE) for p in _PRODUCTS)
ACCOUNTS = tuple(
    a if a.account_id == "acc-poor" else a._replace(balance_cents=a.balance_cents * _SCALE)
    for a in _ACCOUNTS
)
