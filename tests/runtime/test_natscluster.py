"""The embedded NATS cluster: three real nats-server processes, one killed at a time."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from cleave.errors import ConfigError, Unavailable
from cleave.runtime.natscluster import EmbeddedCluster, NodeSpec
from cleave.transport.base import ConsumerPolicy, Outgoing
from cleave.transport.jetstream import JetStreamBroker
from cleave.transport.nats import connect, servers

pytestmark = pytest.mark.nats

STREAM = "CLEAVE_SHOP"
SUBJECT = "cleave.evt.shop.placed.v1"
POLICY = ConsumerPolicy(ack_wait=2.0, max_deliver=50, backoff=(0.1,))


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[EmbeddedCluster]:
    nodes = EmbeddedCluster(tmp_path / "nats", 3, name="t")
    await nodes.start()
    try:
        yield nodes
    finally:
        await nodes.stop()


async def until(check: Any, timeout: float = 30.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"not within {timeout}s: {what or check}"
        await asyncio.sleep(0.05)
    return value


def out(n: int) -> Outgoing:
    return Outgoing(subject=SUBJECT, data=str(n).encode(), msg_id=f"id-{n}")


async def stream_info(nc: Any, stream: str) -> dict[str, Any]:
    reply = await nc.request(f"$JS.API.STREAM.INFO.{stream}", b"", timeout=5)
    info: dict[str, Any] = json.loads(reply.data)
    return info


def test_a_cluster_needs_three_nodes(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no quorum to survive a node's death: use 3 or more"):
        EmbeddedCluster(tmp_path, 2)
    with pytest.raises(ConfigError, match="3 nodes wanted but 1 node specs given"):
        EmbeddedCluster(tmp_path, 3, nodes=[NodeSpec()])


def test_an_empty_server_list_is_explained() -> None:
    assert servers(" nats://a:1 , nats://b:2,") == ["nats://a:1", "nats://b:2"]
    with pytest.raises(Unavailable, match="no NATS server URL given"):
        servers(" , ")


async def test_nodes_route_to_each_other_and_keep_their_names(tmp_path: Path) -> None:
    cluster = EmbeddedCluster(tmp_path / "nats", 3, name="t")
    await cluster.start()
    try:
        assert len(cluster.urls) == 3
        assert cluster.url == ",".join(cluster.urls)
        assert cluster.meta_leader() in (0, 1, 2)
        conf = (tmp_path / "nats" / "n0" / "nats-server.conf").read_text()
        assert "cluster {" in conf
        assert conf.count("nats-route://route:") == 3
        assert 'http: "127.0.0.1:' in conf
        names = [n["name"] for n in cluster.describe()]
        assert len(set(names)) == 3
    finally:
        await cluster.stop()
    # The same store again: JetStream knows its peers by name, so the names stay.
    again = EmbeddedCluster(tmp_path / "nats", 3, name="t")
    await again.start()
    try:
        assert [n["name"] for n in again.describe()] == names
    finally:
        await again.stop()


async def test_the_stream_leader_dies_and_no_event_is_lost(cluster: EmbeddedCluster) -> None:
    nc = await connect(cluster.url, "cluster-test")
    try:
        broker = JetStreamBroker(nc, replicas=3)
        await broker.ensure_stream(STREAM, ["cleave.evt.shop.>"])
        seen: set[bytes] = set()

        async def handler(delivery: Any) -> None:
            seen.add(delivery.data)
            await delivery.ack()

        sub = await broker.subscribe(STREAM, "c1", SUBJECT, handler, POLICY)
        await broker.publish([out(i) for i in range(10)])
        await until(lambda: len(seen) == 10, what="the first ten events")
        info = await stream_info(nc, STREAM)
        assert info["config"]["num_replicas"] == 3
        assert len(info["cluster"]["replicas"]) == 2

        await until(lambda: cluster.stream_leader(STREAM) is not None, what="a stream leader")
        leader = cluster.stream_leader(STREAM)
        assert leader is not None
        cluster.kill(leader)
        killed = time.monotonic()
        await until(lambda: cluster.stream_leader(STREAM) is not None, what="a new leader")
        elected = time.monotonic() - killed
        assert cluster.stream_leader(STREAM) not in (leader, None)

        async def publish_rest() -> bool:
            try:
                await broker.publish([out(i) for i in range(10, 20)])
                return True
            except Unavailable:
                return False

        deadline = time.monotonic() + 30
        while not await publish_rest():
            assert time.monotonic() < deadline, "no publish succeeded after the election"
        await until(lambda: len(seen) == 20, what="the events published after the kill")
        flowing = time.monotonic() - killed
        assert seen == {str(i).encode() for i in range(20)}

        await cluster.restart(leader)
        assert cluster.healthy()
        print(
            f"\ncluster: new stream leader {elected:.2f}s after the kill, events flowing "
            f"again after {flowing:.2f}s"
        )
        await sub.stop()
    finally:
        await nc.close()


async def test_a_stream_with_other_replicas_is_updated(cluster: EmbeddedCluster) -> None:
    nc = await connect(cluster.url, "cluster-test")
    try:
        await JetStreamBroker(nc, replicas=1).ensure_stream(STREAM, ["cleave.evt.shop.>"])
        assert (await stream_info(nc, STREAM))["config"]["num_replicas"] == 1
        await JetStreamBroker(nc, replicas=3).ensure_stream(STREAM, ["cleave.evt.shop.>"])
        assert (await stream_info(nc, STREAM))["config"]["num_replicas"] == 3
        with pytest.raises(ConfigError, match="cannot keep stream CLEAVE_OTHER on 5 nodes"):
            await JetStreamBroker(nc, replicas=5).ensure_stream("CLEAVE_OTHER", ["x.>"])
    finally:
        await nc.close()


async def test_replicas_on_a_lone_server_are_a_config_error(nats_url: str) -> None:
    nc = await connect(nats_url, "cluster-test")
    try:
        broker = JetStreamBroker(nc, prefix=f"t{os.urandom(4).hex()}", replicas=3)
        with pytest.raises(ConfigError, match=r"on 3 nodes \(replicas > 1 not supported"):
            await broker.ensure_stream(STREAM, ["cleave.evt.shop.>"])
    finally:
        await nc.close()


async def test_a_tls_cluster_routes_over_tls(tmp_path: Path) -> None:
    import ssl

    from cleave.runtime.nats_tls import make_certificates, route_block, server_block

    folder = make_certificates(tmp_path / "tls")
    cluster = EmbeddedCluster(
        tmp_path / "nats", 3, name="t", tls=server_block(folder), route_tls=route_block(folder)
    )
    await cluster.start()  # healthy: the nodes found each other, over TLS
    try:
        assert all(u.startswith("tls://127.0.0.1:") for u in cluster.urls)
        conf = (tmp_path / "nats" / "n1" / "nats-server.conf").read_text()
        assert conf.count("ca_file") == 1  # in the cluster block: nodes verify each other
        context = ssl.create_default_context(cafile=str(folder / "ca.pem"))
        nc = await connect(cluster.url, "tls-test", tls=context)
        try:
            await JetStreamBroker(nc, replicas=3).ensure_stream(STREAM, ["cleave.evt.shop.>"])
            assert (await stream_info(nc, STREAM))["config"]["num_replicas"] == 3
        finally:
            await nc.close()
    finally:
        await cluster.stop()


async def test_a_lost_acknowledgement_fails_the_publish_in_time(
    nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ack lost with a dying leader must not hang the outbox: the publish fails, is resent."""
    import cleave.transport.jetstream as jetstream

    monkeypatch.setattr(jetstream, "ACK_TIMEOUT", 0.5)
    nc = await connect(nats_url, "cluster-test")
    try:
        # A plain subscriber takes the message and never answers, as a dead leader would not.
        swallowed = await nc.subscribe("cleave.evt.nostream.>")
        broker = JetStreamBroker(nc)
        started = time.monotonic()
        with pytest.raises(Unavailable, match=r"did not acknowledge 1 event\(s\) within 0.5s"):
            await broker.publish([Outgoing("cleave.evt.nostream.x.v1", b"1", "id-1")])
        assert time.monotonic() - started < 5
        await swallowed.unsubscribe()
    finally:
        await nc.close()


