from __future__ import annotations

import importlib
import inspect

import pytest

import cleave

PUBLIC_MODULES = [
    "cleave",
    "cleave.errors",
    "cleave.messages",
    "cleave.contracts",
    "cleave.service",
    "cleave.context",
    "cleave.config",
    "cleave.testing",
    "cleave.transport.base",
    "cleave.runtime.host",
]


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_all_is_sorted_and_complete(name: str) -> None:
    module = importlib.import_module(name)
    exported = module.__all__
    assert exported == sorted(exported), f"{name}.__all__ is not sorted"
    for attr in exported:
        assert hasattr(module, attr), f"{name}.__all__ names {attr}, which does not exist"


def test_every_public_name_is_documented() -> None:
    for attr in cleave.__all__:
        obj = getattr(cleave, attr)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert inspect.getdoc(obj), f"cleave.{attr} has no docstring"


def test_the_author_api_is_small() -> None:
    assert len(cleave.__all__) <= 40
