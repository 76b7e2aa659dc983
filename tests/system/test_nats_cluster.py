"""The shop on a three-node NATS cluster, under steady load, while NATS nodes die.

`cleave up` runs the shop with ``[nats] cluster = 3`` (every stream kept on
three nodes). Clients place orders at a steady rate, each with an
Idempotency-Key, retrying on failure. Meanwhile:

1. one NATS node (not the one leading the orders stream) is SIGKILLed; the
   supervisor restarts it and it catches up;
2. the node leading the orders stream (``CLEAVE_ORDERS``) is SIGKILLed; the
   supervisor restarts it at once (it is usually back, and leading again,
   before the other two's election timeout);
3. the node leading the orders stream then hangs (SIGSTOP): nothing restarts
   it, so the other two must elect a new leader and clients connected to it
   must notice (pings) and move; then it is let go (SIGCONT) and catches up.

After each the test measures, and prints, how long until the stream
has a leader again, until the killed node is back and healthy, and until an
order placed after the kill is confirmed or cancelled (orders flow again).
Once the load ends and everything settles, the crash test's invariants
hold: no order lost, none done twice, every order terminal, money and
stock exact, no dead letters.
"""

from __future__ import annotations

import json
import os
import queue
import random
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from shopcheck import (
    Api,
    Client,
    Control,
    admin_headers,
    check_invariants,
    plans,
    quiet,
    snapshot,
    unquiet,
)

from cleave.runtime.natscluster import stream_leader
from conftest import SHOP, Up, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.processes, pytest.mark.nats, pytest.mark.timeout(300)]

STREAM = "CLEAVE_ORDERS"
CLIENTS = 4
RATE = 8.0  # orders a second, all clients together


class Steady(Client):
    """A client that takes orders until it takes a None (the feed decides the rate)."""

    def run(self) -> None:
        try:
            while (plan := self.work.get()) is not None:
                self.results[plan["key"]] = self.place(plan)
        except BaseException as exc:  # reported by the test, not lost in a thread
            self.error = exc


class Feed(threading.Thread):
    """Puts ``RATE`` order plans a second on the queue until stopped."""

    def __init__(self, work: queue.Queue[dict[str, Any] | None], rng: random.Random) -> None:
        super().__init__(daemon=True)
        self.work = work
        self.rng = rng
        self.stop = threading.Event()
        self.fed = 0

    def run(self) -> None:
        while not self.stop.wait(1 / RATE):
            self.work.put(plans(self.rng, 1)[0] | {"key": f"cluster-{self.fed}"})
            self.fed += 1
        for _ in range(CLIENTS):
            self.work.put(None)


def nodes(state_dir: Path) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = json.loads((state_dir / "run" / "supervisor.json").read_text())[
        "nats_nodes"
    ]
    return found


def leader(state_dir: Path, skip: str = "") -> str:
    """The name of the node leading the orders stream ("": none now), ``skip`` aside."""
    found = [n for n in nodes(state_dir) if n["name"] != skip]
    index = stream_leader([(n["name"], n["monitor_url"]) for n in found], STREAM)
    return "" if index is None else str(found[index]["name"])


