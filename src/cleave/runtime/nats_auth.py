"""Who may do what on the embedded NATS server: one identity per service group.

``cleave up`` starts its nats-server with authentication on. Each service
group, the gateway and the supervisor's tooling (``admin``) get a NATS user
with a random password, written to ``.cleave/nats-auth/<identity>.json``
(mode 0600, the folder 0700) and read by the worker that runs as it. New
credentials are made on every ``cleave up``: restarting is rotating.

Permissions are deny-by-default and derived from the app's declarations, so
they can never drift from the code:

- requests only to the contracts the group's services ``use``, any major of
  them, so moving a caller to a newer major needs no new rights (the gateway:
  the contracts its routes call);
- serving only its own contracts' subjects, in its own queue group;
- publishing only its own events, and reaching only its own streams, the
  streams it consumes from, and its own durable consumers (the ``$JS.API``
  subjects, see https://docs.nats.io/running-a-nats-service/configuration/
  securing_nats/authorization);
- answering discovery (``$SRV.>``) and the requests it took (``allow_responses``);
- reading replies only under its own inbox prefix, ``_INBOX_<identity>``,
  so no service reads another's replies.

Programs outside the app (``cleave.connect`` on the app's folder) sign in as
``client``: requests to every service, replies under ``_INBOX_client``, and
nothing else (no events, no streams).

Every subject respects ``[nats] prefix`` (:mod:`cleave.transport.prefix`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from cleave.errors import ConfigError
from cleave.runtime.subscriptions import consumer_name
from cleave.transport.prefix import stream_for, subject_for

if TYPE_CHECKING:
    from cleave.app import LoadedApp
    from cleave.contracts import ContractSpec

__all__ = [
    "ADMIN",
    "CLIENT",
    "GATEWAY",
    "Identity",
    "Permissions",
    "auth_dir",
    "client_permissions",
    "credentials_file",
    "gateway_permissions",
    "group_permissions",
    "identity_path",
    "make_identities",
    "private_dir",
    "read_identity",
    "server_authorization",
    "write_private",
]

ADMIN = "admin"
GATEWAY = "gateway"
#: Programs outside the app (``cleave.connect``): they call services, nothing else.
CLIENT = "client"


class Identity(msgspec.Struct, frozen=True, kw_only=True):
    """One NATS user: what a worker needs to connect as its group."""

    name: str
    user: str
    password: str
    inbox_prefix: str

    def __repr__(self) -> str:  # never the password, not even in a traceback
        return f"<nats identity {self.name}>"


class Permissions(msgspec.Struct, frozen=True, kw_only=True):
    """The subjects an identity may publish to and subscribe to (all else is denied)."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    allow_responses: bool = False


def auth_dir(loaded: LoadedApp) -> Path:
    return loaded.state_dir / "nats-auth"


def inbox_prefix(name: str) -> str:
    return f"_INBOX_{name}"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)


def _rpc(prefix: str, contract: ContractSpec) -> str:
    return subject_for(prefix, f"{contract.rpc_prefix}.*")


def _calls(prefix: str, contract: ContractSpec) -> str:
    """Requests to every major of ``contract``'s service: ``cleave.rpc.<service>.*.*``."""
    return subject_for(prefix, f"cleave.rpc.{contract.name}.*.*")


def group_permissions(loaded: LoadedApp, services: tuple[str, ...], name: str) -> Permissions:
    """What service group ``name`` (running ``services``) may do, from their declarations."""
    app, plan = loaded.app, loaded.plan
    pfx = plan.nats.prefix
    publish: set[str] = {"$JS.API.INFO"}
    subscribe: set[str] = {"$SRV.>", f"{inbox_prefix(name)}.>"}
    streams: set[str] = set()
    for service in services:
        spec = app.services[service]
        contract = spec.contract
        for major in spec.contracts:  # every major it serves, side by side
            subscribe.add(f"{_rpc(pfx, major)} {major.name}")  # its own queue group only
        # Every major of a service it uses: moving a caller to v2 is a deploy, not new rights.
        publish.update(_calls(pfx, dep) for dep in spec.dependencies.values())
        if spec.events:
            publish.add(subject_for(pfx, f"cleave.evt.{contract.name}.>"))
            streams.add(stream_for(pfx, contract.stream))
        settings = plan.service(service).subscriptions
        for sub in spec.subscriptions:
            stream = stream_for(pfx, app.event_sources[sub.event].stream)
            streams.add(stream)
            # Its current durable, and the one it may take over (a renamed handler).
            olds = {sub.takeover, settings[sub.name].takeover if sub.name in settings else ""}
            for identity in {sub.name, *olds} - {""}:
                durable = consumer_name(service, identity)
                base = f"$JS.API.CONSUMER.%s.{stream}.{durable}"
                publish.update(base % verb for verb in ("CREATE", "INFO", "DELETE", "MSG.NEXT"))
                publish.update((f"{base % 'CREATE'}.>", base % "DURABLE.CREATE"))
                publish.add(f"$JS.ACK.{stream}.{durable}.>")
    for stream in streams:
        # A consumer makes sure the stream it reads exists (same configuration as its owner's).
        publish.update(f"$JS.API.STREAM.{verb}.{stream}" for verb in ("INFO", "CREATE", "UPDATE"))
    # Names only: a new subscription checks no consumer of the app's streams is left behind.
    for spec in app.services.values():
        if spec.events:
            publish.add(f"$JS.API.CONSUMER.LIST.{stream_for(pfx, spec.contract.stream)}")
    return Permissions(
        publish=tuple(sorted(publish)), subscribe=tuple(sorted(subscribe)), allow_responses=True
    )


