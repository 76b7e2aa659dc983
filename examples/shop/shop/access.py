"""Who may see and act on an account: the shop's object-level authorization.

The gateway only lets a caller in (a valid token, a scope); each owning
service decides what that caller may see, from the identity its call carries
(``cleave.current().identity``, never a field of the request):

- a customer's token (``sub`` = its account id) reaches its own account, and
  the orders and shipments of that account; another account's look as if they
  did not exist (404), and ordering on one is refused (403);
- a token with the ``admin`` scope reaches every account;
- the system (no identity: saga steps, event handlers, the shop's own
  background work) reaches everything: it acts for no user.
"""

from __future__ import annotations

import cleave

ADMIN = "admin"


def acting_user() -> cleave.Identity | None:
    """The end user this call acts for; None when the system acts."""
    ctx = cleave.current()
    return None if ctx is None else ctx.identity


def may_see(account_id: str) -> bool:
    """Whether the caller may see ``account_id`` and what belongs to it."""
    who = acting_user()
    return who is None or who.may_act_for(account_id, admin=ADMIN)


def is_admin() -> bool:
    """Whether the caller is the system or holds the ``admin`` scope."""
    who = acting_user()
    return who is None or who.has(ADMIN)
