"""`cleave contracts`: the CI gate on the shop, and a user's edits to a copy of it."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from conftest import SHOP, cli

WIDE = {"COLUMNS": "300"}  # rich folds table cells to the terminal width


def test_the_shop_has_no_breaking_change_against_its_lock() -> None:
    """The CI gate: a breaking change to the shop's contracts fails this test."""
    result = cli("contracts", "check", SHOP, check=False, env=WIDE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_reports_what_is_deprecated_and_every_major_is_locked() -> None:
    code, changes = check_json(SHOP, deprecated=True)
    assert code == 0
    assert [(c["path"], c["change"], c["verdict"]) for c in changes] == [
        ("billing.v1", "deprecated", "warning")
    ]
    assert "billing v2" in changes[0]["reason"]  # the author's reason: what to use instead
    lock = json.loads((SHOP / "contracts.lock.json").read_text())
    assert {"billing.v1", "billing.v2"} <= set(lock["contracts"])  # both majors are served


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    """A copy of the shop, as a user's own app folder."""
    copy = tmp_path / "shop"
    shutil.copytree(SHOP, copy, ignore=shutil.ignore_patterns(".cleave", "__pycache__"))
    return copy


def edit(app: Path, module: str, old: str, new: str) -> None:
    path = app / "shop" / "contracts" / f"{module}.py"
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def check_json(app: Path, *args: str, deprecated: bool = False) -> tuple[int, list[dict[str, Any]]]:
    """The exit code and the changes; the shop's standing deprecation warning only if asked."""
    result = cli("contracts", "check", app, "--json", *args, check=False)
    assert result.returncode in (0, 1), result.stderr
    changes = json.loads(result.stdout)
    if not deprecated:
        changes = [c for c in changes if c["change"] != "deprecated"]
    return result.returncode, changes


def test_a_user_breaks_the_shop_and_check_names_each_change(shop: Path) -> None:
    # The user's starting point: an optional request field, recorded in the lock.
    edit(
        shop,
        "orders",
        "    items: Annotated[tuple[Line, ...]",
        "    coupon: str | None = None\n    items: Annotated[tuple[Line, ...]",
    )
    cli("contracts", "snapshot", shop)
    assert check_json(shop) == (0, [])

    edit(
        shop,
        "orders",
        "    total_cents: int\n    items: tuple[Line, ...]\n    reason",
        "    amount_cents: int\n    items: tuple[Line, ...]\n    reason",
    )  # response rename
    edit(shop, "orders", "    coupon: str | None = None\n", "    coupon: str | None\n")
    edit(
        shop,
        "orders",
        "    account_id: str\n    total_cents: int\n    items: tuple[Line, ...]\n\n",
        "    account_id: str\n    items: tuple[Line, ...]\n\n",
    )  # OrderConfirmed loses a field
    edit(
        shop,
        "orders",
        "    account_id: str\n    reason: str\n",
        "    account_id: str\n    reason: Literal['out of stock', 'declined']\n",
    )  # narrowed

    code, changes = check_json(shop)
    assert code == 1
    found = {(c["path"], c["change"], c["verdict"]) for c in changes}
    for expected in [
        ("orders.v1.get_order.response.total_cents", "field removed", "breaking"),
        ("orders.v1.place_order.request.coupon", "field made required", "breaking"),
        ("orders.v1.events.order_confirmed.v1.total_cents", "field removed", "breaking"),
        ("orders.v1.events.order_cancelled.v1.reason", "type narrowed", "breaking"),
    ]:
        assert expected in found, (expected, sorted(found))
    assert all(
        set(c) == {"contract", "version", "path", "change", "verdict", "reason"} for c in changes
    )
    confirmed = next(c for c in changes if c["path"].endswith("order_confirmed.v1.total_cents"))
    assert "inventory, notifications, shipping" in confirmed["reason"]

    table = cli("contracts", "check", shop, check=False, env=WIDE)
    assert table.returncode == 1
    for path, _, _ in found:
        assert path in table.stdout
    assert "make it in a new major" in table.stderr


def test_compatible_changes_pass_the_check(shop: Path) -> None:
    edit(
        shop,
        "orders",
        "    reason: str | None = None\n\n\nclass ListOrders",
        "    reason: str | None = None\n    currency: str = 'EUR'\n\n\nclass ListOrders",
    )
    edit(
        shop,
        "billing",
        "    amount_cents: Annotated[int, msgspec.Meta(ge=0)]",
        "    amount_cents: Annotated[float, msgspec.Meta(ge=0)]",
    )  # a request type widened
    code, changes = check_json(shop)
    assert code == 0
    assert {(c["path"], c["change"], c["verdict"]) for c in changes} == {
        ("orders.v1.get_order.response.currency", "field added with default", "safe"),
        ("orders.v1.list_orders.response.orders[].currency", "field added with default", "safe"),
        ("orders.v1.place_order.response.currency", "field added with default", "safe"),
        ("billing.v1.charge.request.amount_cents", "type widened", "safe"),
    }
    table = cli("contracts", "check", shop, env=WIDE).stdout
    assert "nothing breaks" in table


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.email=dev@example.com", "-c", "user.name=dev", *args],
        cwd=repo,
        check=True,
        capture_output=True,
    )


