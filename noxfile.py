"""Task runner: one virtualenv per session and backend.

    nox -s tests            # the whole matrix (tensorflow, jax, torch, numpy)
    nox -s tests-jax        # one backend (tests-tensorflow, tests-torch, ...)
    nox -s tests-oldest     # the lowest declared keras and numpy, on JAX
    nox -s lint             # ruff check + ruff format --check
    nox -s docs             # mkdocs build --strict
    nox -s build            # sdist + wheel, installed and imported in fresh venvs
    nox -s demo             # train LocallyConnected2D vs Conv2D on digits
    nox -s bench            # benchmarks, one process per backend
    nox -s fixtures         # regenerate the Keras 2 model files (needs tf-keras)
    nox -s keras3_fixtures  # rewrite the .keras files saved under each backend
    nox -s export           # ONNX, LiteRT, OpenVINO, DeepFace port, SavedModels
    nox -s gpu_wheels       # wheels integration/gpu_check.py carries to a GPU

Choosing a backend: the test sessions are named after theirs
(``tests-<backend>``). ``demo``, ``bench``, ``export`` and ``keras3_fixtures`` take
``--backend NAME`` after ``--`` (``nox -s demo -- --backend torch``); ``demo``
defaults to jax, the others to every training backend.
Each also exists per backend (``demo-torch``, ``bench-jax``, ...).

Backends are installed for the accelerator this machine has: CPU builds by
default, CUDA builds when ``nvidia-smi`` is on the PATH (override with
``LOCALCONN_ACCELERATOR=cpu`` or ``cuda``). On CPU, torch is pinned to a CPU
build, ``torch==2.13.0`` (an unpinned ``torch`` resolves to a CUDA build of
several GB); set ``LOCALCONN_TORCH`` to another pip requirement
(``LOCALCONN_TORCH=torch``, ``LOCALCONN_TORCH="torch>=2.6"``) to change it.

The test sessions run one pytest-xdist worker per CPU the process may use
(``-n auto``; ``PYTEST_XDIST_AUTO_NUM_WORKERS`` sets another number). Arguments
after ``--`` replace those options: ``nox -s tests-jax -- tests/test_ops.py``.

Development dependencies are the PEP 735 ``[dependency-groups]`` of
pyproject.toml.
"""

import os
import pathlib
import re
import shutil
import zipfile

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True

BACKENDS = ("tensorflow", "jax", "torch", "numpy")
TRAINING_BACKENDS = ("tensorflow", "jax", "torch")
PYPROJECT = nox.project.load_toml("pyproject.toml")

# The JAX release `tests-oldest` runs the lowest declared Keras on: an old one
# (June 2024) that the suite passes with, so the floors of the test tools it
# pulls in (ml-dtypes, scipy) stay low too.
OLDEST_JAX = "0.4.30"


def _groups(*names):
    return nox.project.dependency_groups(PYPROJECT, *names)


def _accelerator():
    chosen = os.environ.get("LOCALCONN_ACCELERATOR")
    if chosen:
        return chosen
    return "cuda" if shutil.which("nvidia-smi") else "cpu"


def backend_requirements(backend):
    """The pip requirements that give `backend` on this machine's accelerator."""
    cuda = _accelerator() == "cuda"
    if backend == "tensorflow":
        # `tensorflow` rather than `tensorflow-cpu`: tf-keras (the Keras 2
        # oracle used by the tests) depends on it by that name.
        return ["tensorflow[and-cuda]>=2.16" if cuda else "tensorflow>=2.16"]
    if backend == "jax":
        return ["jax[cuda12]" if cuda else "jax[cpu]"]
    if backend == "torch":
        # An unpinned `torch` resolves to a multi-GB CUDA build, only wanted
        # where there is a GPU; on a CPU the pin is a CPU build.
        default = "torch" if cuda else "torch==2.13.0"
        return [os.environ.get("LOCALCONN_TORCH", default)]
    if backend == "numpy":
        # Keras' numpy backend imports scipy, and jax for its FFTs.
        return ["jax[cpu]", "scipy"]
    raise ValueError(f"Unknown backend {backend!r}; expected one of {BACKENDS}.")


def install_backend(session, backend, *extra):
    session.install(*backend_requirements(backend), *extra)
    session.install("-e", ".")
    session.env["KERAS_BACKEND"] = backend


