"""The `[nats] prefix` helper: Cleave's subjects and stream names under another first token."""

from __future__ import annotations

import pytest

from cleave.transport.prefix import DEFAULT, canonical_subject, stream_for, subject_for


def test_the_default_prefix_changes_nothing() -> None:
    assert DEFAULT == "cleave"
    assert subject_for("cleave", "cleave.rpc.billing.v1.charge") == "cleave.rpc.billing.v1.charge"
    assert stream_for("cleave", "CLEAVE_ORDERS") == "CLEAVE_ORDERS"
    assert canonical_subject("cleave", "cleave.dlq.audit") == "cleave.dlq.audit"


def test_another_prefix_replaces_the_first_token() -> None:
    assert subject_for("shop", "cleave.rpc.billing.v1.charge") == "shop.rpc.billing.v1.charge"
    assert subject_for("t1a2", "cleave.evt.orders.>") == "t1a2.evt.orders.>"
    assert stream_for("shop", "CLEAVE_ORDERS") == "SHOP_ORDERS"
    assert stream_for("t1a2", "CLEAVE_DLQ") == "T1A2_DLQ"


def test_a_subject_maps_back_to_its_canonical_form() -> None:
    for subject in ("cleave.rpc.billing.v1.charge", "cleave.evt.orders.placed.v1", "cleave.dlq.x"):
        assert canonical_subject("shop", subject_for("shop", subject)) == subject


def test_names_that_are_not_cleaves_are_refused() -> None:
    with pytest.raises(ValueError, match="not a Cleave subject"):
        subject_for("shop", "$JS.API.INFO")
    with pytest.raises(ValueError, match="not a Cleave stream name"):
        stream_for("shop", "ORDERS")
    with pytest.raises(ValueError, match="is not under the prefix 'shop'"):
        canonical_subject("shop", "cleave.evt.orders.placed.v1")
