"""The shop spread over "hosts" (network namespaces on a bridge), under network partitions.

Each host is a network namespace with its own address on a bridge the test
makes (tests/system/netns.py): three nats-server nodes forming one JetStream
cluster (every stream on all three), a PostgreSQL server holding every
service's database, the gateway (`cleave gateway`), and the shop's two
service groups (`cleave serve`): checkout (orders, billing) twice, on two
hosts, and warehouse (catalog, inventory, shipping, notifications). They are
configured as a real multi-host deployment is, by configuration only:
``CLEAVE_NATS_URL`` lists the three nodes, ``CLEAVE_DATABASE_URL`` points at
the PostgreSQL host (docs/deploy.md, "Multi-host").

Under steady orders from the root namespace (retrying clients, one
Idempotency-Key per order, tests/system/shopcheck.py):

1. one checkout host's link goes down for longer than a call's timeout, then
   comes back;
2. the link of the NATS node that leads the most event streams goes down for
   as long, then comes back; the processes that were connected to it must
   have moved to the other nodes before the link comes back.

After each heal the time until the shop converges (every order accepted so
far is confirmed or cancelled, new orders are accepted, a healed NATS node
has caught up on every stream) is measured and printed. At the end, once
every outbox, saga and consumer is idle: no accepted order lost, none placed
twice, money and stock exact, one shipment per confirmed order, nothing
dead-lettered.

Needs root, iproute2 and PostgreSQL's server binaries; skipped otherwise.
"""

from __future__ import annotations

import queue
import random
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from netns import Host, NetnsUnavailable, Network, check_available, sweep, wait_for
from servers import connections, current, nats_cluster, postgres, streams
from shopcheck import (
    RICH,
    Api,
    Client,
    admin_headers,
    all_orders,
    check_invariants,
    plans,
    snapshot,
)

from conftest import SHOP

pytestmark = [pytest.mark.slow, pytest.mark.processes, pytest.mark.netns, pytest.mark.timeout(600)]

#: Longer than a remote call's timeout ([runtime] timeout, 10 s in the shop).
CUT = 12.0
CLIENTS = 6
GROUPS = {
    "checkout": ["orders", "billing"],
    "warehouse": ["catalog", "inventory", "shipping", "notifications"],
}


ADMIN_PORT = 9000


@dataclass
class Shop:
    """The shop deployed over the namespaces."""

    net: Network
    app: Path
    url: str
    gateway_state: Path
    nats: list[Host]
    #: Service hosts by name, and every process's admin URL and log.
    workers: dict[str, Host] = field(default_factory=dict)
    admin: dict[str, str] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)

    def tail(self) -> str:
        return "\n".join(
            f"--- {name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-15:])
            for name, path in self.logs.items()
            if path.exists()
        )

    def ready(self) -> bool:
        return all(
            httpx.get(f"{url}/readyz", timeout=2).status_code == 200 for url in self.admin.values()
        )

    def status(self) -> dict[str, Any]:
        """Each service process's /status (outboxes, sagas, consumers)."""
        return {
            name: httpx.get(f"{url}/status", timeout=10).json()
            for name, url in self.admin.items()
            if name != "gateway"
        }

    def busy(self) -> list[str]:
        """What is still under way: outbox backlogs, running sagas, consumers behind."""
        found = []
        for name, st in self.status().items():
            found += [f"{name} outbox {k}={v}" for k, v in st["outbox"].items() if v]
            found += [f"{name} sagas {k}={v}" for k, v in st["sagas"].items() if v]
            found += [
                f"{name} consumer {k} pending={c['pending']}"
                for k, c in st["consumers"].items()
                if c["pending"]
            ]
        return found