def _backend_sessions(name, backends, default, function):
    """`name` (choosing with ``--backend``) plus one `name-<backend>` each.

    The per-backend sessions hold the work, each in its own virtualenv;
    `name` runs the one ``--backend NAME`` picks, else `default` (a tuple).
    """
    for backend in backends:
        nox.session(name=f"{name}-{backend}")(_bind(function, backend))

    def dispatch(session):
        args = list(session.posargs)
        chosen = default
        if "--backend" in args:
            at = args.index("--backend")
            if at + 1 == len(args) or args[at + 1] not in backends:
                session.error(f"--backend must be one of {backends}")
            chosen = (args[at + 1],)
            del args[at : at + 2]
        for backend in chosen:
            session.notify(f"{name}-{backend}", posargs=args)

    dispatch.__doc__ = f"{function.__doc__} Backend: --backend NAME."
    nox.session(name=name, python=False)(dispatch)


def _bind(function, backend):
    def session_function(session):
        function(session, backend)

    session_function.__doc__ = f"{function.__doc__} ({backend})"
    return session_function


# pytest-xdist's `auto`: one worker per CPU this process may use, so the
# sessions follow whatever machine runs them. `loadfile` keeps each module on
# one worker, which then runs the module's setup once.
PYTEST_WORKERS = ["-n", "auto", "--dist", "loadfile"]


def _run_tests(session, backend):
    """Unit and integration tests."""
    groups = ["test", "keras2"] if backend == "tensorflow" else ["test"]
    install_backend(session, backend, *_groups(*groups))
    session.run("pytest", *(session.posargs or PYTEST_WORKERS))
    if backend == "jax" and not session.posargs:
        # The docstring examples run as doctests in one session.
        session.run("pytest", "--doctest-modules", "keras_localconn", "-q")


@nox.session(python=False)
def tests(session):
    """The whole matrix: tests-tensorflow, tests-jax, tests-torch, tests-numpy."""
    for backend in BACKENDS:
        session.notify(f"tests-{backend}", posargs=session.posargs)


for _backend in BACKENDS:
    nox.session(name=f"tests-{_backend}")(_bind(_run_tests, _backend))


def _lowest(requirement_name):
    """The version after `>=` in pyproject's requirement on `requirement_name`."""
    for requirement in PYPROJECT["project"]["dependencies"]:
        match = re.fullmatch(rf"{requirement_name}\s*>=\s*([\w.]+)", requirement)
        if match:
            return match.group(1)
    raise ValueError(f"pyproject.toml declares no {requirement_name}>=... floor")


@nox.session(name="tests-oldest")
def tests_oldest(session):
    """The tests with the lowest declared keras and numpy, on JAX."""
    cuda = _accelerator() == "cuda"
    jax = f"jax[cuda12]=={OLDEST_JAX}" if cuda else f"jax[cpu]=={OLDEST_JAX}"
    floor = [f"keras=={_lowest('keras')}", f"numpy=={_lowest('numpy')}"]
    # The floor pins constrain the test tools too (scipy, h5py built for it).
    constraints = pathlib.Path(session.create_tmp()) / "floor.txt"
    constraints.write_text("\n".join(floor) + "\n")
    session.install(jax, *floor, *_groups("test"), "-c", str(constraints))
    session.install("--no-deps", "-e", ".")
    session.env["KERAS_BACKEND"] = "jax"
    session.run("python", "-c", "import keras, numpy; print(keras.__version__)")
    session.run("pytest", *(session.posargs or PYTEST_WORKERS))


@nox.session
def lint(session):
    """ruff check and ruff format --check."""
    session.install(*_groups("lint"))
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def docs(session):
    """Build the documentation site with mkdocs --strict."""
    install_backend(session, "jax", *_groups("docs"))
    # Material 9 prints an end-of-life banner (May 2027) on every build.
    session.env["NO_MKDOCS_2_WARNING"] = "1"
    session.run("mkdocs", "build", "--strict", *session.posargs)


