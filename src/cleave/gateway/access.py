"""Who may call a route: anyone, any authenticated caller, or one holding a scope.

Declared per route (``gateway.get(..., auth=...)``) and enforced by
:mod:`cleave.gateway.auth`; a module of its own so that declaring routes does
not import the token machinery.
"""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = ["Access", "Scope", "access_problem"]


class Scope(msgspec.Struct, frozen=True):
    """A route only callers whose token grants scope ``name`` may call: ``auth=Scope("admin")``."""

    name: str


#: Who may call a route: anyone, any authenticated caller, or one holding a scope.
Access = Literal["public", "user"] | Scope


def access_problem(access: object) -> str:
    """What is wrong with ``access`` as a route's ``auth=``, or "" if nothing."""
    if access in ("public", "user"):
        return ""
    if isinstance(access, Scope):
        return "" if access.name and " " not in access.name else "a scope is one word"
    return f"auth={access!r} is not one of 'public', 'user' or Scope('<name>')"
