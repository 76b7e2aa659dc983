"""Durable events over NATS JetStream.

One stream per producing service (``CLEAVE_<SERVICE>``, subjects
``cleave.evt.<service>.>``), file storage, a two-minute duplicate window on
``Nats-Msg-Id``. One durable pull consumer per (consuming service, handler),
shared by that service's replicas: explicit ack, redelivery after
``ack_wait`` or after the delay of a ``nak``. After ``max_deliver`` attempts
the consumer keeps the message as a dead letter in its own database and
terminates it. Streams keep events for ``max_age`` (``[events]
retention_days`` in cleave.toml, a week by default).

The embedded server runs with ``sync_interval: always``: a publish is
acknowledged only once it is on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import nats.errors
import nats.js.errors
import structlog
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from cleave.errors import DefinitionError, Unavailable
from cleave.transport.base import ConsumerPolicy, ConsumerState, Outgoing
from cleave.transport.prefix import DEFAULT, canonical_subject, stream_for, subject_for
from cleave.transport.refusals import refusals_of, release

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient
    from nats.aio.msg import Msg

    from cleave.types import BatchHandler, DeliveryHandler, Headers, Subject

__all__ = ["JetStreamBroker"]

log = structlog.get_logger("cleave.jetstream")

#: Messages in one atomic batch (the server's limit is 1,000).
ATOMIC_MAX = 500
_WEEK = 7 * 24 * 3600.0


class _JsDelivery:
    __slots__ = ("_msg", "_settled", "attempt", "msg_id")

    def __init__(self, msg: Msg) -> None:
        self._msg = msg
        self._settled = False
        headers = msg.headers or {}
        # The event's own id wins: a copy re-published under another Nats-Msg-Id
        # (to get past the broker's duplicate window) is still the same event.
        self.msg_id = (
            headers.get("Cleave-Event-Id")
            or headers.get("Nats-Msg-Id")
            or f"seq-{msg.metadata.sequence.stream}"
        )
        self.attempt = _delivered(msg)

    @property
    def subject(self) -> str:
        return self._msg.subject

    @property
    def data(self) -> bytes:
        return self._msg.data

    @property
    def headers(self) -> Headers:
        return self._msg.headers or {}

    async def ack(self) -> None:
        if not self._settled:
            self._settled = True
            await self._msg.ack()

    async def nak(self, delay: float) -> None:
        if not self._settled:
            self._settled = True
            await self._msg.nak(delay=delay)

    async def term(self) -> None:
        if not self._settled:
            self._settled = True
            await self._msg.term()


def _delivered(msg: Msg) -> int:
    """How many times the message was delivered, read straight off its ack subject.

    ``$JS.ACK.<stream>.<consumer>.<delivered>.…`` (9 tokens) or, with a domain and
    account, ``$JS.ACK.<domain>.<account>.<stream>.<consumer>.<delivered>.…``;
    cheaper than building nats-py's Metadata for every delivery.
    """
    tokens = (msg.reply or "").split(".")
    try:
        return int(tokens[4] if len(tokens) == 9 else tokens[6])
    except (IndexError, ValueError):
        return msg.metadata.num_delivered


class _PullSubscription:
    def __init__(
        self,
        psub: Any,
        handler: DeliveryHandler,
        policy: ConsumerPolicy,
        batch_handler: BatchHandler | None = None,
    ) -> None:
        self._psub = psub
        self._handler = handler
        self._batch_handler = batch_handler
        self._policy = policy
        self._stopping = False
        self._delivering = False
        self._task = asyncio.get_running_loop().create_task(self._run())
        self.delivered = 0

    async def _run(self) -> None:
        batch = max(self._policy.batch, self._policy.max_in_flight * 8, 1)
        limit = asyncio.Semaphore(self._policy.max_in_flight)
        while not self._stopping:
            try:
                msgs = await self._psub.fetch(batch, timeout=1.0)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            except nats.errors.Error as exc:
                if self._stopping:
                    return
                log.warning("event fetch failed; retrying", error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(0.5)
                continue
            self._delivering = True
            try:
                await self._deliver_all(msgs, limit)
            finally:
                self._delivering = False

    async def _deliver_all(self, msgs: list[Msg], limit: asyncio.Semaphore) -> None:
        if self._batch_handler is not None and len(msgs) > 1:
            self.delivered += len(msgs)
            try:
                await self._batch_handler([_JsDelivery(m) for m in msgs])
            except Exception as exc:
                log.error("event batch handler crashed", error=f"{type(exc).__name__}: {exc}")
            return
        if self._policy.max_in_flight == 1:
            for msg in msgs:
                await self._deliver(msg)
        else:

            async def one(msg: Msg) -> None:
                async with limit:
                    await self._deliver(msg)

            await asyncio.gather(*(one(m) for m in msgs))

    async def _deliver(self, msg: Msg) -> None:
        self.delivered += 1
        delivery = _JsDelivery(msg)
        try:
            await self._handler(delivery)
        except Exception as exc:
            log.error("event handler crashed", error=f"{type(exc).__name__}: {exc}")
        # An unsettled delivery comes back after ack_wait (the server's redelivery).

    @property
    def busy(self) -> bool:
        """Whether deliveries are being handled right now."""
        return self._delivering

    async def pending(self) -> int:
        try:
            info = await self._psub.consumer_info()
        except (nats.errors.Error, OSError) as exc:
            raise Unavailable(f"cannot read consumer state: {exc}") from exc
        return int(info.num_pending or 0) + int(info.num_ack_pending or 0)

    async def stop(self) -> None:
        self._stopping = True
        if not self._delivering:
            self._task.cancel()  # only waiting for messages: nothing to finish
        # Otherwise let the batch in progress finish and be acked.
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(self._task, timeout=15)
        with contextlib.suppress(nats.errors.Error, ValueError):
            await self._psub.unsubscribe()


class JetStreamBroker:
    """A :class:`~cleave.transport.base.Broker` on NATS JetStream."""

    def __init__(self, nc: NatsClient, *, max_age: float = _WEEK, prefix: str = DEFAULT) -> None:
        self.nc = nc
        self.prefix = prefix
        self.js = nc.jetstream(timeout=10)
        self.max_age = max_age
        self._streams: set[str] = set()
        self._atomic: set[str] = set()
        self._refusals = refusals_of(nc)

    def _refused(self, what: str) -> DefinitionError | None:
        """The error for a publish the NATS server refused (None: cancelled for another reason)."""
        subject = self._refusals.take(asyncio.current_task())
        if subject is None:
            return None
        if subject.startswith("$JS."):
            return DefinitionError(
                f"the NATS server refused {what} ({subject}): under `cleave up` a service group "
                "reaches only its own streams and consumers and the streams of the events it "
                "declares with @cleave.subscribe; declare the subscription in the service class"
            )
        return DefinitionError(
            f"the NATS server refused {what} (publish to {subject}): a service publishes only "
            "the events of its own contract; list the event in the events=[...] of the "
            "contract of the service that publishes it, or publish it from that service"
        )

    def _stream(self, name: str) -> str:
        return stream_for(self.prefix, name)

    def _subject(self, subject: str) -> str:
        return subject_for(self.prefix, subject)

    async def ensure_stream(self, name: str, subjects: Sequence[Subject]) -> None:
        if name in self._streams:
            return
        config = StreamConfig(
            name=self._stream(name),
            subjects=[self._subject(s) for s in subjects],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=self.max_age,
            discard=DiscardPolicy.OLD,
            duplicate_window=120.0,
        )
        atomic = self._server_at_least(2, 12)
        api = f"$JS.API.STREAM.%s.{self._stream(name)}"
        watched = self._refusals.watch_all(api % verb for verb in ("CREATE", "UPDATE", "INFO"))
        try:
            if atomic:
                await self._create_atomic(config)
            else:
                try:
                    await self.js.add_stream(config)
                except nats.js.errors.BadRequestError:
                    # It exists with another configuration (an older version): update it.
                    await self.js.update_stream(config)
        except asyncio.CancelledError:
            if (refused := self._refused(f"creating stream {name}")) is None:
                raise
            raise refused from None
        except (nats.errors.Error, OSError) as exc:
            raise Unavailable(f"cannot create JetStream stream {name}: {exc}") from exc
        finally:
            release(watched)
        self._streams.add(name)
        if atomic:
            self._atomic.add(self._stream(name))

    def _server_at_least(self, major: int, minor: int) -> bool:
        version = getattr(self.nc, "connected_server_version", None)
        return version is not None and (version.major, version.minor) >= (major, minor)

    async def _create_atomic(self, config: StreamConfig) -> None:
        """Create or update the stream with atomic batch publishing allowed (2.12+).

        nats-py's StreamConfig has no field for it yet, so the API is called with
        the JSON it would send, plus ``allow_atomic``.
        """
        body = {**config.as_dict(), "allow_atomic": True}
        for verb in ("CREATE", "UPDATE"):
            reply = await self.nc.request(
                f"$JS.API.STREAM.{verb}.{config.name}", json.dumps(body).encode(), timeout=10
            )
            answer = json.loads(reply.data)
            if "error" not in answer:
                return
            if verb == "UPDATE" or answer["error"].get("err_code") != 10058:
                raise nats.js.errors.APIError(description=str(answer["error"]))

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        """Store ``messages`` in order and wait for the acknowledgements.

        Several messages for one stream go as atomic batches where the server
        allows them: stored together, acknowledged (and synced to disk) once per
        batch instead of once per message. Each is still its own message with
        its own ``Nats-Msg-Id``. A publish the server refuses (a service
        publishing another's events) raises :class:`DefinitionError` at once.
        """
        watched = self._refusals.watch_all({self._subject(m.subject) for m in messages})
        try:
            await self._publish(messages)
        except asyncio.CancelledError:
            if (refused := self._refused("storing an event")) is None:
                raise
            raise refused from None
        finally:
            release(watched)

    async def _publish(self, messages: Sequence[Outgoing]) -> None:
        start = 0
        while start < len(messages):
            stream = self._stream_of(messages[start].subject)
            end = start + 1
            while (
                end < len(messages)
                and end - start < ATOMIC_MAX
                and self._stream_of(messages[end].subject) == stream
            ):
                end += 1
            group = messages[start:end]
            if stream in self._atomic and len(group) > 1:
                try:
                    await self._publish_atomic(group)
                except (nats.errors.Error, nats.js.errors.APIError, ValueError) as exc:
                    log.warning("atomic batch refused; publishing one by one", error=str(exc))
                    await self._publish_each(group)
            else:
                await self._publish_each(group)
            start = end

    def _stream_of(self, subject: str) -> str:
        # cleave.evt.<service>.<topic>.v<n> is stored in the service's stream.
        parts = subject.split(".")
        return self._stream(f"CLEAVE_{parts[2].upper()}") if len(parts) > 2 else ""

    async def _publish_atomic(self, group: Sequence[Outgoing]) -> None:
        batch_id = os.urandom(8).hex()
        try:
            for i, m in enumerate(group[:-1], start=1):
                headers = {
                    **m.headers,
                    "Nats-Msg-Id": m.msg_id,
                    "Nats-Batch-Id": batch_id,
                    "Nats-Batch-Sequence": str(i),
                }
                await self.nc.publish(self._subject(m.subject), m.data, headers=headers)
            last = group[-1]
            headers = {
                **last.headers,
                "Nats-Msg-Id": last.msg_id,
                "Nats-Batch-Id": batch_id,
                "Nats-Batch-Sequence": str(len(group)),
                "Nats-Batch-Commit": "1",
            }
            reply = await self.nc.request(
                self._subject(last.subject), last.data, headers=headers, timeout=10
            )
        except (TimeoutError, OSError) as exc:
            raise Unavailable(f"JetStream did not acknowledge the events: {exc}") from exc
        answer = json.loads(reply.data)
        if "error" in answer:
            raise ValueError(str(answer["error"]))

    async def _publish_each(self, group: Sequence[Outgoing]) -> None:
        try:
            acks = [
                await self.js.publish_async(
                    self._subject(m.subject),
                    m.data,
                    headers={**m.headers, "Nats-Msg-Id": m.msg_id},
                )
                for m in group
            ]
            await asyncio.gather(*acks)
        except (TimeoutError, nats.errors.Error, OSError) as exc:
            raise Unavailable(f"JetStream did not acknowledge the events: {exc}") from exc

    async def subscribe(
        self,
        stream: str,
        durable: str,
        subject: Subject,
        handler: DeliveryHandler,
        policy: ConsumerPolicy,
        batch_handler: BatchHandler | None = None,
        *,
        start: int = 0,
    ) -> _PullSubscription:
        config = ConsumerConfig(
            durable_name=durable,
            filter_subject=self._subject(subject),
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=policy.ack_wait,
            # Unbounded here: the consumer dead-letters and terminates after
            # policy.max_deliver attempts, so nothing is left unacked for ever.
            max_deliver=-1,
            # Never DeliverPolicy.NEW: an event stored a moment before the
            # consumer was created would be lost to it.
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE if start > 0 else DeliverPolicy.ALL,
            opt_start_seq=start if start > 0 else None,
            max_ack_pending=max(1000, policy.max_in_flight * 16),
        )
        api = f"$JS.API.CONSUMER.%s.{self._stream(stream)}.{durable}"
        create = api % "CREATE"
        filtered = f"{create}.{config.filter_subject}"
        watched = self._refusals.watch_all((api % "INFO", create, filtered, api % "DURABLE.CREATE"))
        try:
            psub = await self.js.pull_subscribe(
                self._subject(subject), durable=durable, stream=self._stream(stream), config=config
            )
        except asyncio.CancelledError:
            if (refused := self._refused(f"creating consumer {durable} on {stream}")) is None:
                raise
            raise refused from None
        except (nats.errors.Error, OSError) as exc:
            raise Unavailable(f"cannot create consumer {durable} on {stream}: {exc}") from exc
        finally:
            release(watched)
        return _PullSubscription(psub, handler, policy, batch_handler)

    async def consumers(self, stream: str) -> list[ConsumerState]:
        name = self._stream(stream)
        found: list[ConsumerState] = []
        offset = 0
        try:
            while True:  # listed a page (256) at a time
                page = await self.js.consumers_info(name, offset=offset or None)
                if not page:
                    return found
                offset += len(page)
                for info in page:
                    subject = info.config.filter_subject or next(
                        iter(info.config.filter_subjects or ()), ""
                    )
                    with contextlib.suppress(ValueError):  # not under our prefix: not ours
                        subject = canonical_subject(self.prefix, subject)
                    acked = info.ack_floor.stream_seq if info.ack_floor is not None else 0
                    found.append(ConsumerState(info.name, subject, int(acked or 0)))
        except nats.js.errors.NotFoundError:
            return found
        except (nats.errors.Error, OSError) as exc:
            raise Unavailable(f"cannot list the consumers of stream {stream}: {exc}") from exc

    async def delete_consumer(self, stream: str, durable: str) -> None:
        try:
            await self.js.delete_consumer(self._stream(stream), durable)
        except nats.js.errors.NotFoundError:
            pass  # gone already (another replica deleted it)
        except (nats.errors.Error, OSError) as exc:
            raise Unavailable(f"cannot delete consumer {durable} of {stream}: {exc}") from exc

    async def close(self) -> None:
        pass  # the connection belongs to whoever made it