@nox.session
def build(session):
    """sdist and wheel: the wheel holds the package only; both install and import."""
    session.install(*_groups("build"))
    dist = pathlib.Path(session.create_tmp()).resolve() / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    session.run("python", "-m", "build", "--outdir", str(dist))
    (wheel,) = dist.glob("*.whl")
    (sdist,) = dist.glob("*.tar.gz")
    outside = sorted(
        name
        for name in zipfile.ZipFile(wheel).namelist()
        if not name.startswith(("keras_localconn/", "keras_localconn-"))
    )
    if outside:
        session.error(f"{wheel.name} holds files outside the package: {outside}")
    for archive in (wheel, sdist):
        venv = dist / ("venv-wheel" if archive == wheel else "venv-sdist")
        session.run("python", "-m", "venv", "--clear", str(venv))
        python = str(venv / "bin" / "python")
        session.run(
            python,
            *("-m", "pip", "install", "--quiet", str(archive), "jax[cpu]"),
            external=True,
        )
        # From outside the source tree, so that the installed copy is imported.
        with session.chdir(dist):
            session.run(
                python,
                "-c",
                "import keras_localconn, keras_localconn.legacy, "
                "keras_localconn.distribution; print(keras_localconn.__version__, "
                "keras_localconn.__file__)",
                env={"KERAS_BACKEND": "jax"},
                external=True,
            )


def _demo(session, backend):
    """Train LocallyConnected2D beside Conv2D on scikit-learn's digits."""
    install_backend(session, backend, *_groups("demo"))
    session.run("python", "integration/demo_digits.py", *session.posargs)


_backend_sessions("demo", TRAINING_BACKENDS, ("jax",), _demo)


def _bench(session, backend):
    """Benchmarks against each backend's best alternative and the matmul floor."""
    groups = ["bench", "bench-jax"] if backend == "jax" else ["bench"]
    install_backend(session, backend, *_groups(*groups))
    session.run("python", "-m", "benchmarks.run", *session.posargs)
    if not session.posargs:  # the transposed layers, beside their references
        session.run("python", "-m", "benchmarks.transpose")


_backend_sessions("bench", TRAINING_BACKENDS, TRAINING_BACKENDS, _bench)


@nox.session
def fixtures(session):
    """Regenerate the Keras 2 model files under integration/ with tf-keras."""
    install_backend(session, "tensorflow", *_groups("keras2"), "h5py")
    session.env["TF_USE_LEGACY_KERAS"] = "1"
    session.run("python", "integration/make_keras2_fixtures.py", *session.posargs)


def _keras3_fixtures(session, backend):
    """Rewrite integration/keras3_fixtures/<model>_<backend>.keras and its data.

    Every model of keras3_models.py (model, transpose, quantized) and of
    padding_models.py."""
    install_backend(session, backend)
    session.run(
        "python", "integration/keras3_models.py", "save", "integration/keras3_fixtures"
    )
    session.run(
        "python",
        "-m",
        "integration.padding_models",
        "save",
        "integration/keras3_fixtures",
    )


_backend_sessions(
    "keras3_fixtures", TRAINING_BACKENDS, TRAINING_BACKENDS, _keras3_fixtures
)


def _export(session, backend):
    """Deployment: ONNX, LiteRT and OpenVINO exports, the DeepFace port, and
    Keras 2 SavedModels imported under this backend."""
    # Each backend's converter; tf-keras (in the group) brings TensorFlow into
    # every session, for the Keras 2 side of the DeepFace port.
    converters = {
        "tensorflow": ["tf2onnx", "ai-edge-litert"],
        "jax": ["jax2onnx"],
        "torch": ["onnxscript"],
    }
    install_backend(session, backend, *_groups("export"), *converters[backend])
    tests = ["integration/test_export_formats.py"]
    if backend != "tensorflow":  # tests-tensorflow, which has tf-keras, runs them
        # The DeepFace port, and Keras 2 SavedModels (read with TensorFlow)
        # loaded under this backend.
        tests += [
            "integration/test_deepface.py",
            "integration/test_keras2_savedmodel.py",
        ]
    session.run("pytest", *(session.posargs or tests))


_backend_sessions("export", TRAINING_BACKENDS, TRAINING_BACKENDS, _export)


@nox.session
def gpu_wheels(session):
    """Wheels for the GPU check (integration/gpu_check.py), into .gpu_wheels."""
    # uv resolves for each Python the device may have; pip downloads.
    session.install("uv")
    session.run("python", "integration/gpu_check.py", "prepare", *session.posargs)