def gateway_permissions(loaded: LoadedApp) -> Permissions:
    """The gateway calls the contracts its routes name, and nothing else."""
    gateway = loaded.app.gateway
    pfx = loaded.plan.nats.prefix
    calls = sorted({_calls(pfx, c) for c in gateway.contracts}) if gateway is not None else []
    return Permissions(publish=tuple(calls), subscribe=(f"{inbox_prefix(GATEWAY)}.>",))


def client_permissions(loaded: LoadedApp) -> Permissions:
    """``cleave.connect`` from a script or job: it calls every service, any major; that is all.

    It subscribes only to its own replies: no events, no streams, no serving.
    """
    pfx = loaded.plan.nats.prefix
    calls = sorted({_calls(pfx, spec.contract) for spec in loaded.app.services.values()})
    return Permissions(publish=tuple(calls), subscribe=(f"{inbox_prefix(CLIENT)}.>",))


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to a file only its owner can read (created so, never widened)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    tmp.replace(path)


def private_dir(path: Path) -> Path:
    """``path`` as a folder only its owner can enter."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def make_identities(loaded: LoadedApp) -> dict[str, tuple[Identity, Permissions | None]]:
    """New credentials for every group, the gateway, ``client`` and ``admin``, under ``.cleave``.

    ``client`` is what ``cleave.connect(app_folder)`` signs in as (it may call
    every service, and nothing else); ``admin`` (the supervisor's tooling and
    operators' ``nats`` CLI) has no restriction. Returns them by identity name,
    with their permissions.
    """
    folder = private_dir(auth_dir(loaded))
    wanted: dict[str, Permissions | None] = {
        _safe(group): group_permissions(loaded, services, _safe(group))
        for group, services in loaded.groups().items()
    }
    if GATEWAY in wanted or ADMIN in wanted or CLIENT in wanted:
        raise ConfigError(
            f"cleave.toml [groups]: {GATEWAY!r}, {ADMIN!r} and {CLIENT!r} are reserved for the "
            "NATS identities of the gateway, the tooling and outside programs; name the group "
            "otherwise"
        )
    if loaded.app.gateway is not None:
        wanted[GATEWAY] = gateway_permissions(loaded)
    wanted[CLIENT] = client_permissions(loaded)
    wanted[ADMIN] = None
    made: dict[str, tuple[Identity, Permissions | None]] = {}
    for name, perms in wanted.items():
        identity = Identity(
            name=name,
            user=f"{loaded.app.name}-{name}",
            password=secrets.token_urlsafe(32),
            inbox_prefix=inbox_prefix(name),
        )
        write_private(folder / f"{name}.json", msgspec.json.encode(identity).decode())
        made[name] = (identity, perms)
    return made


def identity_path(loaded: LoadedApp, name: str) -> Path:
    return auth_dir(loaded) / f"{_safe(name)}.json"


def read_identity(path: Path) -> Identity:
    """The credentials in ``path``; ConfigError saying what to do if unreadable."""
    try:
        return msgspec.json.decode(path.read_bytes(), type=Identity)
    except (OSError, msgspec.DecodeError) as exc:
        raise ConfigError(
            f"cannot read the NATS credentials in {path} ({exc}); they are made by `cleave "
            "up` for its workers: start the app with `cleave up`"
        ) from None


def credentials_file(path: str) -> str:
    """``[nats] credentials``, checked: the file exists and nats-py can read it (``nkeys``)."""
    if not Path(path).is_file():
        raise ConfigError(
            f"[nats] credentials = {path!r}: no such file; give the .creds file of this app's "
            "NATS user (from `nsc` or your NATS operator), or set CLEAVE_NATS_CREDENTIALS"
        )
    if importlib.util.find_spec("nkeys") is None:  # nats-py signs the server's nonce with it
        raise ConfigError(
            "[nats] credentials needs the nkeys package to sign in with a .creds file: "
            "pip install nkeys"
        )
    return path


def server_authorization(identities: dict[str, tuple[Identity, Permissions | None]]) -> str:
    """The ``authorization`` block of nats-server.conf for ``identities``.

    JSON is valid nats-server configuration, and ``json.dumps`` quotes every
    subject (``$JS.API.…`` would otherwise read as a variable).
    """
    users: list[dict[str, Any]] = []
    for identity, perms in identities.values():
        user: dict[str, Any] = {"user": identity.user, "password": identity.password}
        if perms is not None:
            user["permissions"] = {
                "publish": {"allow": list(perms.publish)},
                "subscribe": {"allow": list(perms.subscribe)},
            }
            if perms.allow_responses:
                user["permissions"]["allow_responses"] = True
        users.append(user)
    return "authorization: " + json.dumps({"users": users}, indent=2) + "\n"
