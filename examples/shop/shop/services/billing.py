"""The billing service: accounts, and at most one charge per order.

A charge row per order makes "charged twice" impossible whatever the retry:
a second charge for the same order returns the first receipt. A refund
before the charge arrives (a charge still in flight when checkout gave up)
leaves a tombstone, so that charge is declined when it lands.

It serves billing v2 and, for callers not moved yet, v1: v1's charge is an
adapter onto v2's (v1 implied the accounts' currency). The other methods did
not change between the majors, so one method serves both.
"""

from __future__ import annotations

import time
from pathlib import Path

import sqlalchemy as sa

import cleave
from shop.access import is_admin, may_see
from shop.contracts.billing import (
    Account,
    AccountList,
    Billing,
    BillingV2,
    Charge,
    ChargeV2,
    GetAccount,
    ListAccounts,
    PaymentCaptured,
    PaymentCapturedV2,
    PaymentRefunded,
    Receipt,
    Refund,
    Refunded,
)
from shop.contracts.orders import OrderCancelled
from shop.seed import ACCOUNTS

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
#: The currency every account is held in.
CURRENCY = "EUR"
metadata = sa.MetaData()
accounts = sa.Table(
    "accounts",
    metadata,
    sa.Column("account_id", sa.String(64), primary_key=True),
    sa.Column("balance_cents", sa.BigInteger, nullable=False),
    sa.CheckConstraint("balance_cents >= 0", name="balance_not_negative"),
)
charges = sa.Table(
    "charges",
    metadata,
    sa.Column("order_id", sa.String(64), primary_key=True),
    sa.Column("account_id", sa.String(64), nullable=False),
    sa.Column("amount_cents", sa.BigInteger, nullable=False),
    # captured -> refunded; declined; refunded also as a tombstone
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("updated_at", sa.Float, nullable=False),
)


# The checkout's statements, built once (see cleave.Prepared); the rest use tx.execute.
FIND_ACCOUNT = cleave.Prepared(
    sa.select(accounts.c.account_id, accounts.c.balance_cents).where(
        accounts.c.account_id == sa.bindparam("account_id")
    )
)
FIND_CHARGE = cleave.Prepared(
    sa.select(
        charges.c.account_id, charges.c.amount_cents, charges.c.state, charges.c.reason
    ).where(charges.c.order_id == sa.bindparam("order_id"))
)
LOCK_BALANCE = cleave.Prepared(
    sa.select(accounts.c.balance_cents)
    .where(accounts.c.account_id == sa.bindparam("account_id"))
    .with_for_update()  # PostgreSQL: concurrent charges queue on the account
)
DEBIT = cleave.Prepared(
    accounts.update()
    .where(accounts.c.account_id == sa.bindparam("account_id"))
    .values(balance_cents=accounts.c.balance_cents - sa.bindparam("amount_cents"))
)
RECORD_CHARGE = cleave.Prepared(
    charges.insert().values({c.name: sa.bindparam(c.name) for c in charges.c})
)


