"""Cleave: write a modular monolith, deploy microservices, cleave when it pays.

What a service author imports. Everything else lives in ``cleave.runtime``
and ``cleave.transport`` (for those who extend Cleave) or in private modules.
"""

from cleave.app import App
from cleave.audience import publish_versions
from cleave.connection import connect
from cleave.context import CallContext, Identity, current, timeout
from cleave.contracts import contract, deprecated, idempotent, readonly
from cleave.data.database import Database, Transaction
from cleave.data.prepared import Prepared
from cleave.data.saga import Abort, Saga, SagaOutcome
from cleave.errors import (
    BulkheadFull,
    CallError,
    CircuitOpen,
    CleaveError,
    ConfigError,
    Conflict,
    DeadlineExceeded,
    DefinitionError,
    InvalidArgument,
    LifecycleError,
    NotFound,
    PermissionDenied,
    RemoteError,
    ServiceError,
    Unavailable,
)
from cleave.gateway.access import Scope
from cleave.gateway.routes import Gateway
from cleave.messages import Event, Message
from cleave.service import Service, adapts, subscribe, use

__version__ = "0.1.0"

__all__ = [
    "Abort",
    "App",
    "BulkheadFull",
    "CallContext",
    "CallError",
    "CircuitOpen",
    "CleaveError",
    "ConfigError",
    "Conflict",
    "Database",
    "DeadlineExceeded",
    "DefinitionError",
    "Event",
    "Gateway",
    "Identity",
    "InvalidArgument",
    "LifecycleError",
    "Message",
    "NotFound",
    "PermissionDenied",
    "Prepared",
    "RemoteError",
    "Saga",
    "SagaOutcome",
    "Scope",
    "Service",
    "ServiceError",
    "Transaction",
    "Unavailable",
    "adapts",
    "connect",
    "contract",
    "current",
    "deprecated",
    "idempotent",
    "publish_versions",
    "readonly",
    "subscribe",
    "timeout",
    "use",
]
