from __future__ import annotations

import time
from pathlib import Path

import sqlalchemy as sa

from cleave.data import schema
from cleave.data.database import Database, default_url
from cleave.data.janitor import DAY, Janitor


async def test_expired_rows_go_and_recent_ones_stay(tmp_path: Path) -> None:
    db = Database().bind("t", default_url(tmp_path, "t"), {})
    await db.start()
    now = time.time()
    async with db.transaction() as tx:
        await tx.execute(
            schema.inbox.insert(),
            [
                {"consumer": "c", "event_id": f"old{i}", "processed_at": now - 9 * DAY}
                for i in range(7)
            ]
            + [{"consumer": "c", "event_id": "new", "processed_at": now - 1 * DAY}],
        )
        await tx.execute(
            schema.idempotency.insert(),
            [
                {
                    "request_id": r,
                    "method": "m",
                    "fingerprint": "f",
                    "is_error": 0,
                    "result": b"",
                    "created_at": t,
                }
                for r, t in (("old", now - 2 * DAY), ("new", now - 60))
            ],
        )
        base = {
            "kind": "k",
            "step": 0,
            "data": b"",
            "attempts": 0,
            "reason": None,
            "last_error": None,
            "next_attempt_at": 0.0,
            "deadline_at": 0.0,
            "owner": "",
            "lease_until": 0.0,
            "created_at": 0.0,
        }
        await tx.execute(
            schema.sagas.insert(),
            [
                {**base, "saga_id": "done-old", "state": "done", "updated_at": now - 8 * DAY},
                {**base, "saga_id": "running-old", "state": "running", "updated_at": now - 8 * DAY},
                {**base, "saga_id": "done-new", "state": "done", "updated_at": now},
            ],
        )
    deleted = await Janitor(db, batch=3).sweep(now)
    assert deleted == 7 + 1 + 1
    async with db.read() as tx:
        assert (await tx.execute(sa.select(schema.inbox.c.event_id))).scalars().all() == ["new"]
        assert (await tx.execute(sa.select(schema.idempotency.c.request_id))).scalars().all() == [
            "new"
        ]
        sagas = set((await tx.execute(sa.select(schema.sagas.c.saga_id))).scalars().all())
    assert sagas == {"running-old", "done-new"}  # a running saga is never swept
    await db.stop()
