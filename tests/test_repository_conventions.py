"""The repository keeps its own rules: the test markers conftest.py documents
are those pyproject.toml registers and conftest.py acts on, CI's header names
every session it runs, and no test passes under a backend by returning early."""

import ast
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _registered_markers():
    """The markers pyproject.toml registers (pytest adds its own to the ini)."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    (markers,) = re.findall(r"^markers = \[(.*?)^\]", pyproject, flags=re.M | re.S)
    return set(re.findall(r'^\s*"(\w+)', markers, flags=re.M))


def test_conftest_documents_and_handles_every_registered_marker():
    source = (ROOT / "conftest.py").read_text()
    docstring = ast.get_docstring(ast.parse(source))
    documented = set(re.findall(r"@pytest\.mark\.(\w+)", docstring))
    handled = set(re.findall(r'get_closest_marker\("(\w+)"\)', source))
    registered = _registered_markers()
    assert {"training", "backends", "needs_keras"} <= registered
    assert documented == registered
    assert handled == registered


def test_ci_script_header_names_every_nox_session_it_runs():
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    header = " ".join(line for line in lines[1:] if line.startswith("#"))
    sessions = [
        match.group(1)
        for line in lines
        if (match := re.match(r"run python3 -m nox -s (\S+)$", line))
    ]
    assert {"lint", "tests", "export"} <= set(sessions)
    missing = [
        name
        for name in sessions
        if not re.search(rf"(?<![\w-]){name}(?![\w-])", header)
    ]
    assert not missing, f".ci/run's header omits {missing}"


def _mentions_the_environment(condition):
    """A condition on the backend, the Keras version or an optional feature."""
    return re.search(
        r"backend|BACKEND|__version__|HAS_|find_spec", ast.unparse(condition)
    )


def test_no_test_returns_early_on_the_backend_or_a_feature():
    """Such a test passes where it checked nothing: it carries a marker instead
    (`training`, `backends(...)`, `needs_keras(...)`, see conftest.py)."""
    early_returns = []
    for path in sorted(
        [*ROOT.glob("tests/test_*.py"), *ROOT.glob("integration/test_*.py")]
    ):
        for function in ast.walk(ast.parse(path.read_text())):
            if not (
                isinstance(function, ast.FunctionDef)
                and function.name.startswith("test")
            ):
                continue
            for node in ast.walk(function):
                if (
                    isinstance(node, ast.If)
                    and _mentions_the_environment(node.test)
                    and any(
                        isinstance(statement, ast.Return) for statement in node.body
                    )
                ):
                    early_returns.append(
                        f"{path.relative_to(ROOT)}:{node.lineno} {function.name}"
                    )
    assert not early_returns
