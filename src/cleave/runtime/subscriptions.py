"""How a service's event subscriptions start, and what happens when one was renamed.

A subscription's identity is ``@cleave.subscribe(E, name=...)``, by default
its handler's name with ``_`` as ``-``. Its durable consumer, and the key of
the events it handled in the service's inbox, is ``<service>-<identity>``
(:func:`consumer_name`).

Renaming a handler without a declared name changes the identity: a new
consumer would receive every event the stream keeps (a week, on JetStream)
and an inbox that knows none of them under the new name would apply them
all again. So before a service subscribes, :func:`plan_subscriptions` looks
at what the broker and the service's inbox keep:

- A subscription whose consumer exists (on the broker, or as inbox rows)
  continues where it is.
- A new one starts from the first event the stream keeps, never from "new
  events only": an event published a moment before it was created is
  delivered too.
- A new one while an old identity of the same service still exists that no
  subscription claims (a durable consumer of the same events, or inbox rows;
  the in-memory broker of the monolith keeps no consumer across restarts, so
  there the inbox is what remains) is most likely a rename, and the service
  refuses to start until the author chooses, in code or in cleave.toml
  (``[services.<service>.subscriptions.<identity>]``, which wins):

  - ``takeover="<old>"``: the old identity's inbox rows move to the new one,
    the new consumer starts at the old one's ack floor and the old consumer
    is deleted. Events handled but not yet acknowledged come again, and the
    inbox skips them.
  - ``replay=True``: the new consumer starts from the first event the stream
    keeps; the old consumer and its inbox rows are deleted.

Each step can be repeated: a start interrupted half way through a takeover
finishes it the next time (as long as the code or config still says so).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from cleave.data.inbox import forget_inbox, inbox_consumers, rename_inbox
from cleave.errors import ConfigError, DefinitionError

if TYPE_CHECKING:
    from cleave.app import App
    from cleave.config import Plan
    from cleave.data.database import Database
    from cleave.service import ServiceSpec, Subscription
    from cleave.transport.base import Broker, ConsumerState

__all__ = ["SubscriptionStart", "consumer_name", "plan_subscriptions"]

log = structlog.get_logger("cleave.subscriptions")


def consumer_name(service: str, identity: str) -> str:
    """The durable consumer, and inbox key, of subscription ``identity`` of ``service``."""
    return f"{service.replace('_', '-')}-{identity}"


class SubscriptionStart:
    """How one subscription starts: where its consumer begins, what it inherits."""

    def __init__(
        self,
        service: str,
        sub: Subscription,
        stream: str,
        subject: str,
        *,
        start: int = 0,
        adopt: str = "",
        forget: tuple[str, ...] = (),
        retire: tuple[str, ...] = (),
    ) -> None:
        self.service = service
        self.sub = sub
        self.durable = consumer_name(service, sub.name)
        self.stream = stream
        self.subject = subject
        #: The first stream sequence of a consumer created now (0: all the stream keeps).
        self.start = start
        #: An old consumer whose inbox rows become this one's.
        self.adopt = adopt
        #: Old consumers whose inbox rows are deleted (their events come again).
        self.forget = forget
        #: Old durable consumers deleted once this one is subscribed.
        self.retire = retire

    async def prepare(self, db: Database) -> None:
        """Before subscribing: move or forget the old identities' inbox rows."""
        if self.adopt:
            log.warning(
                "subscription takes over a renamed consumer",
                service=self.service,
                consumer=self.durable,
                old=self.adopt,
                start=self.start or "where it is",
            )
            await rename_inbox(db, self.adopt, self.durable)
        for old in self.forget:
            log.warning(
                "subscription replays what the stream keeps; forgetting the old consumer",
                service=self.service,
                consumer=self.durable,
                old=old,
            )
            await forget_inbox(db, old)

    async def finish(self, broker: Broker) -> None:
        """Once subscribed: delete the old durable consumers."""
        for old in self.retire:
            await broker.delete_consumer(self.stream, old)

    def __repr__(self) -> str:
        return f"<start {self.durable} at {self.start or 'first'}>"


