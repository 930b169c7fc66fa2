"""Task runner: one virtualenv per backend.

    nox -s tests            # the whole matrix (tensorflow, jax, torch, numpy)
    nox -s tests-jax        # one backend
    nox -s demo             # train LocallyConnected2D vs Conv2D on digits
    nox -s lint             # ruff check + ruff format --check
    nox -s docs             # mkdocs build --strict
    nox -s bench            # benchmarks, one process per backend
    nox -s fixtures         # regenerate the Keras 2 model files (needs tf-keras)

Backends are installed for the accelerator this machine has: CPU builds by
default, CUDA builds when ``nvidia-smi`` is on the PATH (override with
``LOCALCONN_ACCELERATOR=cpu`` or ``cuda``).
"""

import os
import shutil

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True

BACKENDS = ("tensorflow", "jax", "torch", "numpy")
TRAINING_BACKENDS = ("tensorflow", "jax", "torch")


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
        # The pinned CPU build lies on local disk; an unpinned `torch` resolves
        # to a multi-GB CUDA build, which is only wanted where there is a GPU.
        return ["torch"] if cuda else ["torch==2.13.0"]
    if backend == "numpy":
        # Keras' numpy backend imports scipy, and jax for its FFTs.
        return ["jax[cpu]", "scipy"]
    raise ValueError(f"Unknown backend {backend!r}; expected one of {BACKENDS}.")


def install_backend(session, backend, *extra):
    session.install(*backend_requirements(backend), *extra)
    session.install("-e", ".")
    session.env["KERAS_BACKEND"] = backend


@nox.session(python=False)
def tests(session):
    """The whole matrix: tests-tensorflow, tests-jax, tests-torch, tests-numpy."""
    for backend in BACKENDS:
        session.notify(f"tests-{backend}", posargs=session.posargs)


def _tests_session(backend):
    def run_tests(session):
        # scipy: every session also loads models under the numpy backend.
        extra = ["pytest", "pytest-xdist", "h5py", "scipy"]
        if backend == "tensorflow":
            extra.append("tf-keras")  # the Keras 2 oracle
        install_backend(session, backend, *extra)
        session.run("pytest", *(session.posargs or ["-n", "2", "--dist", "loadfile"]))
        if backend == "jax" and not session.posargs:
            # The docstring examples run as doctests in one session.
            session.run("pytest", "--doctest-modules", "keras_localconn", "-q")

    run_tests.__doc__ = f"Unit and integration tests under KERAS_BACKEND={backend}."
    return nox.session(name=f"tests-{backend}")(run_tests)


for _backend in BACKENDS:
    _tests_session(_backend)


@nox.session
def lint(session):
    """ruff check and ruff format --check."""
    session.install("ruff==0.17.6")  # formatting changes between releases
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


def _backend_from_posargs(session, default="jax"):
    """`--backend NAME` in the posargs, else $KERAS_BACKEND, else `default`."""
    args = list(session.posargs)
    backend = os.environ.get("KERAS_BACKEND", default)
    if "--backend" in args:
        at = args.index("--backend")
        backend = args[at + 1]
        del args[at : at + 2]
    if backend not in TRAINING_BACKENDS:
        session.error(f"--backend must be one of {TRAINING_BACKENDS}, not {backend!r}")
    return backend, args


@nox.session
def demo(session):
    """Train LocallyConnected2D beside Conv2D on scikit-learn's digits."""
    backend, args = _backend_from_posargs(session)
    install_backend(session, backend, "scikit-learn", "matplotlib")
    session.run("python", "integration/demo_digits.py", *args)


@nox.session
def docs(session):
    """Build the documentation site with mkdocs --strict."""
    # ruff formats the long layer signatures on the API pages.
    install_backend(session, "jax", "mkdocs-material", "mkdocstrings[python]", "ruff")
    # Material 9 prints an end-of-life banner (May 2027) on every build.
    session.env["NO_MKDOCS_2_WARNING"] = "1"
    session.run("mkdocs", "build", "--strict", *session.posargs)


@nox.session
@nox.parametrize("backend", [nox.param(b, id=b) for b in TRAINING_BACKENDS])
def bench(session, backend):
    """Benchmarks against each backend's best alternative and the matmul floor."""
    anchors = {"tensorflow": ["tf-keras"], "jax": ["flax"], "torch": []}
    install_backend(session, backend, "matplotlib", *anchors[backend])
    session.run("python", "benchmarks/run.py", *session.posargs)


@nox.session
def fixtures(session):
    """Regenerate the Keras 2 model files under integration/ with tf-keras."""
    install_backend(session, "tensorflow", "tf-keras", "h5py")
    session.env["TF_USE_LEGACY_KERAS"] = "1"
    session.run("python", "integration/make_keras2_fixtures.py", *session.posargs)


@nox.session
@nox.parametrize("backend", [nox.param(b, id=b) for b in TRAINING_BACKENDS])
def keras3_fixtures(session, backend):
    """Rewrite integration/keras3_fixtures/model_<backend>.keras and its data."""
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


@nox.session
@nox.parametrize("backend", [nox.param(b, id=b) for b in TRAINING_BACKENDS])
def export(session, backend):
    """Deployment: ONNX, LiteRT and OpenVINO exports, and the DeepFace port."""
    # Each backend's converter; tf-keras (in the group) brings TensorFlow into
    # every session, for the Keras 2 side of the DeepFace port.
    converters = {
        "tensorflow": ["tf2onnx", "ai-edge-litert"],
        "jax": ["jax2onnx"],
        "torch": ["onnxscript"],
    }
    pyproject = nox.project.load_toml("pyproject.toml")
    group = nox.project.dependency_groups(pyproject, "export")
    install_backend(session, backend, *group, *converters[backend])
    tests = ["integration/test_export_formats.py"]
    if backend != "tensorflow":  # tests-tensorflow, which has tf-keras, runs it
        tests.append("integration/test_deepface.py")
    session.run("pytest", *(session.posargs or tests))
