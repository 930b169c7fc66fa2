"""A pytest plugin that runs a sample of the tests: every test function, on
at most ``--per-test N`` of its parametrizations, spread over its grid.

The GPU check (``gpu_check.py``) has about two minutes per backend for what
takes the whole suite far longer; a sample keeps every property checked::

    python -m pytest -p integration.gpu_sample --per-test 3 tests/test_ops.py
"""

import pytest


def pytest_addoption(parser):
    parser.addoption(
        "--per-test",
        type=int,
        default=0,
        help="run at most this many cases of each test function (0: all)",
    )


def test_function(item):
    """What `item` is a case of: its id before the parameters, or the method
    absl's ``parameterized`` (Keras' TestCase) generated it from."""
    generated_from = getattr(getattr(item, "obj", None), "__wrapped__", None)
    if generated_from is not None:
        return f"{item.parent.nodeid}::{generated_from.__name__}"
    return item.nodeid.split("[", 1)[0]


def sampled(items, per_test, key=test_function):
    """At most `per_test` of `items` per test function (`key`), evenly
    spaced over its cases, in their order."""
    by_test = {}
    for item in items:
        by_test.setdefault(key(item), []).append(item)
    chosen = []
    for cases in by_test.values():
        taken = min(per_test, len(cases))
        chosen += [cases[index * len(cases) // taken] for index in range(taken)]
    return chosen


@pytest.hookimpl(trylast=True)  # after conftest.py deselects by backend
def pytest_collection_modifyitems(config, items):
    per_test = config.getoption("per_test")
    if not per_test:
        return
    chosen = {id(item) for item in sampled(items, per_test)}
    config.hook.pytest_deselected(
        items=[item for item in items if id(item) not in chosen]
    )
    items[:] = [item for item in items if id(item) in chosen]