def test_check_against_a_git_revision_reads_the_app_at_that_revision(shop: Path) -> None:
    (shop / "contracts.lock.json").unlink()  # the code at the revision is what counts
    _git(shop, "init", "-q")
    _git(shop, "add", ".")
    _git(shop, "commit", "-q", "-m", "shop")
    assert check_json(shop, "--against", "HEAD") == (0, [])

    edit(
        shop,
        "catalog",
        "    price_cents: int\n\n\nclass ProductList",
        "    price_cents: int | None\n\n\nclass ProductList",
    )
    code, changes = check_json(shop, "--against", "HEAD")
    assert code == 1
    assert ("catalog.v1.get_product.response.price_cents", "made nullable") in {
        (c["path"], c["change"]) for c in changes
    }


def test_check_errors_say_what_to_do(shop: Path, tmp_path: Path) -> None:
    (shop / "contracts.lock.json").unlink()
    missing = cli("contracts", "check", shop, check=False)
    assert missing.returncode == 2
    assert "cleave contracts snapshot" in missing.stderr
    no_git = cli("contracts", "check", shop, "--against", "main", check=False)
    assert no_git.returncode == 2
    assert "pass a lock file or a git revision" in " ".join(no_git.stderr.split())
    _git(shop, "init", "-q")
    bad_ref = cli("contracts", "check", shop, "--against", "no-such-ref", check=False)
    assert bad_ref.returncode == 2
    assert "git cannot read" in " ".join(bad_ref.stderr.split())


def test_snapshot_writes_the_lock_the_shop_commits(tmp_path: Path) -> None:
    out = tmp_path / "lock.json"
    cli("contracts", "snapshot", SHOP, "--output", out)
    fresh = json.loads(out.read_text())
    committed = json.loads((SHOP / "contracts.lock.json").read_text())
    assert set(fresh["contracts"]) >= set(committed["contracts"])
    printed = cli("contracts", "snapshot", SHOP, "--output", "-").stdout
    assert printed == out.read_text()


def test_the_app_at_a_revision_that_does_not_load_is_a_clear_error(shop: Path) -> None:
    toml = shop / "cleave.toml"
    good = toml.read_text()
    toml.write_text(good.replace('target = "shop.app:app"', 'target = "nope:app"'))
    _git(shop, "init", "-q")
    _git(shop, "add", ".")
    _git(shop, "commit", "-q", "-m", "broken")
    toml.write_text(good)
    result = cli("contracts", "check", shop, "--against", "HEAD", check=False)
    assert result.returncode == 2
    message = " ".join(result.stderr.split())
    assert "the app at HEAD does not load" in message
    assert "cannot import 'nope'" in message


def test_a_field_msgspec_cannot_encode_is_a_clear_error(shop: Path) -> None:
    edit(
        shop,
        "catalog",
        "class Product(cleave.Message):",
        "class Money:\n    pass\n\n\nclass Product(cleave.Message):",
    )
    edit(
        shop,
        "catalog",
        "    price_cents: int\n\n\nclass ProductList",
        "    price_cents: int\n    price: Money | None = None\n\n\nclass ProductList",
    )
    for command in ("snapshot", "check", "asyncapi"):
        result = cli("contracts", command, shop, check=False)
        assert result.returncode == 2, (command, result.stderr)
        assert "field of type Money, which msgspec cannot encode" in " ".join(result.stderr.split())


def test_an_unwritable_output_is_a_clear_error(tmp_path: Path) -> None:
    result = cli(
        "contracts", "snapshot", SHOP, "--output", tmp_path / "no" / "lock.json", check=False
    )
    assert result.returncode == 2
    assert "cannot write" in result.stderr
