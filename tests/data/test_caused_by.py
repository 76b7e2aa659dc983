"""Who caused an event is kept with it in the outbox, also in a database made before that column."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import sample_app
import sqlalchemy as sa

from cleave.context import CallContext, Identity, _current, decode_identity
from cleave.data import schema
from cleave.data.database import Database, default_url

SUBJECTS = {sample_app.Greeted: "cleave.evt.t.greeted.v1"}


async def test_an_older_outbox_gains_the_column_and_events_keep_their_causer(
    tmp_path: Path,
) -> None:
    url = default_url(tmp_path, "t")
    # The outbox as Cleave made it before identities: no caused_by column.
    with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
        conn.execute(
            "CREATE TABLE cleave_outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
            "event_id VARCHAR(64) NOT NULL UNIQUE, subject VARCHAR(255) NOT NULL, "
            "payload BLOB NOT NULL, traceparent VARCHAR(64) NOT NULL, created_at FLOAT NOT NULL)"
        )
    db = Database(sa.MetaData()).bind("t", url, SUBJECTS)
    await db.start()
    try:
        alice = Identity("acc-alice", ("admin",))
        token = _current.set(CallContext(1e12, "r-1", "test", identity=alice))
        try:
            async with db.transaction() as tx:
                tx.publish(sample_app.Greeted(name="ann"))
        finally:
            _current.reset(token)
        async with db.transaction() as tx:
            tx.publish(sample_app.Greeted(name="bo"))  # no call: the system
        async with db.read() as tx:
            rows = (
                await tx.execute(sa.select(schema.outbox.c.caused_by).order_by(schema.outbox.c.seq))
            ).all()
    finally:
        await db.stop()
    assert [decode_identity(r[0]) for r in rows] == [alice, None]
