"""The shop's seed data, and SHOP_SEED_MULTIPLIER (which the benchmarks use)."""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest

from shop import seed


@pytest.fixture(autouse=True)
def _plain_seed_afterwards() -> object:
    yield
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("SHOP_SEED_MULTIPLIER", raising=False)
        importlib.reload(seed)


def reload_with(monkeypatch: pytest.MonkeyPatch, value: str | None) -> ModuleType:
    if value is None:
        monkeypatch.delenv("SHOP_SEED_MULTIPLIER", raising=False)
    else:
        monkeypatch.setenv("SHOP_SEED_MULTIPLIER", value)
    return importlib.reload(seed)


def test_the_multiplier_scales_stock_and_balances_but_not_the_poor_account(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plain = reload_with(monkeypatch, None)
    stock = {p.sku: p.stock for p in plain.PRODUCTS}
    balances = dict(plain.ACCOUNTS)
    big = reload_with(monkeypatch, "10")
    assert {p.sku: p.stock for p in big.PRODUCTS} == {k: v * 10 for k, v in stock.items()}
    scaled = dict(big.ACCOUNTS)
    assert scaled["acc-alice"] == balances["acc-alice"] * 10
    assert scaled["acc-poor"] == balances["acc-poor"]  # still cannot pay for anything


@pytest.mark.parametrize("value", ["0", "-2", "1.5", "lots"])
def test_a_bad_multiplier_is_refused_by_name(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    with pytest.raises(ValueError, match=rf"SHOP_SEED_MULTIPLIER .* got '{value}'"):
        reload_with(monkeypatch, value)
