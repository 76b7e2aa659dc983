"""Billing: customer accounts, charges and refunds.

Two majors (see docs/versioning.md): v2's charge names its currency, a
breaking change for callers (a required request field), so it is a new major;
v1, which implied the accounts' currency, is still served for callers not yet
moved, and is deprecated.
"""

from __future__ import annotations

from typing import Annotated, Literal, Protocol

import msgspec

import cleave
from shop.contracts.paging import MAX_PAGE, After, PageSize

AccountId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
#: An ISO 4217 code, like "EUR".
Currency = Annotated[str, msgspec.Meta(pattern="^[A-Z]{3}$")]


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


class ChargeV2(cleave.Message):
    order_id: str
    account_id: str
    amount_cents: Annotated[int, msgspec.Meta(ge=0)]
    currency: Currency


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


class PaymentCapturedV2(cleave.Event, topic="payment_captured", version=2):
    order_id: str
    account_id: str
    amount_cents: int
    currency: str


class PaymentRefunded(cleave.Event):
    order_id: str
    account_id: str
    amount_cents: int


@cleave.deprecated(reason="use billing v2 (BillingV2), whose charge names the currency")
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


@cleave.contract("billing", version=2, events=[PaymentCapturedV2, PaymentRefunded])
class BillingV2(Protocol):
    """Accounts and the money that moves between them and orders, in a named currency."""

    @cleave.readonly
    async def list_accounts(self, req: ListAccounts) -> AccountList:
        """Every account (the demo's admin view)."""
        ...

    @cleave.readonly
    async def get_account(self, req: GetAccount) -> Account:
        """One account; NotFound if unknown."""
        ...

    @cleave.idempotent
    async def charge(self, req: ChargeV2) -> Receipt:
        """Take an order's total from an account, at most once per order; declined if the
        account is not held in ``currency``."""
        ...

    @cleave.idempotent
    async def refund(self, req: Refund) -> Refunded:
        """Give an order's charge back; a later charge for that order is declined."""
        ...
