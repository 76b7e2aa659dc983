"""The ``[nats] prefix`` setting: Cleave's subjects and streams under another first token.

Everything above the NATS transport names subjects and streams in their
canonical form, ``cleave.rpc.billing.v1.charge``, ``cleave.evt.orders.>``,
``CLEAVE_ORDERS``. Only the transport maps them to what is on the wire, with
the functions here, so several apps (or test runs) can share one NATS server::

    subject_for("shop", "cleave.evt.orders.>")       # "shop.evt.orders.>"
    stream_for("shop", "CLEAVE_ORDERS")               # "SHOP_ORDERS"
    canonical_subject("shop", "shop.dlq.audit")       # "cleave.dlq.audit"

Under the default prefix, ``cleave``, each one returns its argument.
"""

from __future__ import annotations

__all__ = ["DEFAULT", "canonical_subject", "stream_for", "subject_for"]

#: The first token of every subject, as Cleave names them.
DEFAULT = "cleave"
_SUBJECT = DEFAULT + "."
_STREAM = DEFAULT.upper() + "_"


def subject_for(prefix: str, subject: str) -> str:
    """``subject`` (``cleave.…``) as sent under ``prefix``."""
    if prefix == DEFAULT:
        return subject
    if not subject.startswith(_SUBJECT):
        raise ValueError(f"not a Cleave subject (they start {_SUBJECT!r}): {subject!r}")
    return prefix + subject[len(DEFAULT) :]


def stream_for(prefix: str, name: str) -> str:
    """Stream ``name`` (``CLEAVE_…``) as created under ``prefix``."""
    if prefix == DEFAULT:
        return name
    if not name.startswith(_STREAM):
        raise ValueError(f"not a Cleave stream name (they start {_STREAM!r}): {name!r}")
    return prefix.upper() + name[len(DEFAULT) :]


def canonical_subject(prefix: str, subject: str) -> str:
    """A subject seen on the wire under ``prefix``, back in its ``cleave.…`` form."""
    if prefix == DEFAULT:
        return subject
    if not subject.startswith(prefix + "."):
        raise ValueError(f"subject {subject!r} is not under the prefix {prefix!r}")
    return DEFAULT + subject[len(prefix) :]
