"""Nothing lost, nothing done twice: the shop under SIGKILL.

`cleave up` runs the shop; several clients place orders (some for an account
that cannot pay, some for scarce stock) with an Idempotency-Key each,
retrying on failure, while random workers (orders, billing, inventory and
shipping among them) are killed with SIGKILL. Afterwards, through the public
HTTP API only (and `cleave status` for the outboxes):

- every order that got a 2xx is confirmed or cancelled within 30 s of the
  last restart;
- for every account, initial balance - balance = its confirmed orders' totals
  (so nobody was charged twice);
- for every SKU, stock is never negative, initial - available - reserved =
  the quantity in confirmed orders, and nothing stays reserved;
- every confirmed order has exactly one shipment, every cancelled order none;
- every outbox drains, no event is dead-lettered.

Then every event in every stream is published again under a new message id
(past the broker's duplicate window, as a replay from outside would be):
nothing may change.

CLEAVE_CRASH_ORDERS, CLEAVE_CRASH_KILLS and CLEAVE_CRASH_SEED vary the run.
"""

from __future__ import annotations

import asyncio
import os
import queue
import random
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from shopcheck import (
    SCARCE,
    Api,
    Client,
    Control,
    admin_headers,
    check_invariants,
    per_order,
    plans,
    quiet,
    snapshot,
)

from conftest import SHOP, PostgresDatabases, Up, wait_until

# Under a kill every second or two, circuits open and sagas wait out outages: on
# PostgreSQL (slower worker restarts) the traffic alone has taken over three minutes.
pytestmark = [pytest.mark.slow, pytest.mark.processes, pytest.mark.nats, pytest.mark.timeout(900)]

ORDERS = int(os.environ.get("CLEAVE_CRASH_ORDERS", "320"))
MIN_KILLS = int(os.environ.get("CLEAVE_CRASH_KILLS", "12"))
CLIENTS = 8
MUST_KILL = ["orders", "billing", "inventory", "shipping"]
ALSO_KILL = ["notifications", "catalog"]


class Killer(threading.Thread):
    """SIGKILLs a random worker every second or two."""

    def __init__(
        self, control: Control, rng: random.Random, done: threading.Event, url: str
    ) -> None:
        super().__init__(daemon=True)
        self.http = httpx.Client(base_url=url, timeout=5)
        self.control = control
        self.rng = rng
        self.done = done
        self.kills: list[tuple[float, str]] = []
        self.lowest_stock = 0

    def sample_stock(self, http: httpx.Client) -> None:
        """Stock is never negative, also while workers die (not only at the end)."""
        for sku in [*SCARCE, "KB-01", "LMP-01"]:
            try:
                s = http.get(f"/v1/inventory/{sku}").json()
            except (httpx.HTTPError, ValueError):
                continue
            if "available" in s:
                self.lowest_stock = min(self.lowest_stock, s["available"], s["reserved"])

    def run(self) -> None:
        order = list(MUST_KILL)
        self.rng.shuffle(order)
        while not (self.done.is_set() and len(self.kills) >= MIN_KILLS):
            time.sleep(self.rng.uniform(1.0, 2.0))
            self.sample_stock(self.http)
            target = order.pop() if order else self.rng.choice(MUST_KILL + ALSO_KILL)
            row = self.control.ps().get(target)
            if row is None or row["status"] != "ready" or not row["pid"]:
                if target in MUST_KILL and target not in {t for _, t in self.kills}:
                    order.append(target)  # try this one again later
                continue
            try:
                os.kill(row["pid"], signal.SIGKILL)
            except ProcessLookupError:
                continue
            self.kills.append((time.monotonic(), target))


async def replay_every_event(nats_url: str, state_dir: Path) -> int:
    """Publish every stored event again under a new Nats-Msg-Id (same Cleave-Event-Id)."""
    import nats

    from cleave.runtime.nats_auth import read_identity

    # As an operator would: the unrestricted admin identity `cleave up` made.
    admin = read_identity(state_dir / "nats-auth" / "admin.json")
    nc = await nats.connect(nats_url, user=admin.user, password=admin.password)
    js = nc.jetstream()
    replayed = 0
    try:
        for name in ("CLEAVE_ORDERS", "CLEAVE_BILLING", "CLEAVE_SHIPPING"):
            info = await js.stream_info(name)
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                msg = await js.get_msg(name, seq)
                # The event as stored, minus how it was batched, under a new message id.
                headers = {
                    k: v for k, v in (msg.headers or {}).items() if not k.startswith("Nats-Batch-")
                }
                headers["Nats-Msg-Id"] = headers.get("Nats-Msg-Id", str(seq)) + "-replay"
                await js.publish(msg.subject or "", msg.data or b"", headers=headers)
                replayed += 1
    finally:
        await nc.close()
    return replayed


