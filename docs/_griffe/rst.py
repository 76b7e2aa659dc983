"""A griffe extension: Cleave's reST-flavoured docstrings, readable as Markdown.

The docstrings are written for ``help()`` and editors, in the reST habits of
the Python world: ``:class:`Saga``` roles and ``::`` before an indented
example. Markdown shows both literally, so the API reference turns a role into
inline code and drops the ``::`` marker; the indented block after it is already
a Markdown code block. The source stays as it is.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|exc|obj):`~?([^`]+)`")
_LITERAL = re.compile(r"(?m)^(?P<text>[^\n]*?)[ \t]*::$")


def markdown(text: str) -> str:
    """``text`` with reST roles as inline code and ``::`` markers as plain colons."""
    text = _ROLE.sub(lambda m: f"`{m[1]}`", text)
    return _LITERAL.sub(lambda m: m["text"] + (":" if m["text"].strip() else ""), text)


class ReSTMarkers(griffe.Extension):
    """Rewrites each docstring once it is loaded."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown(obj.docstring.value)
