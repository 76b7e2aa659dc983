"""The shop's seed data, loaded by each service into its own database on first start."""

from __future__ import annotations

from typing import NamedTuple


class SeedProduct(NamedTuple):
    sku: str
    name: str
    price_cents: int
    stock: int


class SeedAccount(NamedTuple):
    account_id: str
    balance_cents: int


PRODUCTS = (
    SeedProduct("KB-01", "Mechanical keyboard", 8_900, 50),
    SeedProduct("MS-01", "Wireless mouse", 2_900, 100),
    SeedProduct("MN-27", "27-inch monitor", 24_900, 20),
    SeedProduct("HUB-01", "USB-C hub", 3_900, 80),
    SeedProduct("CBL-01", "USB-C cable", 900, 500),
    SeedProduct("LMP-01", "Desk lamp", 4_500, 40),
    SeedProduct("CHR-01", "Office chair", 19_900, 5),  # scarce
    SeedProduct("GPU-01", "Graphics card", 59_900, 3),  # scarce
)

ACCOUNTS = (
    SeedAccount("acc-alice", 500_000),
    SeedAccount("acc-bob", 250_000),
    SeedAccount("acc-carol", 1_000_000),
    SeedAccount("acc-dave", 100_000),
    SeedAccount("acc-poor", 500),  # cannot pay for anything: the cheapest product is 900
)
