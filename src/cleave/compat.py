"""Compatibility: which contract changes break a neighbour, by direction.

:func:`compare` walks two snapshots (:mod:`cleave.schema_lock`), old and new,
and classifies every change as ``breaking``, ``warning`` or ``safe``. The
verdict depends on who reads what:

- a **request** is written by old callers and read by the new server;
- a **response** is written by the new server and read by old callers;
- an **event** is read both ways: consumers of the new version read old
  events still retained in the stream, old consumers read new events. It gets
  the worse of the two verdicts.

So one change has two verdicts: narrowing a type breaks requests and is safe
in responses; widening it is the reverse. :data:`RULES` is the whole table
(docs/contracts.md prints it). Types are compared by what msgspec accepts on
the wire: int -> float widens, str -> Literal narrows, a union member or
Literal value added widens, a ``Meta`` bound raised narrows, and so on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import msgspec

from cleave._typediff import MessageDiff
from cleave.schema_lock import Lock

__all__ = ["RULES", "Change", "Verdict", "breaking", "compare"]

Verdict = Literal["breaking", "warning", "safe"]
Role = Literal["request", "response", "event"]
_RANK: dict[str, int] = {"safe": 0, "warning": 1, "breaking": 2}

# Readers and writers: "old -> new" is old writers read by the new reader (requests, and
# retained events read by new consumers); "new -> old" the new writer read by old readers.
_WIDER = (
    ("safe", "the reader accepts every value old writers send"),
    ("breaking", "the writer may send values old readers reject"),
)
_NARROWER = (
    ("breaking", "old writers may send values the reader rejects"),
    ("safe", "old readers accept every value the writer sends"),
)
_BOTH = "breaking", "neither side accepts every value the other may send"
_IGNORED = "warning", "the reader ignores it when old writers send it: what it meant is lost"


def _same(verdict: str, why: str) -> tuple[tuple[str, str], tuple[str, str]]:
    return (verdict, why), (verdict, why)


#: change -> ((verdict, why) for old -> new, (verdict, why) for new -> old).
RULES: dict[str, tuple[tuple[str, str], tuple[str, str]]] = {
    "field added with default": (
        ("safe", "old writers leave it out and the reader uses the default"),
        ("safe", "old readers ignore a field they do not know"),
    ),
    "field added without default": (
        ("breaking", "old writers do not send it and the reader requires it"),
        (
            "breaking",
            "a field added to an existing major must have a default, or go in a new major",
        ),
    ),
    "field removed": (_IGNORED, ("breaking", "old readers require it and no longer get it")),
    "optional field removed": (
        _IGNORED,
        ("warning", "old readers fill in their default instead of a real value"),
    ),
    "field made optional": (
        ("safe", "the reader fills in the default when it is left out"),
        ("safe", "the writer still sends it every time"),
    ),
    "field made optional and omitted": (
        ("safe", "the reader fills in the default when it is left out"),
        (
            "breaking",
            "the writer leaves it out when it equals the default (omit_defaults) "
            "and old readers require it",
        ),
    ),
    "field made required": (
        ("breaking", "old writers may leave it out, and the reader now requires it"),
        ("safe", "the writer always sends it"),
    ),
    "default changed": (
        ("warning", "when old writers leave it out, the reader assumes a different value"),
        ("safe", "the writer sends it every time"),
    ),
    "made nullable": (
        ("safe", "the reader also accepts null"),
        ("breaking", "the writer may send null, which old readers reject"),
    ),
    "made non-nullable": (
        ("breaking", "old writers may send null, which the reader rejects"),
        ("safe", "old readers accept every value the writer sends"),
    ),
    "type widened": _WIDER,
    "type narrowed": _NARROWER,
    "union member added": _WIDER,
    "union member removed": _NARROWER,
    "value added": _WIDER,
    "value removed": _NARROWER,
    "constraint loosened": _WIDER,
    "constraint tightened": _NARROWER,
    "type changed": _same(*_BOTH),
    "constraint changed": _same(*_BOTH),
    "wire rename": _same(
        "breaking", "the name on the wire changed: readers see it missing, and an unknown one"
    ),
    "array-like layout changed": _same(
        "breaking", "the layout on the wire switched between object and array"
    ),
    "array-like field moved": _same(
        "breaking", "in an array-like message a field's position is its name"
    ),
    "tag changed": _same("breaking", "the tag that tells union members apart changed"),
    "unknown fields forbidden": _same(
        "breaking", "a reader that forbids unknown fields fails on every field a writer adds"
    ),
    "unknown fields allowed": _same("safe", "the reader ignores fields it does not know"),
    "omit_defaults changed": (
        ("safe", "the reader fills in defaults for fields left out"),
        ("warning", "fields equal to their default may be left out; old readers use their own"),
    ),
    # Changes to the contract itself: one verdict, stated twice.
    "contract added": _same("safe", "a new contract or major beside the old ones"),
    "deprecated": _same(
        "warning", "still served, and each use is counted; move its callers, then retire it"
    ),
    "contract removed": _same(
        "breaking", "its callers and consumers fail; serve this major until none is left"
    ),
    "method added": _same("safe", "old callers do not call it"),
    "method removed": _same("breaking", "old callers still call it"),
    "event added": _same("safe", "no consumer depends on it yet"),
    "event removed": _same(
        "breaking", "its consumers stop getting it; publish it until no consumer is left"
    ),
    "error added": _same("warning", "old callers do not know it and see a RemoteError"),
    "error removed": _same(
        "warning", "handlers for it never run; raised anyway, it arrives as a RemoteError"
    ),
    "retry guarantee dropped": _same(
        "breaking", "old callers retry it after a timeout, trusting a repeat to be harmless"
    ),
    "retry guarantee added": _same("safe", "old callers just retry less"),
}


class Change(msgspec.Struct, frozen=True):
    """One classified difference between two snapshots."""

    contract: str
    version: int
    path: str
    change: str
    verdict: str
    reason: str


def breaking(changes: list[Change]) -> bool:
    """Whether any of ``changes`` breaks a neighbour."""
    return any(c.verdict == "breaking" for c in changes)


Emit = Callable[[str, str, str], None]


def compare(old: Lock, new: Lock) -> list[Change]:
    """Every change from snapshot ``old`` to snapshot ``new``, classified."""
    changes: list[Change] = []
    for key in sorted(set(old["contracts"]) | set(new["contracts"])):
        was, now = old["contracts"].get(key), new["contracts"].get(key)
        src = was or now
        name, version = src["name"], src["version"]

        def add(path: str, kind: str, detail: str, role: Role | None, note: str = "") -> None:
            verdict, reason = _classify(kind, role, note)
            reason = f"{reason} ({detail})" if detail else reason
            changes.append(Change(name, version, path, kind, verdict, reason))  # noqa: B023 - called within this iteration only

        if was is None or now is None:
            add(key, "contract added" if was is None else "contract removed", "", None)
            continue
        _compare_contract(key, was, now, MessageDiff(old["messages"], new["messages"]), add)
    for key, now in sorted(new["contracts"].items()):
        _report_deprecated(key, now, changes)
    return changes


def _report_deprecated(key: str, contract: Any, changes: list[Change]) -> None:
    """A warning for every deprecated major, method and event still in the code."""
    marked = [(key, contract.get("deprecated"))]
    marked += [(f"{key}.{m}", v.get("deprecated")) for m, v in contract["methods"].items()]
    marked += [(f"{key}.events.{e}", v.get("deprecated")) for e, v in contract["events"].items()]
    verdict, why = RULES["deprecated"][0]
    for path, reason in marked:
        if reason and not (path != key and contract.get("deprecated")):
            changes.append(
                Change(
                    contract["name"],
                    contract["version"],
                    path,
                    "deprecated",
                    verdict,
                    f"{why} ({reason})",
                )
            )


def _classify(kind: str, role: Role | None, note: str) -> tuple[str, str]:
    old_new, new_old = RULES[kind]
    if role is None:
        return old_new
    if role == "request":
        verdict, why = old_new
        return verdict, f"old callers -> new server: {why}"
    if role == "response":
        verdict, why = new_old
        return verdict, f"new server -> old callers: {why}"
    consumers = f" ({note})" if note else ""
    if _RANK[new_old[0]] > _RANK[old_new[0]]:
        return new_old[0], f"new events -> old consumers{consumers}: {new_old[1]}"
    return old_new[0], f"retained old events -> new consumers{consumers}: {old_new[1]}"


def _compare_contract(key: str, was: Any, now: Any, types: MessageDiff, add: Any) -> None:
    for m in sorted(set(was["methods"]) | set(now["methods"])):
        path = f"{key}.{m}"
        a, b = was["methods"].get(m), now["methods"].get(m)
        if a is None or b is None:
            add(path, "method added" if a is None else "method removed", "", None)
            continue
        for role in ("request", "response"):
            for p, kind, detail in types.messages(a[role], b[role], f"{path}.{role}"):
                add(p, kind, detail, role)
        trusted = {g for g in ("idempotent", "readonly") if a[g]}
        if trusted and not any(b[g] for g in trusted):
            add(path, "retry guarantee dropped", f"no longer {' or '.join(sorted(trusted))}", None)
        elif not trusted and (b["idempotent"] or b["readonly"]):
            add(path, "retry guarantee added", "", None)
    for e in sorted(set(was["events"]) | set(now["events"])):
        path = f"{key}.events.{e}"
        a, b = was["events"].get(e), now["events"].get(e)
        if a is None or b is None:
            readers = ", ".join((a or b)["consumers"])
            detail = f"consumed by {readers}" if readers else "no consumer in this app"
            add(path, "event added" if a is None else "event removed", detail, None)
            continue
        note = ", ".join(sorted(set(a["consumers"]) | set(b["consumers"])))
        for p, kind, detail in types.messages(a["message"], b["message"], path):
            add(p, kind, detail, "event", note)
    for kind in sorted(set(was["errors"]) ^ set(now["errors"])):
        add(
            f"{key}.errors.{kind}",
            "error added" if kind in now["errors"] else "error removed",
            "",
            None,
        )
