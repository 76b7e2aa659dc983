"""An app for the drain tests of ``cleave serve``: a call that is slow, then commits an event.

``slow.work`` sleeps, then publishes ``Worked`` in a transaction: sent while
its process drains, it commits its event after SIGTERM, so the event reaches
the stream only if the drain lets the call finish and then flushes the outbox.
``POST /work`` at the gateway calls it, for the gateway's own drain.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import sqlalchemy as sa

import cleave


class Work(cleave.Message):
    name: str
    seconds: float = 0.0


class Done(cleave.Message):
    name: str


class Worked(cleave.Event):
    name: str


@cleave.contract("slow", version=1, events=[Worked])
class Slow(Protocol):
    """Works slowly, then says so."""

    async def work(self, req: Work) -> Done:
        """Sleep ``seconds``, then publish ``Worked``."""
        ...


class SlowService(cleave.Service, implements=Slow):
    db = cleave.Database(sa.MetaData())

    async def work(self, req: Work) -> Done:
        await asyncio.sleep(req.seconds)
        async with self.db.transaction() as tx:
            tx.publish(Worked(name=req.name))
        return Done(name=req.name)


gateway = cleave.Gateway(title="drain", version="1.0.0")
gateway.post("/work", Slow.work, auth="public")

app = cleave.App("drain", services=[SlowService], gateway=gateway)