def healthy(node: dict[str, Any]) -> bool:
    import httpx

    try:
        return httpx.get(f"{node['monitor_url']}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


class Kill:
    """One SIGKILL of a NATS node and what followed, in seconds from the kill."""

    def __init__(
        self, state_dir: Path, index: int, probe: Client, http: Api, sig: int = signal.SIGKILL
    ) -> None:
        self.state_dir = state_dir
        self.index = index
        self.sig = signal.Signals(sig).name
        node = nodes(state_dir)[index]
        self.name = node["name"]
        os.kill(node["pid"], sig)
        self.at = time.monotonic()
        # A new leader of the orders stream (the killed node may have led it; a hung one
        # still says so to itself, but its peers elect another).
        alive = lambda: leader(state_dir, skip=self.name if sig == signal.SIGSTOP else "")  # noqa: E731
        self.new_leader = wait_until(alive, timeout=60, interval=0.05)
        self.leader = time.monotonic() - self.at
        # An order placed now goes through to the end.
        key = f"probe-{self.name}-{self.sig}-{self.at}"
        plan = plans(random.Random(index), 1)[0] | {"key": key}
        placed = probe.place(plan)
        assert placed is not None, "the probe order was never accepted"
        probe.results[plan["key"]] = placed

        def final() -> bool:
            got = http.get(f"/v1/orders/{placed['order_id']}")
            return got.status_code == 200 and got.json()["status"] != "pending"

        wait_until(final, timeout=60, interval=0.1)
        self.flowing = time.monotonic() - self.at
        if sig == signal.SIGSTOP:
            os.kill(node["pid"], signal.SIGCONT)

        def back() -> bool:
            node = nodes(state_dir)[index]
            return node["pid"] is not None and healthy(node)

        wait_until(back, timeout=60, interval=0.1)
        self.back = time.monotonic() - self.at

    def __str__(self) -> str:
        return (
            f"{self.name} ({self.sig}): stream leader ({self.new_leader}) after "
            f"{self.leader:.2f}s, an order through after {self.flowing:.2f}s, node back and "
            f"current after {self.back:.2f}s"
        )


def test_the_shop_rides_over_nats_node_deaths(tmp_path: Path) -> None:
    shop = tmp_path / "shop"
    shutil.copytree(SHOP, shop, ignore=shutil.ignore_patterns(".cleave", "__pycache__"))
    with (shop / "cleave.toml").open("a") as f:
        f.write("\n[nats]\ncluster = 3\n")
    state = tmp_path / "state"
    began = time.monotonic()
    up = Up(shop, state).start()
    up_took = time.monotonic() - began
    try:
        assert len(nodes(state)) == 3
        assert all(n["pid"] for n in nodes(state))
        control = Control(state)
        assert control.nats_url.count(",") == 2  # every node's URL, for every client
        http = Api(base_url=up.url, timeout=30, headers=admin_headers(state))
        initial = snapshot(http)
        work: queue.Queue[dict[str, Any] | None] = queue.Queue()
        results: dict[str, Any] = {}
        clients = [
            Steady(up.url, work, results, admin_headers(state, f"client-{i}"))
            for i in range(CLIENTS)
        ]
        probe = Client(up.url, queue.Queue(), results, admin_headers(state, "probe"))
        feed = Feed(work, random.Random(7))
        started = time.monotonic()
        feed.start()
        for c in clients:
            c.start()
        wait_until(lambda: len(results) >= 10, timeout=60)  # orders flow

        names = [n["name"] for n in nodes(state)]
        first = wait_until(lambda: leader(state), timeout=30)
        follower = next(i for i, name in enumerate(names) if name != first)
        kills = [Kill(state, follower, probe, http)]
        chief = names.index(wait_until(lambda: leader(state), timeout=30))
        kills.append(Kill(state, chief, probe, http))
        # A hung leader (SIGSTOP) is not restarted: the other two must elect a new one.
        hung = names.index(wait_until(lambda: leader(state), timeout=30))
        kills.append(Kill(state, hung, probe, http, signal.SIGSTOP))
        for kill in kills:
            print(f"\n  killed {kill}", end="")

        feed.stop.set()
        feed.join(timeout=10)
        for c in clients:
            c.join(timeout=120)
        traffic = time.monotonic() - started
        for c in clients:
            assert c.error is None, f"a client failed: {c.error!r}"
        assert len(results) == feed.fed + len(kills)
        accepted = {k: r for k, r in results.items() if r is not None}

        def all_final() -> bool:
            orders = snapshot(http)["orders"]
            return bool(orders) and all(o["status"] != "pending" for o in orders)

        settle = time.monotonic()
        wait_until(all_final, timeout=60, interval=0.25)
        settled = time.monotonic() - settle
        try:
            wait_until(lambda: quiet(control), timeout=60, interval=0.5)
        except AssertionError:
            raise AssertionError(f"not quiet: {unquiet(control)}") from None
        now = snapshot(http)
        by_id = {o["order_id"]: o for o in now["orders"]}
        lost = [r["order_id"] for r in accepted.values() if r["order_id"] not in by_id]
        assert not lost, f"orders that got a 2xx are missing: {lost[:5]}"
        assert len(now["orders"]) <= len(results), "more orders than idempotency keys"
        assert len(accepted) == len(results), "an order was never accepted"
        figures = check_invariants(initial, now, http)
        dead = sum(
            c["dead_lettered"]
            for st in control.status().values()
            for c in st.get("consumers", {}).values()
        )
        assert dead == 0, f"{dead} events were dead-lettered"
        print(
            f"\nnats cluster test: orders={len(results)} confirmed={figures['confirmed']} "
            f"cancelled={figures['cancelled']} client_retries={sum(c.retries for c in clients)} "
            f"traffic={traffic:.1f}s settled_after_load={settled:.1f}s"
        )
        print(f"  up {up_took:.1f}s; " + "; ".join(f"killed {k}" for k in kills))
    finally:
        up.stop()