async def plan_subscriptions(
    app: App, service: str, plan: Plan, broker: Broker, db: Database
) -> list[SubscriptionStart]:
    """How each subscription of ``service`` starts; DefinitionError if one was renamed unsaid.

    The streams must exist (``broker.ensure_stream``). Nothing is changed
    here: :meth:`SubscriptionStart.prepare` and ``finish`` do that.
    """
    spec = app.services[service]
    choices = _choices(spec, plan)
    claimed = {
        consumer_name(other.name, sub.name)
        for other in app.services.values()
        for sub in other.subscriptions
    }
    claimed |= {consumer_name(service, old) for old, _ in choices.values() if old}
    on_broker: dict[str, dict[str, ConsumerState]] = {}
    for sub in spec.subscriptions:
        stream = app.event_sources[sub.event].stream
        if stream not in on_broker:
            on_broker[stream] = {c.name: c for c in await broker.consumers(stream)}
    rows = await inbox_consumers(db)
    prefix = consumer_name(service, "")
    elsewhere: set[str] | None = None  # every consumer on the app's streams, when needed
    starts: list[SubscriptionStart] = []
    questions: list[str] = []
    for sub in spec.subscriptions:
        source = app.event_sources[sub.event]
        stream, subject = source.stream, source.event_subject(sub.event)
        consumers = on_broker[stream]
        durable = consumer_name(service, sub.name)
        takeover, replay = choices[sub.name]
        if takeover:
            old = consumer_name(service, takeover)
            state = consumers.get(old)
            if state is not None and state.subject != subject:
                raise DefinitionError(
                    f"service {service}: subscription {sub.name!r} ({sub.event.__name__}) cannot "
                    f"take over {takeover!r}, which consumes {state.subject}, not {subject}; "
                    "name the identity its handler had before the rename"
                )
            if state is not None or old in rows:
                # Where the old consumer's ack floor is, unless ours exists already.
                begin = state.acked + 1 if state is not None and durable not in consumers else 0
                starts.append(
                    SubscriptionStart(
                        service,
                        sub,
                        stream,
                        subject,
                        start=begin,
                        adopt=old if old in rows else "",
                        retire=(old,) if state is not None else (),
                    )
                )
                continue
        orphans: list[str] = []
        new = durable not in consumers and durable not in rows
        if new:
            orphans = sorted(
                n
                for n, c in consumers.items()
                if c.subject == subject and n.startswith(prefix) and n not in claimed
            )
            leftover = {n for n in rows if n.startswith(prefix) and n not in claimed} - set(orphans)
            if leftover:
                # Inbox rows of a consumer the broker keeps for other events are not ours.
                if elsewhere is None:
                    elsewhere = await _all_consumers(app, broker)
                orphans += sorted(leftover - elsewhere)
        if not orphans:
            if takeover and new:
                log.info(
                    "nothing to take over; the subscription starts from the first event kept",
                    service=service,
                    consumer=durable,
                    takeover=takeover,
                )
            starts.append(SubscriptionStart(service, sub, stream, subject))
        elif takeover:
            questions.append(
                f"subscription {sub.name!r} ({spec.cls.__qualname__}.{sub.attr}) takes over "
                f"{takeover!r}, which has no consumer and no inbox rows; the identities left "
                f"over are {', '.join(repr(n[len(prefix) :]) for n in orphans)}: take over one "
                "of them (or say replay=True)"
            )
        elif replay:
            starts.append(
                SubscriptionStart(
                    service,
                    sub,
                    stream,
                    subject,
                    forget=tuple(n for n in orphans if n in rows),
                    retire=tuple(n for n in orphans if n in consumers),
                )
            )
        else:
            questions.append(_question(spec, sub, [n[len(prefix) :] for n in orphans]))
    if questions:
        raise DefinitionError(f"service {service} cannot start: " + "\n".join(questions))
    return starts


def _choices(spec: ServiceSpec, plan: Plan) -> dict[str, tuple[str, bool]]:
    """``(takeover, replay)`` per subscription identity: cleave.toml's, else the code's."""
    names = {sub.name: sub for sub in spec.subscriptions}
    settings = plan.service(spec.name).subscriptions
    where = f"cleave.toml [services.{spec.name}.subscriptions"
    for key in settings:
        if key not in names:
            known = ", ".join(sorted(names)) or "none"
            raise ConfigError(
                f"{where}.{key}]: service {spec.name} has no subscription {key!r} (its "
                f"subscriptions: {known}); the key is a subscription's identity, its name=, "
                "by default the handler's name with '-' for '_'"
            )
    choices: dict[str, tuple[str, bool]] = {}
    taken: dict[str, str] = {}
    for name, sub in names.items():
        own = settings.get(name)
        choice = (own.takeover, own.replay) if own and (own.takeover or own.replay) else None
        if choice is not None and choice[0] in names:
            raise ConfigError(
                f"{where}.{name}] takeover = {choice[0]!r}: that is a current subscription of "
                f"{spec.name}; takeover names an identity no handler has any more"
            )
        choices[name] = choice or (sub.takeover, sub.replay)
        old = choices[name][0]
        if old and old in taken:
            raise ConfigError(
                f"{where}]: {name!r} and {taken[old]!r} both take over {old!r}; only one "
                "subscription can continue from it"
            )
        if old:
            taken[old] = name
    return choices


async def _all_consumers(app: App, broker: Broker) -> set[str]:
    names: set[str] = set()
    for spec in app.services.values():
        if spec.events:
            names |= {c.name for c in await broker.consumers(spec.contract.stream)}
    return names


def _question(spec: ServiceSpec, sub: Subscription, old: list[str]) -> str:
    event = sub.event.__name__
    section = f"[services.{spec.name}.subscriptions.{sub.name}]"
    which = f"{old[0]!r}" if len(old) == 1 else "one of " + ", ".join(repr(o) for o in old)
    takeover = old[0] if len(old) == 1 else "<old name>"
    return (
        f"subscription {sub.name!r} ({spec.cls.__qualname__}.{sub.attr}, {event}) is new, but "
        f"the consumer {which} of this service still exists (a durable consumer of the same "
        "events, or events recorded in its inbox) and no subscription claims it: was the "
        "handler renamed? Say which of two things to do, then start again:\n"
        f"  - continue where {takeover!r} stopped (events it handled are not applied again): "
        f'@cleave.subscribe({event}, name="{sub.name}", takeover="{takeover}"), or in '
        f'cleave.toml {section} takeover = "{takeover}"\n'
        "  - handle again every event the stream still keeps: "
        f'@cleave.subscribe({event}, name="{sub.name}", replay=True), or in cleave.toml '
        f"{section} replay = true"
    )
