"""The worked examples in the docstrings of every segspark module run, and hold."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import segspark

MODULES = [f"segspark.{info.name}" for info in pkgutil.iter_modules(segspark.__path__)]
WITH_EXAMPLES = [
    "segspark.sweep",
    "segspark.rules",
    "segspark.experiment",
    "segspark.consent",
    "segspark.manifest",
    "segspark.profiles",
]


def _examples(name: str) -> doctest.TestResults:
    return doctest.testmod(importlib.import_module(name), optionflags=doctest.NORMALIZE_WHITESPACE)


@pytest.mark.parametrize("name", [m for m in MODULES if not m.endswith("__main__")])
def test_docstring_examples(name):
    results = _examples(name)
    assert results.failed == 0
    assert results.attempted > 0 or name not in WITH_EXAMPLES
