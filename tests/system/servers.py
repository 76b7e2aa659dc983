"""Servers for the multi-host test, each started inside a namespace of a :class:`Network`.

- :func:`nats_cluster`: a JetStream cluster, one nats-server per host, routes
  between their addresses, monitoring on port 8222;
- :func:`postgres`: a private PostgreSQL instance (initdb into a folder the
  ``postgres`` OS user owns, since the server refuses to run as root),
  listening on its host's address with trust auth for the test's subnet.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from glob import glob
from pathlib import Path
from typing import Any

from netns import Host, Network, wait_for

NATS_PORT = 4222
NATS_ROUTE_PORT = 6222
NATS_HTTP_PORT = 8222
PG_PORT = 5432


def nats_cluster(net: Network, hosts: list[Host], store: Path) -> list[str]:
    """Start one JetStream node per host, clustered; returns the client URLs once all agree."""
    from cleave.runtime.natsd import find_binary

    binary = find_binary()
    for host in hosts:
        folder = store / host.name
        folder.mkdir(parents=True)
        routes = ", ".join(
            f'"nats://{h.address}:{NATS_ROUTE_PORT}"' for h in hosts if h is not host
        )
        conf = folder / "nats-server.conf"
        conf.write_text(
            f'server_name: "{host.name}"\n'
            f'listen: "{host.address}:{NATS_PORT}"\n'
            f'http: "{host.address}:{NATS_HTTP_PORT}"\n'
            "max_payload: 8MB\n"
            f'jetstream {{\n  store_dir: "{folder}"\n  sync_interval: "always"\n}}\n'
            f'cluster {{\n  name: "{net.tag}"\n'
            f'  listen: "{host.address}:{NATS_ROUTE_PORT}"\n  routes: [{routes}]\n}}\n'
        )
        net.spawn(host, [binary, "-c", str(conf)], log=folder / "nats-server.log")
    for host in hosts:
        wait_for(
            lambda h=host: (
                jsz(h).get("meta_cluster", {}).get("leader")
                and jsz(h)["meta_cluster"].get("cluster_size") == len(hosts)
            ),
            timeout=60,
            what=f"nats node {host.name} in a cluster of {len(hosts)} with a meta leader",
        )
    return [f"nats://{h.address}:{NATS_PORT}" for h in hosts]


def jsz(host: Host, query: str = "") -> dict[str, Any]:
    """The node's JetStream monitoring report (``/jsz``)."""
    url = f"http://{host.address}:{NATS_HTTP_PORT}/jsz{query}"
    with urllib.request.urlopen(url, timeout=2) as resp:
        report: dict[str, Any] = json.load(resp)
    return report


def connections(host: Host) -> list[str]:
    """The names of the client connections on ``host``'s node (``/connz``)."""
    url = f"http://{host.address}:{NATS_HTTP_PORT}/connz?limit=1000"
    with urllib.request.urlopen(url, timeout=2) as resp:
        report: dict[str, Any] = json.load(resp)
    return sorted(c.get("name", "") for c in report.get("connections", []))


def streams(hosts: list[Host]) -> dict[str, dict[str, Any]]:
    """Every stream's cluster view (``leader``, ``replicas``) from the node that leads it."""
    found: dict[str, dict[str, Any]] = {}
    for host in hosts:
        report = jsz(host, "?accounts=true&streams=true")
        for account in report.get("account_details", []):
            for s in account.get("stream_detail", []):
                cluster = s.get("cluster", {})
                if cluster.get("leader") == host.name:
                    found[s["name"]] = cluster
    return found


def current(hosts: list[Host], name: str) -> bool:
    """Whether node ``name`` has caught up on every stream it holds (as their leaders see it)."""
    views = streams(hosts)
    return bool(views) and all(
        r.get("current", False)
        for view in views.values()
        for r in view.get("replicas", [])
        if r["name"] == name
    )


def _pg_bin(name: str) -> str:
    found = sorted(glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise FileNotFoundError(f"no {name} under /usr/lib/postgresql/*/bin")
    return found[-1]


def postgres(net: Network, host: Host) -> str:
    """Start PostgreSQL in ``host``; returns its ``address:port`` once it serves."""
    folder = net.folder("pg")
    shutil.chown(folder, "postgres", "postgres")
    data = folder / "data"
    subprocess.run(
        [
            "setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups",
            _pg_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
            "-E", "UTF8", "--no-sync", "--no-instructions",
        ],
        check=True,
        capture_output=True,
        timeout=120,
        cwd=folder,
    )  # fmt: skip
    with open(data / "pg_hba.conf", "a") as hba:
        hba.write(f"host all all {net.net} trust\n")
    net.spawn(
        host,
        [
            _pg_bin("postgres"), "-D", str(data),
            "-c", f"listen_addresses={host.address}", "-c", f"port={PG_PORT}",
            "-c", f"unix_socket_directories={folder}", "-c", "max_connections=300",
            # No power cut here: the test is about the network.
            "-c", "fsync=off", "-c", "full_page_writes=off",
        ],
        log=folder / "postgres.log",
        user="postgres",
        env={"HOME": str(folder)},
    )  # fmt: skip
    isready = _pg_bin("pg_isready")
    wait_for(
        lambda: (
            subprocess.run(
                [isready, "-q", "-h", host.address, "-p", str(PG_PORT), "-U", "postgres"],
                timeout=5,
                cwd=folder,
            ).returncode
            == 0
        ),
        timeout=60,
        what=f"PostgreSQL on {host.address}",
        interval=0.25,
    )
    return f"{host.address}:{PG_PORT}"
