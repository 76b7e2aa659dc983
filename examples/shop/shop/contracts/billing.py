"""Billing: customer accounts, charges and refunds."""

from __future__ import annotations

from typing import Annotated, Literal, Protocol

import msgspec

import cleave
from shop.contracts.paging import MAX_PAGE, After, PageSize

AccountId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class Account(cleave.Message):
    account_id: str
    balance_cents: int


class AccountList(cleave.Message):
    accounts: tuple[Account, ...]


class ListAccounts(cleave.Message):
    #: At most this many accounts, by id.
    limit: PageSize = MAX_PAGE
    #: Accounts after this id (the last of the previous page).
    after: After = ""


class GetAccount(cleave.Message):
    account_id: AccountId


class Charge(cleave.Message):
    order_id: str
    account_id: str
    amount_cents: Annotated[int, msgspec.Meta(ge=0)]


class Receipt(cleave.Message):
    order_id: str
    status: Literal["captured", "declined"]
    amount_cents: int
    reason: str | None = None


class Refund(cleave.Message):
    order_id: str


class Refunded(cleave.Message):
    order_id: str
    refunded_cents: int


class PaymentCaptured(cleave.Event):
    order_id: str
    account_id: str
    amount_cents: int


class PaymentRefunded(cleave.Event):
    order_id: str
    account_id: str
    amount_cents: int


@cleave.contract("billing", version=1, events=[PaymentCaptured, PaymentRefunded])
class Billing(Protocol):
    """Accounts and the money that moves between them and orders."""

    @cleave.readonly
    async def list_accounts(self, req: ListAccounts) -> AccountList:
        """Accounts by id, a page at a time (the admin's view: needs the admin scope)."""
        ...

    @cleave.readonly
    async def get_account(self, req: GetAccount) -> Account:
        """One account; NotFound if unknown, or not the caller's."""
        ...

    @cleave.idempotent
    async def charge(self, req: Charge) -> Receipt:
        """Take an order's total from an account, at most once per order."""
        ...

    @cleave.idempotent
    async def refund(self, req: Refund) -> Refunded:
        """Give an order's charge back; a later charge for that order is declined."""
        ...
