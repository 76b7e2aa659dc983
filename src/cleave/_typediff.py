"""Two message graphs side by side: every difference, as (path, change, detail).

The private half of :mod:`cleave.compat`: it walks the messages of an old and
a new snapshot from one root (a request, a response, an event) and names each
difference with a change from ``compat.RULES``; ``compat`` gives it a verdict.
Types are compared by what msgspec accepts on the wire.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

__all__ = ["MessageDiff"]

_Found = Iterator[tuple[str, str, str]]


class MessageDiff:
    """Walks two message graphs side by side, yielding (path, change, detail)."""

    def __init__(self, old: dict[str, Any], new: dict[str, Any]) -> None:
        self.old = old
        self.new = new

    def messages(self, old_ref: str, new_ref: str, path: str) -> list[tuple[str, str, str]]:
        return list(self._struct(old_ref, new_ref, path, set()))

    def _struct(self, old_ref: str, new_ref: str, path: str, seen: set[Any]) -> _Found:
        if (old_ref, new_ref) in seen:
            return  # a recursive message: its fields were compared one level up
        seen = seen | {(old_ref, new_ref)}
        a, b = self.old[old_ref], self.new[new_ref]
        if a["array_like"] != b["array_like"]:
            yield (
                path,
                "array-like layout changed",
                f"array_like {a['array_like']} -> {b['array_like']}",
            )
        if (a["tag_field"], a["tag"]) != (b["tag_field"], b["tag"]):
            yield (
                path,
                "tag changed",
                f"{a['tag_field']}={a['tag']!r} -> {b['tag_field']}={b['tag']!r}",
            )
        if a["forbid_unknown_fields"] != b["forbid_unknown_fields"]:
            yield (
                path,
                "unknown fields " + ("forbidden" if b["forbid_unknown_fields"] else "allowed"),
                "",
            )
        if a["omit_defaults"] != b["omit_defaults"]:
            yield (
                path,
                "omit_defaults changed",
                f"omit_defaults {a['omit_defaults']} -> {b['omit_defaults']}",
            )
        old_fields = {f["wire"]: (i, f) for i, f in enumerate(a["fields"])}
        new_fields = {f["wire"]: (i, f) for i, f in enumerate(b["fields"])}
        renamed = {f["name"]: f for w, (_, f) in new_fields.items() if w not in old_fields}
        for wire, (i, f) in old_fields.items():
            where = f"{path}.{f['name']}"
            if wire not in new_fields:
                other = renamed.pop(f["name"], None)
                if other is not None:
                    yield where, "wire rename", f"{wire!r} -> {other['wire']!r}"
                elif f["required"]:
                    yield where, "field removed", ""
                else:
                    yield where, "optional field removed", ""
                continue
            j, g = new_fields[wire]
            if a["array_like"] and b["array_like"] and i != j:
                yield where, "array-like field moved", f"position {i} -> {j}"
            yield from self._field(f, g, b["omit_defaults"], where)
            yield from self._type(f["type"], g["type"], where, seen)
        for wire, (_, g) in new_fields.items():
            if wire not in old_fields and g["name"] not in {
                f["name"] for _, f in old_fields.values()
            }:
                with_default = "with" if not g["required"] else "without"
                yield f"{path}.{g['name']}", f"field added {with_default} default", ""

    @staticmethod
    def _field(f: Any, g: Any, omits: bool, where: str) -> _Found:
        if f["required"] and not g["required"]:
            kind = "field made optional and omitted" if omits else "field made optional"
            yield where, kind, f"default {_show(g['default'])}"
        elif not f["required"] and g["required"]:
            yield where, "field made required", ""
        elif not f["required"] and f["default"] != g["default"]:
            yield where, "default changed", f"{_show(f['default'])} -> {_show(g['default'])}"

    def _type(self, a: Any, b: Any, path: str, seen: set[Any]) -> _Found:
        if a == b and not _has_struct(a):  # equal refs may still name changed Structs
            return
        if a["type"] == "union" or b["type"] == "union":
            yield from self._union(_members(a), _members(b), path, seen)
        else:
            yield from self._single(a, b, path, seen)

    def _union(self, old: list[Any], new: list[Any], path: str, seen: set[Any]) -> _Found:
        old_keys, new_keys = _keyed(old, self.old), _keyed(new, self.new)
        for key in sorted(set(old_keys) | set(new_keys)):
            a, b = old_keys.get(key, []), new_keys.get(key, [])
            if len(a) == 1 and len(b) == 1:
                yield from self._single(a[0], b[0], path, seen)
                continue
            gone = [m for m in a if m not in b]
            came = [m for m in b if m not in a]
            for m in came:
                if m["type"] == "none":
                    yield path, "made nullable", ""
                else:
                    yield path, "union member added", _show_type(m)
            for m in gone:
                if m["type"] == "none":
                    yield path, "made non-nullable", ""
                else:
                    yield path, "union member removed", _show_type(m)

    def _single(self, a: Any, b: Any, path: str, seen: set[Any]) -> _Found:
        ta, tb = a["type"], b["type"]
        if ta == tb == "struct":
            yield from self._struct(a["ref"], b["ref"], path, seen)
        elif ta == tb == "array":
            yield from self._constraints(a, b, path)
            yield from self._type(a["item"], b["item"], path + "[]", seen)
        elif ta == tb == "tuple":
            if len(a["items"]) != len(b["items"]):
                yield path, "type changed", f"{len(a['items'])} -> {len(b['items'])} tuple elements"
                return
            for i, (x, y) in enumerate(zip(a["items"], b["items"], strict=True)):
                yield from self._type(x, y, f"{path}[{i}]", seen)
        elif ta == tb == "dict":
            yield from self._constraints(a, b, path)
            yield from self._type(a["key"], b["key"], path + "{key}", seen)
            yield from self._type(a["value"], b["value"], path + "{}", seen)
        elif "values" in a and "values" in b:  # Literal or enum, either way
            gone = [v for v in a["values"] if v not in b["values"]]
            came = [v for v in b["values"] if v not in a["values"]]
            if came:
                yield path, "value added", ", ".join(map(_show, came))
            if gone:
                yield path, "value removed", ", ".join(map(_show, gone))
        elif ta == tb:
            yield from self._constraints(a, b, path)
        elif tb == "any" or (ta, tb) == ("int", "float") or _base(a) == tb:
            yield path, "type widened", f"{_show_type(a)} -> {_show_type(b)}"
        elif ta == "any" or (ta, tb) == ("float", "int") or _base(b) == ta:
            yield path, "type narrowed", f"{_show_type(a)} -> {_show_type(b)}"
        else:
            yield path, "type changed", f"{_show_type(a)} -> {_show_type(b)}"

    @staticmethod
    def _constraints(a: Any, b: Any, path: str) -> _Found:
        for kind, detail in _bounds(a, b):
            yield path, kind, detail


def _bounds(a: Any, b: Any) -> Iterator[tuple[str, str]]:
    """(change, detail) for each Meta constraint that differs between nodes a and b."""
    for lower, keys in ((True, ("ge", "gt")), (False, ("le", "lt"))):
        x, y = _bound(a, keys), _bound(b, keys)
        if x == y:
            continue
        detail = f"{_show_bound(x, keys)} -> {_show_bound(y, keys)}"
        if x is None or y is None:
            yield ("constraint tightened" if x is None else "constraint loosened"), detail
            continue
        # Compare (value, strict): a strict bound at the same value is the tighter one.
        tighter = (y[0], y[1]) > (x[0], x[1]) if lower else (-y[0], y[1]) > (-x[0], x[1])
        yield ("constraint tightened" if tighter else "constraint loosened"), detail
    for key, tighter_if_bigger in (("min_length", True), ("max_length", False)):
        x, y = a.get(key), b.get(key)
        if x == y:
            continue
        detail = f"{key} {_show(x)} -> {_show(y)}"
        if x is None or y is None:
            yield ("constraint tightened" if x is None else "constraint loosened"), detail
        else:
            yield (
                ("constraint tightened" if (y > x) == tighter_if_bigger else "constraint loosened"),
                detail,
            )
    for key in ("multiple_of", "pattern", "tz"):
        x, y = a.get(key), b.get(key)
        if x == y:
            continue
        detail = f"{key} {_show(x)} -> {_show(y)}"
        if x is None:
            yield "constraint tightened", detail
        elif y is None:
            yield "constraint loosened", detail
        elif key == "multiple_of" and y % x == 0:
            yield "constraint tightened", detail
        elif key == "multiple_of" and x % y == 0:
            yield "constraint loosened", detail
        else:
            yield "constraint changed", detail


def _bound(node: Any, keys: tuple[str, str]) -> tuple[float, bool] | None:
    inclusive, strict = keys
    if node.get(strict) is not None:
        return node[strict], True
    if node.get(inclusive) is not None:
        return node[inclusive], False
    return None


def _show_bound(bound: tuple[float, bool] | None, keys: tuple[str, str]) -> str:
    if bound is None:
        return "none"
    return f"{keys[1] if bound[1] else keys[0]} {bound[0]}"


def _members(node: Any) -> list[Any]:
    return list(node["of"]) if node["type"] == "union" else [node]


def _base(node: Any) -> str | None:
    """The plain type a Literal or enum narrows: str for string values, int for ints."""
    values = node.get("values")
    if not values:
        return None
    kinds = {type(v).__name__ for v in values}
    return kinds.pop() if len(kinds) == 1 else None


def _keyed(members: list[Any], messages: dict[str, Any]) -> dict[str, list[Any]]:
    """Union members by what they look like on the wire, to pair old with new.

    Structs pair by their tag (a class may be renamed; its tag is what is sent).
    """
    out: dict[str, list[Any]] = {}
    for m in members:
        t = m["type"]
        if t in ("int", "float") or _base(m) == "int":
            key = "number"
        elif (
            t == "str" or _base(m) == "str" or t in ("datetime", "date", "time", "uuid", "decimal")
        ):
            key = "string"
        elif t in ("array", "tuple"):
            key = "array"
        elif t == "struct":
            key = f"struct {messages[m['ref']]['tag']!r}"
        else:
            key = t
        out.setdefault(key, []).append(m)
    return out


def _has_struct(node: Any) -> bool:
    return '"struct"' in json.dumps(node)


def _show(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _show_type(node: Any) -> str:
    t = node["type"]
    if "values" in node:
        return f"{node.get('name', 'Literal')}[{', '.join(map(_show, node['values']))}]"
    if t == "struct":
        return str(node["ref"])
    if t == "array":
        return f"{node['container']}[{_show_type(node['item'])}, ...]"
    if t == "union":
        return " | ".join(_show_type(m) for m in node["of"])
    return str(t)
