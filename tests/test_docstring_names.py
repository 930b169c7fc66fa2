"""Every `keras_localconn.<name>` that the documentation names exists.

The names are collected from the docstrings of the package's modules,
classes and functions (read with `ast`, without importing anything) and from
the Markdown pages under ``docs/`` (prose and the ``::: keras_localconn.X``
API directives), and each is resolved as Python would: the longest prefix
that imports as a module, then attributes.
"""

import ast
import importlib
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "keras_localconn"
# A dotted name that starts with the package; a trailing full stop is prose.
NAME = re.compile(r"\bkeras_localconn(?:\.[A-Za-z_][A-Za-z0-9_]*)+")
_DEFINITIONS = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def _docstrings(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, _DEFINITIONS):
            docstring = ast.get_docstring(node, clean=False)
            if docstring:
                yield docstring


def _mentions():
    """``{dotted name: [where it is named, ...]}``."""
    mentions = {}
    sources = [
        (path, text)
        for path in sorted(PACKAGE.rglob("*.py"))
        for text in _docstrings(path)
    ]
    sources += [
        (path, path.read_text(encoding="utf-8"))
        for path in sorted((ROOT / "docs").rglob("*.md"))
    ]
    for path, text in sources:
        for name in NAME.findall(text):
            where = str(path.relative_to(ROOT))
            places = mentions.setdefault(name, [])
            if where not in places:
                places.append(where)
    return mentions


MENTIONS = _mentions()


def _resolve(dotted_name):
    """The object `dotted_name` names; raises if there is none."""
    parts = dotted_name.split(".")
    for split in range(len(parts), 0, -1):
        try:
            value = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[split:]:
            value = getattr(value, attribute)
        return value
    raise ModuleNotFoundError(dotted_name)


def test_the_documentation_names_the_package_in_many_places():
    """The collection works: the pages and docstrings name the public API."""
    assert {"keras_localconn.ops.local_conv", "keras_localconn.untie"} <= set(MENTIONS)
    assert len(MENTIONS) >= 10


@pytest.mark.parametrize("name", sorted(MENTIONS))
def test_every_package_name_in_a_docstring_or_page_resolves(name):
    try:
        _resolve(name)
    except (ImportError, AttributeError) as error:
        pytest.fail(f"{name}, named in {MENTIONS[name]}, does not resolve: {error}")