@pytest.mark.processes
def test_cleave_up_runs_the_app_on_a_tls_cluster_and_restarts_a_dead_node(
    tmp_path: Path,
) -> None:
    """`[nats] cluster = 3` under `cleave up`: every node has the users and TLS; one dies."""
    import shutil
    import signal

    import httpx

    from conftest import SAMPLE, Up, processes_of, wait_until

    app = tmp_path / "app"
    shutil.copytree(SAMPLE, app, ignore=shutil.ignore_patterns(".cleave", "__pycache__"))
    with (app / "cleave.toml").open("a") as f:
        f.write("\n[nats]\ncluster = 3\ntls = true\n")
    state = tmp_path / "state"
    up = Up(app, state).start()
    try:

        def nodes() -> list[dict[str, Any]]:
            found: list[dict[str, Any]] = json.loads(
                (state / "run" / "supervisor.json").read_text()
            )["nats_nodes"]
            return found

        assert len(nodes()) == 3
        for i in range(3):
            conf = (state / "nats-cluster" / f"n{i}" / "nats-server.conf").read_text()
            assert "authorization" in conf  # the service groups' users, on every node
            assert conf.count("server.pem") == 2  # clients and routes over TLS
        assert all(n["url"].startswith("tls://127.0.0.1:") for n in nodes())
        assert httpx.post(f"{up.url}/greet", json={"name": "ann"}).status_code == 201

        dead = nodes()[0]
        os.kill(dead["pid"], signal.SIGKILL)

        def back() -> bool:
            if nodes()[0]["pid"] in (None, dead["pid"]):
                return False
            try:
                return httpx.get(f"{dead['monitor_url']}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(back, timeout=60, interval=0.1)
        assert nodes()[0]["url"] == dead["url"]  # on the same port: clients know it
        assert httpx.post(f"{up.url}/greet", json={"name": "bo"}).status_code == 201
        log = (state / "run" / "supervisor.log").read_text()
        assert "nats node 0" in log
        assert "restarting" in log
    finally:
        up.stop()
    assert processes_of(state) == []
