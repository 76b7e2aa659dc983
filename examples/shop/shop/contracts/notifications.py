"""Notifications: what the customer was told, and when."""

from __future__ import annotations

from typing import Annotated, Protocol

import msgspec

import cleave


class Notification(cleave.Message):
    notification_id: str
    order_id: str
    account_id: str
    kind: str
    text: str
    created_at: float


class ListNotifications(cleave.Message):
    order_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class NotificationList(cleave.Message):
    notifications: tuple[Notification, ...]


@cleave.contract("notifications", version=1)
class Notifications(Protocol):
    """Tells customers about their orders, from events."""

    @cleave.readonly
    async def list_notifications(self, req: ListNotifications) -> NotificationList:
        """Notifications sent about one order."""
        ...