class BillingService(cleave.Service, implements=BillingV2, also=[Billing]):
    db = cleave.Database(metadata, migrations=MIGRATIONS / "billing")

    async def on_start(self) -> None:
        async with self.db.transaction() as tx:
            if await tx.scalar(sa.select(sa.func.count()).select_from(accounts)):
                return
            await tx.execute(
                accounts.insert(),
                [{"account_id": a.account_id, "balance_cents": a.balance_cents} for a in ACCOUNTS],
            )

    async def list_accounts(self, req: ListAccounts) -> AccountList:
        if not is_admin():
            raise cleave.PermissionDenied("listing accounts needs the admin scope")
        async with self.db.read() as tx:
            rows = (
                await tx.execute(
                    sa.select(accounts)
                    .where(accounts.c.account_id > req.after)
                    .order_by(accounts.c.account_id)
                    .limit(req.limit)
                )
            ).all()
        return AccountList(
            accounts=tuple(
                Account(account_id=r.account_id, balance_cents=r.balance_cents) for r in rows
            )
        )

    async def get_account(self, req: GetAccount) -> Account:
        row = None
        if may_see(req.account_id):  # another's account looks like an unknown one
            async with self.db.read() as tx:
                row = await tx.fetch_one(FIND_ACCOUNT, {"account_id": req.account_id})
        if row is None:
            raise cleave.NotFound(f"no account {req.account_id!r}")
        return Account(account_id=row.account_id, balance_cents=row.balance_cents)

    @cleave.adapts(Billing.charge)
    async def charge_v1(self, req: Charge) -> Receipt:
        # v1 callers charged in the accounts' currency without saying so.
        return await self.charge(
            ChargeV2(
                order_id=req.order_id,
                account_id=req.account_id,
                amount_cents=req.amount_cents,
                currency=CURRENCY,
            )
        )

    async def charge(self, req: ChargeV2) -> Receipt:
        async with self.db.transaction() as tx:
            prior = await tx.fetch_one(FIND_CHARGE, {"order_id": req.order_id})
            if prior is not None:
                if prior.state == "captured":
                    return Receipt(
                        order_id=req.order_id, status="captured", amount_cents=prior.amount_cents
                    )
                reason = prior.reason or "the order was refunded"
                return Receipt(
                    order_id=req.order_id, status="declined", amount_cents=0, reason=reason
                )
            row = await tx.fetch_one(LOCK_BALANCE, {"account_id": req.account_id})
            balance = None if row is None else row.balance_cents
            if balance is None:
                reason = f"no account {req.account_id!r}"
            elif req.currency != CURRENCY:
                reason = f"accounts are held in {CURRENCY}, not {req.currency}"
            elif balance < req.amount_cents:
                reason = (
                    f"insufficient funds: balance {balance} cents, total {req.amount_cents} cents"
                )
            else:
                reason = None
            if reason is not None:
                await tx.run(
                    RECORD_CHARGE,
                    {
                        "order_id": req.order_id,
                        "account_id": req.account_id,
                        "amount_cents": 0,
                        "state": "declined",
                        "reason": reason,
                        "updated_at": time.time(),
                    },
                )
                return Receipt(
                    order_id=req.order_id, status="declined", amount_cents=0, reason=reason
                )
            await tx.run(DEBIT, {"account_id": req.account_id, "amount_cents": req.amount_cents})
            await tx.run(
                RECORD_CHARGE,
                {
                    "order_id": req.order_id,
                    "account_id": req.account_id,
                    "amount_cents": req.amount_cents,
                    "state": "captured",
                    "reason": None,
                    "updated_at": time.time(),
                },
            )
            # v1 goes on as long as anyone still consumes it.
            cleave.publish_versions(
                tx,
                PaymentCapturedV2(
                    order_id=req.order_id,
                    account_id=req.account_id,
                    amount_cents=req.amount_cents,
                    currency=req.currency,
                ),
                PaymentCaptured(
                    order_id=req.order_id, account_id=req.account_id, amount_cents=req.amount_cents
                ),
            )
        return Receipt(order_id=req.order_id, status="captured", amount_cents=req.amount_cents)

    async def refund(self, req: Refund) -> Refunded:
        async with self.db.transaction() as tx:
            prior = await tx.fetch_one(FIND_CHARGE, {"order_id": req.order_id})
            if prior is None:
                await tx.execute(
                    charges.insert().values(
                        order_id=req.order_id,
                        account_id="",
                        amount_cents=0,
                        state="refunded",
                        reason="the order was cancelled before it was charged",
                        updated_at=time.time(),
                    )
                )
                return Refunded(order_id=req.order_id, refunded_cents=0)
            if prior.state != "captured":
                return Refunded(order_id=req.order_id, refunded_cents=0)
            await tx.execute(
                accounts.update()
                .where(accounts.c.account_id == prior.account_id)
                .values(balance_cents=accounts.c.balance_cents + prior.amount_cents)
            )
            await tx.execute(
                charges.update()
                .where(charges.c.order_id == req.order_id)
                .values(state="refunded", updated_at=time.time())
            )
            tx.publish(
                PaymentRefunded(
                    order_id=req.order_id,
                    account_id=prior.account_id,
                    amount_cents=prior.amount_cents,
                )
            )
        return Refunded(order_id=req.order_id, refunded_cents=prior.amount_cents)

    @cleave.subscribe(OrderCancelled)
    async def on_order_cancelled(self, event: OrderCancelled) -> None:
        # Checkout refunds when it cancels after a charge; this covers a charge that landed
        # after checkout gave up on it.
        await self.refund(Refund(order_id=event.order_id))