def _copy_shop(target: Path) -> Path:
    """The shop with three service groups, its streams kept on every NATS node."""
    app = target / "shop"
    shutil.copytree(SHOP, app, ignore=shutil.ignore_patterns(".cleave", "__pycache__"))
    plan = app / "cleave.toml"
    groups = "".join(f"{g} = {members!r}\n".replace("'", '"') for g, members in GROUPS.items())
    # The URL from the environment in the plan too: stream_replicas above 1 needs a NATS
    # cluster, and the plan knows it is external only by its url.
    nats = '[nats]\nurl = "${CLEAVE_NATS_URL}"\nstream_replicas = 3\n'
    plan.write_text(plan.read_text() + "\n[groups]\n" + groups + "\n" + nats)
    return app


def _start(shop: Shop, host: Host, command: list[str], env: dict[str, str], state: Path) -> None:
    """`cleave COMMAND` in ``host``, its admin port on the host's address."""
    argv = [sys.executable, "-m", "cleave.cli", *command, str(shop.app), "--state-dir", str(state)]
    argv += ["--admin-host", host.address, "--admin-port", str(ADMIN_PORT)]
    log = shop.net.folder(f"log-{host.name}") / "out.log"
    shop.logs[host.name] = log
    shop.admin[host.name] = f"http://{host.address}:{ADMIN_PORT}"
    shop.net.spawn(host, argv, log=log, env=env)


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[Shop]:
    try:
        check_available()
    except NetnsUnavailable as exc:
        pytest.skip(str(exc))
    if shutil.which("setpriv") is None or not list(Path("/usr/lib/postgresql").glob("*/bin")):
        pytest.skip("PostgreSQL's server binaries (/usr/lib/postgresql/*/bin) are not installed")
    sweep()
    began = time.monotonic()
    net = Network().open()
    try:
        nats = [net.host(f"nats{i}") for i in (1, 2, 3)]
        db = net.host("db")
        gateway = net.host("gateway")
        urls = nats_cluster(net, nats, tmp_path / "nats")
        pg = postgres(net, db)
        # A multi-host deployment differs from `cleave up` by these two settings only.
        env = {
            "CLEAVE_NATS_URL": ",".join(urls),
            "CLEAVE_DATABASE_URL": f"postgresql+asyncpg://postgres@{pg}/shop_{{service}}",
        }
        app = _copy_shop(net.folder("app"))
        state = net.folder("state")
        shop = Shop(net, app, f"http://{gateway.address}:8000", state / "gateway", nats)
        placement = [
            ("warehouse", "warehouse", 0),
            ("checkout-a", "checkout", 0),
            ("checkout-b", "checkout", 1),
        ]
        for name, group, replica in placement:
            host = shop.workers[name] = net.host(name)
            serve = ["serve", "--group", group, "--replica", str(replica), "--grace", "5s"]
            _start(shop, host, serve, env, state / name)
        gw = ["gateway", "--host", gateway.address, "--port", "8000", "--grace", "5s"]
        _start(shop, gateway, gw, env, shop.gateway_state)
        try:
            wait_for(
                shop.ready, timeout=120, what="every group and the gateway ready", interval=0.25
            )
        except AssertionError:
            raise AssertionError(shop.tail()) from None
        print(f"\ndeployed over {len(net.hosts)} namespaces in {time.monotonic() - began:.1f}s")
        yield shop
    finally:
        net.close()


def _final(http: httpx.Client, order_ids: list[str]) -> bool:
    """Every one of ``order_ids`` is stored, and confirmed or cancelled."""
    status = {
        o["order_id"]: o["status"]
        for account in [*RICH, "acc-poor"]
        for o in all_orders(http, account)
    }
    return all(status.get(i) in ("confirmed", "cancelled") for i in order_ids)