@pytest.mark.parametrize(
    "storage", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_nothing_lost_nothing_twice_under_sigkill(tmp_path: Path, storage: str) -> None:
    seed = int(os.environ.get("CLEAVE_CRASH_SEED", str(random.randrange(1 << 30))))
    rng = random.Random(seed)
    pg = PostgresDatabases() if storage == "postgres" else None
    up = Up(SHOP, tmp_path, pg.env if pg else {}).start()
    try:
        control = Control(tmp_path)
        http = Api(base_url=up.url, timeout=30, headers=admin_headers(tmp_path))
        initial = snapshot(http)
        work: queue.Queue[dict[str, Any]] = queue.Queue()
        for plan in plans(rng, ORDERS):
            work.put(plan)
        results: dict[str, Any] = {}
        clients = [
            Client(up.url, work, results, admin_headers(tmp_path, f"client-{i}"))
            for i in range(CLIENTS)
        ]
        done = threading.Event()
        killer = Killer(control, rng, done, up.url)
        started = time.monotonic()
        killer.start()
        for c in clients:
            c.start()
        for c in clients:
            c.join(timeout=600)
        done.set()
        for c in clients:
            assert c.error is None, f"a client failed: {c.error!r}"
        assert len(results) == ORDERS, f"only {len(results)} of {ORDERS} orders were placed"
        killer.join(timeout=120)
        traffic = time.monotonic() - started

        # The last restart: every worker is back.
        wait_until(
            lambda: all(r["status"] == "ready" for r in control.ps().values()),
            timeout=60,
            interval=0.2,
        )
        back = time.monotonic()

        accepted = {k: r for k, r in results.items() if r is not None}

        def all_final() -> bool:
            orders = snapshot(http)["orders"]
            return bool(orders) and all(o["status"] != "pending" for o in orders)

        wait_until(all_final, timeout=30, interval=0.25)
        convergence = time.monotonic() - back

        wait_until(lambda: quiet(control), timeout=90, interval=0.5)
        now = snapshot(http)
        by_id = {o["order_id"]: o for o in now["orders"]}
        lost = [r["order_id"] for r in accepted.values() if r["order_id"] not in by_id]
        duplicated = max(0, len(now["orders"]) - len(results))
        assert not lost, f"orders that got a 2xx are missing: {lost[:5]}"
        assert duplicated == 0, f"{duplicated} orders more than idempotency keys"
        figures = check_invariants(initial, now, http)
        dead = sum(
            c["dead_lettered"]
            for st in control.status().values()
            for c in st.get("consumers", {}).values()
        )
        assert dead == 0, f"{dead} events were dead-lettered"
        assert {t for _, t in killer.kills} >= set(MUST_KILL)
        assert len(killer.kills) >= MIN_KILLS
        assert killer.lowest_stock >= 0, "stock went negative during the run"

        notes = per_order(http, now["orders"], "/v1/notifications")
        replayed = asyncio.run(replay_every_event(control.nats_url, tmp_path))
        time.sleep(1.0)
        wait_until(lambda: quiet(control), timeout=60, interval=0.5)
        after = snapshot(http)
        assert after == now, "replaying events changed balances, stock or orders"
        again = check_invariants(initial, after, http)
        assert again["shipments"] == figures["shipments"]
        assert per_order(http, after["orders"], "/v1/notifications") == notes
        duplicates = sum(
            c["duplicates"]
            for st in control.status().values()
            for c in st.get("consumers", {}).values()
        )

        killed = Counter(t for _, t in killer.kills)
        print(
            f"\ncrash test [{storage}, seed {seed}]: orders={len(results)} "
            f"2xx={len(accepted)} confirmed={figures['confirmed']} "
            f"cancelled={figures['cancelled']} kills={len(killer.kills)} "
            f"({', '.join(f'{t}:{n}' for t, n in sorted(killed.items()))}) "
            f"client_retries={sum(c.retries for c in clients)} lost={len(lost)} "
            f"duplicated={duplicated} max_convergence={convergence:.1f}s "
            f"traffic={traffic:.1f}s replayed={replayed} skipped_as_duplicates={duplicates}"
        )
        reasons = Counter(
            (o["reason"] or "").split(":")[0] for o in now["orders"] if o["status"] == "cancelled"
        )
        print(f"cancelled because: {dict(reasons)}")
    finally:
        up.stop()
        if pg is not None:
            pg.drop()
