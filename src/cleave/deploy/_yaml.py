"""YAML out: manifests are built as data and dumped, never assembled from text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

__all__ = ["dump", "load_all", "write"]


class _Dumper(yaml.SafeDumper):
    """Block style, insertion order, multi-line strings as ``|`` blocks, no anchors."""

    def ignore_aliases(self, data: Any) -> bool:
        return True  # a shared dict (labels and selector) is written out twice, as people do


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump(*docs: Any) -> str:
    """``docs`` as one YAML stream (``---`` between documents)."""
    return yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100)


def write(path: Path, *docs: Any, header: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = "".join(f"# {line}\n" for line in header.splitlines())
    path.write_text(prefix + dump(*docs))


def load_all(text: str) -> list[Any]:
    return [d for d in yaml.safe_load_all(text) if d is not None]