def test_partitions_lose_nothing(shop: Shop) -> None:
    rng = random.Random()
    headers = admin_headers(shop.gateway_state)
    http = Api(base_url=shop.url, timeout=30, headers=headers)
    initial = snapshot(http)
    work: queue.Queue[dict[str, Any]] = queue.Queue()
    for plan in plans(rng, 5000):
        work.put(plan)
    results: dict[str, Any] = {}
    clients = [
        Client(shop.url, work, results, admin_headers(shop.gateway_state, f"client-{i}"))
        for i in range(CLIENTS)
    ]
    for c in clients:
        c.start()
    converged: dict[str, float] = {}

    def accepted_ids() -> list[str]:
        return [r["order_id"] for r in list(results.values()) if r is not None]

    def partition(what: str, host: Host) -> None:
        start = len(accepted_ids())
        wait_for(
            lambda: len(accepted_ids()) >= start + 10, timeout=60, what=f"orders before {what}"
        )
        others = [h for h in shop.nats if h is not host]
        everyone = {n for h in shop.nats for n in connections(h)}
        stranded = sorted(set(connections(host)) if host in shop.nats else ())
        shop.net.cut(host)
        cut = time.monotonic()
        at_cut = len(accepted_ids())
        if stranded:
            # Its clients notice the silence by pings and move to the other nodes.
            moved = wait_for(
                lambda: {n for h in others for n in connections(h)} >= everyone,
                timeout=CUT,
                what=f"{', '.join(stranded)} on {host.name}: moved to another node",
            )
            print(f"\n{', '.join(stranded)} left cut-off {host.name} in {moved:.1f}s")
        time.sleep(max(0.0, cut + CUT - time.monotonic()))  # the partition itself
        shop.net.heal(host)
        healed = time.monotonic()
        before = accepted_ids()
        wait_for(lambda: _final(http, before), timeout=120, what=f"orders final after {what}")
        count = len(accepted_ids())
        wait_for(
            lambda: len(accepted_ids()) >= count + 5, timeout=60, what=f"new orders after {what}"
        )
        if host in shop.nats:
            wait_for(lambda: current(shop.nats, host.name), timeout=60, what=f"{host.name} current")
        converged[what] = time.monotonic() - healed
        print(
            f"{what}: {len(before) - at_cut} orders accepted during the {CUT:.0f}s cut; "
            f"converged {converged[what]:.1f}s after the heal"
        )

    try:
        partition("checkout-a cut", shop.workers["checkout-a"])
        views = streams(shop.nats)
        assert views, "no streams"
        for name, view in views.items():
            assert len(view.get("replicas", [])) == 2, f"{name} is not on 3 nodes: {view}"
        leaders = [view["leader"] for view in views.values()]
        # The node leading the most streams; of equals, the one most processes are on.
        node = {h.name: h for h in shop.nats}
        busiest = max(set(leaders), key=lambda n: (leaders.count(n), len(connections(node[n]))))
        print(f"\nstream leaders: { {n: v['leader'] for n, v in views.items()} }")
        partition(f"nats leader {busiest} cut", node[busiest])
    finally:
        while not work.empty():  # the clients finish the order in hand, then stop
            try:
                work.get_nowait()
            except queue.Empty:
                break
        for c in clients:
            c.join(timeout=120)
    for c in clients:
        assert c.error is None, f"a client failed: {c.error!r}"

    accepted = accepted_ids()
    load_ended = time.monotonic()
    wait_for(lambda: _final(http, accepted), timeout=120, what="every order final")
    try:
        wait_for(lambda: not shop.busy(), timeout=90, what="all drained", interval=0.5)
    except AssertionError:
        raise AssertionError(f"still busy: {shop.busy()}\n{shop.tail()}") from None
    now = snapshot(http)
    by_id = {o["order_id"]: o for o in now["orders"]}
    lost = [o for o in accepted if o not in by_id]
    assert not lost, f"orders that got a 2xx are missing: {lost[:5]}"
    assert len(now["orders"]) <= len(results), "more orders than idempotency keys"
    settled = time.monotonic() - load_ended
    figures = check_invariants(initial, now, http)
    dead = sum(
        c["dead_lettered"] for st in shop.status().values() for c in st["consumers"].values()
    )
    assert dead == 0, f"{dead} events were dead-lettered"
    print(
        f"\nmultihost: orders={len(results)} accepted={len(accepted)} "
        f"confirmed={figures['confirmed']} cancelled={figures['cancelled']} "
        f"client_retries={sum(c.retries for c in clients)} settled={settled:.1f}s "
        + " ".join(f"converged[{k}]={v:.1f}s" for k, v in converged.items())
    )
