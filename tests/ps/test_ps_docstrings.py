"""Every example in tidemill.ps's docstrings runs as written."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import tidemill.ps

MODULES = sorted(
    f"tidemill.ps.{info.name}" for info in pkgutil.iter_modules(tidemill.ps.__path__)
)


@pytest.mark.parametrize("name", ["tidemill.ps", *MODULES])
def test_the_docstring_examples_run(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
