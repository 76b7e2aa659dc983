"""The tables Cleave keeps in every service's own database.

They live beside the service's tables so that a state change, the events it
publishes, the events it has consumed and the results of idempotent calls
commit (or roll back) together.

- ``cleave_outbox``: events written in a business transaction, waiting to be
  relayed to the broker; a row is deleted once the broker acknowledged it.
- ``cleave_inbox``: ids of events a handler has processed, per consumer.
- ``cleave_idempotency``: results of idempotent methods, per request id.
- ``cleave_sagas``: state of sagas this service orchestrates.
- ``cleave_leases``: which replica runs a singleton job (the outbox relay).
- ``cleave_dead_letters``: events a consumer gave up on, kept for inspection
  and replay (see :mod:`cleave.data.deadletters`).
"""

from __future__ import annotations

import sqlalchemy as sa

__all__ = [
    "dead_letters",
    "idempotency",
    "inbox",
    "leases",
    "metadata",
    "outbox",
    "sagas",
    "upgrade",
]

metadata = sa.MetaData()

outbox = sa.Table(
    "cleave_outbox",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String(64), nullable=False, unique=True),
    sa.Column("subject", sa.String(255), nullable=False),
    sa.Column("payload", sa.LargeBinary, nullable=False),
    sa.Column("traceparent", sa.String(64), nullable=False, default=""),
    sa.Column("created_at", sa.Float, nullable=False),
    # Who caused the event (an Identity as JSON; "" for the system): see cleave.context.
    sa.Column("caused_by", sa.Text, nullable=False, server_default=""),
)

inbox = sa.Table(
    "cleave_inbox",
    metadata,
    sa.Column("consumer", sa.String(128), primary_key=True),
    sa.Column("event_id", sa.String(64), primary_key=True),
    sa.Column("processed_at", sa.Float, nullable=False, index=True),
)

idempotency = sa.Table(
    "cleave_idempotency",
    metadata,
    sa.Column("request_id", sa.String(255), primary_key=True),
    sa.Column("method", sa.String(128), nullable=False),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    # 0: the result is a response message; 1: it is an error (ErrorInfo).
    sa.Column("is_error", sa.Integer, nullable=False),
    sa.Column("result", sa.LargeBinary, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False, index=True),
)

sagas = sa.Table(
    "cleave_sagas",
    metadata,
    sa.Column("saga_id", sa.String(128), primary_key=True),
    sa.Column("kind", sa.String(128), nullable=False),
    # running -> done; running -> compensating -> failed; compensating -> stuck (a
    # compensation failed past its retries; an operator's retry() sets it compensating)
    sa.Column("state", sa.String(16), nullable=False),
    # running: the next step to run; compensating: the next step to compensate (down to -1)
    sa.Column("step", sa.Integer, nullable=False),
    sa.Column("data", sa.LargeBinary, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("next_attempt_at", sa.Float, nullable=False),
    sa.Column("deadline_at", sa.Float, nullable=False),
    sa.Column("owner", sa.String(128), nullable=False),
    sa.Column("lease_until", sa.Float, nullable=False),
    # The trace of the call that started it: every step joins that trace.
    sa.Column("traceparent", sa.String(64), nullable=False, default=""),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Index("cleave_sagas_pending", "kind", "state", "lease_until"),
)

leases = sa.Table(
    "cleave_leases",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("holder", sa.String(128), nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
)

dead_letters = sa.Table(
    "cleave_dead_letters",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("consumer", sa.String(128), nullable=False),
    sa.Column("event_id", sa.String(64), nullable=False),
    sa.Column("subject", sa.String(255), nullable=False),
    sa.Column("payload", sa.LargeBinary, nullable=False),
    sa.Column("headers", sa.Text, nullable=False),  # JSON object of the delivery's headers
    sa.Column("error", sa.Text, nullable=False),  # the last failure
    sa.Column("attempts", sa.Integer, nullable=False),  # deliveries and replays, in all
    sa.Column("created_at", sa.Float, nullable=False),  # first dead-lettered
    sa.Column("failed_at", sa.Float, nullable=False, index=True),  # last failed
    # Set by `cleave dlq replay` (or the dashboard); a host running the consumer replays it.
    sa.Column("replay_requested_at", sa.Float, nullable=True, index=True),
    sa.UniqueConstraint("consumer", "event_id", name="cleave_dead_letters_event"),
)


def upgrade(connection: sa.Connection) -> None:
    """Add the columns newer Cleave versions gave its tables to a database made by an older one."""
    columns = {c["name"] for c in sa.inspect(connection).get_columns(outbox.name)}
    if "caused_by" not in columns:
        connection.execute(
            sa.text(f"ALTER TABLE {outbox.name} ADD COLUMN caused_by TEXT NOT NULL DEFAULT ''")
        )
