"""The GPU check: the tests and the benchmarks on a GPU machine, in one call.

A GPU machine comes rarely and briefly (about a quarter of an hour in all, one
command of at most ten minutes) and bare: CUDA builds of torch and jax, no
Keras, no TensorFlow, no network. In the repository's root there, ``run``
does the whole check within `DEADLINE_S`:

1. prints the Python, the torch and jax versions and the devices each sees;
2. installs Keras and pytest from wheels carried beside the tree
   (``pip install --no-index --find-links .gpu_wheels``);
3. runs a sample of the engine and layer tests (`FULL`: every test function,
   on a few of its parametrizations) under ``KERAS_BACKEND=jax``, then
   ``torch``, each in its own process and time limit, in full float32 (TF32
   off: the tests compare with NumPy at float32 tolerances);
4. runs each part of `BENCH_PARTS` (``python -m benchmarks.run --only PART``)
   under jax and torch, each in its own process, in the time left; a part that
   fails (one this tree does not have yet, say) is logged and the next runs.
   The benchmarks run as a user's model would, TF32 as each backend defaults.

What it writes under ``--out`` (7 files; the device returns at most 8):
``summary.json`` (the machine, and per step its command, exit status, wall
time, and for the tests the pass/fail counts), ``check.log`` (what this
script prints), ``tests_jax.log``, ``tests_torch.log``, ``bench.log`` and
``bench_jax.json``, ``bench_torch.json`` (``benchmarks/run.py``'s results,
every part merged). Exit status: 0 when every test passed and every step
finished, 1 when a test failed or a test step did not finish, 2 when only a
benchmark step did not.

Prepare the wheels here, where PyPI is reachable (``nox -s gpu_wheels``)::

    python integration/gpu_check.py prepare

On the GPU machine, with ``.gpu_wheels`` carried::

    python3 integration/gpu_check.py run --out "$OUT"

Rehearse it on a CPU (a tiny test subset, short limits)::

    python integration/gpu_check.py run --out /tmp/gpu-check --quick
"""

import argparse
import dataclasses
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
WHEELS = ROOT / ".gpu_wheels"

# --------------------------------------------------------------------------
# What the check carries, runs and allows itself
# --------------------------------------------------------------------------

# Installed from the carried wheels, with what they depend on.
REQUIREMENTS = ("keras", "h5py", "pytest")
# The device's Python is not known in advance: wheels for each.
PYTHON_VERSIONS = ("3.10", "3.11", "3.12", "3.13")
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
)
UV_PLATFORM = "x86_64-manylinux_2_28"  # the newest of PLATFORMS, in uv's words
# On the device already, with its torch and jax: the backends and what they
# depend on. Carried again they would cost tens of MB (numpy alone 16 MB per
# Python) and could replace the builds the backends were installed with.
PRESENT_ON_DEVICE = frozenset(
    {
        "torch",
        "triton",
        "jax",
        "jaxlib",
        "numpy",
        "scipy",
        "ml-dtypes",
        "opt-einsum",
        "typing-extensions",
        "setuptools",
    }
)
PRESENT_ON_DEVICE_PREFIXES = ("nvidia-", "jax-cuda")
# The wheels travel with the tree in 64 MiB; the tree takes a few.
WHEELS_LIMIT_MB = 40

BACKENDS = ("jax", "torch")
# Parts of benchmarks/run.py, in the order they run.
BENCH_PARTS = "deepface,genomics"
BENCH_ARGS = ("--no-memory",)  # peak host memory says nothing about a GPU


@dataclasses.dataclass(frozen=True)
class Plan:
    """What the check runs and the limits (seconds) of its steps.

    `per_test` cases of each test function run (``integration/gpu_sample.py``,
    per backend): every property is checked, on fewer cases. The benchmark
    steps share what the tests leave, at most `bench_limit_s` each.
    """

    tests: tuple
    per_test: dict
    test_limit_s: dict
    bench_limit_s: float
    install_limit_s: float = 90
    probe_limit_s: float = 60


# The engine and layer tests of the formulations, padding modes, position
# groups, quantized kernels and the transposed layers. On a 2-core CPU here
# (2026-12-04, shared) the sample took 57 s of CPU under jax (1 case each,
# 94 tests; nearly all of it compilation, which is slower for a GPU) and
# 13 s under torch (3 each, 193 tests).
FULL = Plan(
    tests=(
        "tests/test_formulations.py",
        "tests/test_padding_modes.py",
        "tests/test_position_groups.py",
        "tests/test_quantization.py",
        "tests/test_layers_transpose.py",
        "tests/test_transpose.py",
        "tests/test_taps.py",  # the per-tap formulation (issue 32), once merged
    ),
    per_test={"jax": 1, "torch": 3},
    test_limit_s={"jax": 150, "torch": 60},
    bench_limit_s=150,
)
# A rehearsal on a CPU: one small file, short limits.
QUICK = Plan(
    tests=("tests/test_quantization.py",),
    per_test={"jax": 1, "torch": 1},
    test_limit_s={"jax": 90, "torch": 90},
    bench_limit_s=60,
)

# Seconds. Everything is done within DEADLINE_S of the start; a step is
# interrupted (SIGINT: pytest prints its summary) at its limit, killed
# GRACE_S later, and skipped if it would get less than MIN_STEP_S.
DEADLINE_S = 480
GRACE_S = 10
RESERVE_S = 5
MIN_STEP_S = 10

# Full float32 for the tests: TF32 (on by default for convolutions in torch
# and for matmuls in JAX on this GPU) misses their float32 tolerances.
FULL_FLOAT32_ENV = {
    "NVIDIA_TF32_OVERRIDE": "0",
    "JAX_DEFAULT_MATMUL_PRECISION": "highest",
}

OUTCOME = re.compile(r"::\S.* (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b")


# --------------------------------------------------------------------------
# prepare: the wheels, here
# --------------------------------------------------------------------------


def _normalized(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def _carried(name):
    name = _normalized(name)
    return name not in PRESENT_ON_DEVICE and not name.startswith(
        PRESENT_ON_DEVICE_PREFIXES
    )


def _download_flags(python_version):
    flags = ["--only-binary=:all:", "--implementation", "cp"]
    flags += ["--python-version", python_version]
    for name in PLATFORMS:
        flags += ["--platform", name]
    return flags


def _resolved(python_version, uv):
    """``(name, version)`` of each distribution `REQUIREMENTS` resolve to on
    CPython `python_version` for manylinux x86_64. uv resolves: pip evaluates
    environment markers (pytest's ``tomli; python_version < "3.11"``) for the
    Python it runs on, whatever ``--python-version`` says."""
    with tempfile.TemporaryDirectory() as scratch:
        requirements = pathlib.Path(scratch) / "requirements.in"
        requirements.write_text("\n".join(REQUIREMENTS) + "\n")
        compiled = subprocess.run(
            [
                *(*uv, "pip", "compile", "--quiet", "--no-header", "--no-annotate"),
                *("--python-version", python_version, "--only-binary", ":all:"),
                *("--python-platform", UV_PLATFORM, str(requirements)),
            ],
            stdout=subprocess.PIPE,
            text=True,
            check=True,
        ).stdout
    pins = [line.split("==") for line in compiled.split() if "==" in line]
    return [(name, version) for name, version in pins]


def prepare(wheels=WHEELS, uv=(sys.executable, "-m", "uv")):
    """`REQUIREMENTS` and their dependencies, less `PRESENT_ON_DEVICE`, as
    binary wheels for every Python of `PYTHON_VERSIONS`, in `wheels`."""
    shutil.rmtree(wheels, ignore_errors=True)
    wheels.mkdir(parents=True)
    for python_version in PYTHON_VERSIONS:
        pins = [
            f"{name}=={version}"
            for name, version in _resolved(python_version, uv)
            if _carried(name)
        ]
        print(f"Python {python_version}: {' '.join(pins)}", flush=True)
        subprocess.run(
            [
                *(sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"),
                *("--dest", str(wheels), *_download_flags(python_version), *pins),
            ],
            check=True,
        )
    files = sorted(wheels.glob("*.whl"))
    total_mb = sum(path.stat().st_size for path in files) / 2**20
    for path in files:
        print(f"  {path.stat().st_size / 2**20:6.2f} MB  {path.name}")
    print(f"{len(files)} wheels, {total_mb:.1f} MB in {wheels}")
    if total_mb > WHEELS_LIMIT_MB:
        sys.exit(
            f"The wheels take {total_mb:.1f} MB, over the {WHEELS_LIMIT_MB} MB "
            "they may take of the 64 MiB that travel with the tree."
        )


# --------------------------------------------------------------------------
# run: the check, on the device
# --------------------------------------------------------------------------


class Steps:
    """Runs commands as steps against one deadline; keeps their records."""

    def __init__(self, deadline_s, echo):
        self.started = time.monotonic()
        self.deadline_s = deadline_s
        self.echo = echo
        self.records = []

    def left_s(self):
        """Seconds a step may still run, its grace and the reserve kept."""
        elapsed = time.monotonic() - self.started
        return self.deadline_s - elapsed - GRACE_S - RESERVE_S

    def run(self, name, command, limit_s, log_path, env=None):
        """`command` in the repository's root, its output appended to
        `log_path`, interrupted at `limit_s` or before the deadline; the
        step's record (also kept in `records`)."""
        limit_s = min(limit_s, self.left_s())
        shown = " ".join("<script>" if "\n" in part else part for part in command)
        record = {"step": name, "command": shown}
        self.records.append(record)
        if limit_s < MIN_STEP_S:
            record.update(status="skipped", reason="no time left before the deadline")
            self.echo(f"[{name}] skipped: no time left")
            return record
        self.echo(f"[{name}] {shown} (limit {limit_s:.0f} s)")
        started = time.monotonic()
        with open(log_path, "a") as log:
            log.write(f"\n===== {name}: {shown}\n")
            log.flush()
            process = subprocess.Popen(
                command,
                cwd=ROOT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its children are stopped with it
            )
            timed_out = False
            try:
                returncode = process.wait(timeout=limit_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                returncode = _stop(process)
            log.write(f"===== {name}: exit status {returncode}\n")
        wall_s = time.monotonic() - started
        record.update(
            status="timed out" if timed_out else "done",
            returncode=returncode,
            limit_s=round(limit_s),
            wall_s=round(wall_s, 1),
        )
        self.echo(
            f"[{name}] {record['status']}, exit status {returncode}, {wall_s:.0f} s"
        )
        return record


def _stop(process):
    """Interrupts `process`'s group (pytest then prints its summary), and
    kills it if it is still there `GRACE_S` later; its exit status."""
    os.killpg(process.pid, signal.SIGINT)
    try:
        return process.wait(timeout=GRACE_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        return process.wait()


PROBE = """
import json, platform, sys
found = {"python": platform.python_version(), "executable": sys.executable}
try:
    import torch
    found["torch"] = torch.__version__
    found["torch_cuda"] = torch.version.cuda
    found["torch_devices"] = [
        torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())
    ]
except Exception as error:
    found["torch"] = f"unavailable: {error!r}"
try:
    import jax
    found["jax"] = jax.__version__
    found["jax_devices"] = [str(device) for device in jax.devices()]
except Exception as error:
    found["jax"] = f"unavailable: {error!r}"
print("probe:", json.dumps(found))
"""


def probe(steps, python, limit_s, log_path):
    """The Python, torch and jax and the devices they see, from a fresh
    process, and ``nvidia-smi -L``."""
    steps.run("probe", [python, "-c", PROBE], limit_s, log_path)
    lines = log_path.read_text().splitlines()
    found = [line for line in lines if line.startswith("probe: ")]
    machine = json.loads(found[-1][len("probe: ") :]) if found else {}
    if shutil.which("nvidia-smi"):
        listed = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30
        )
        machine["nvidia_smi"] = listed.stdout.strip() or listed.stderr.strip()
    steps.echo(f"[probe] {json.dumps(machine)}")
    return machine


def test_counts(log_text):
    """Tests by outcome, counted from pytest's ``-v`` lines (so that a run
    interrupted at its limit is counted as far as it went), and pytest's
    closing line where it wrote one."""
    counts = {}
    for outcome in OUTCOME.findall(log_text):
        counts[outcome.lower()] = counts.get(outcome.lower(), 0) + 1
    closing = [line for line in log_text.splitlines() if re.match(r"^=+ .* in ", line)]
    return {"counts": counts, "pytest_summary": closing[-1] if closing else None}


def run_tests(steps, args, plan, backend, out):
    """The sample of `plan`'s tests on `backend`, in full float32; whether
    they ran and passed."""
    per_test = args.per_test or plan.per_test[backend]
    # A file this tree lacks (one not merged yet) would stop the whole run.
    tests = [t for t in args.tests or plan.tests if (ROOT / t.split("::")[0]).exists()]
    missing = sorted(set(args.tests or plan.tests) - set(tests))
    if missing:
        steps.echo(f"[tests-{backend}] not in this tree, left out: {missing}")
    log_path = out / f"tests_{backend}.log"
    record = steps.run(
        f"tests-{backend}",
        [
            *(args.python, "-m", "pytest", "-v", "-p", "no:cacheprovider"),
            *("-p", "integration.gpu_sample", "--per-test", str(per_test)),
            *("--durations=10", *tests),
        ],
        plan.test_limit_s[backend],
        log_path,
        env={"KERAS_BACKEND": backend, **FULL_FLOAT32_ENV},
    )
    if log_path.exists():
        record.update(test_counts(log_path.read_text()))
    steps.echo(f"[tests-{backend}] {record.get('counts')}")
    return record.get("returncode") == 0


def _modified_ns(path):
    return path.stat().st_mtime_ns if path.exists() else None


def run_bench(steps, args, plan, out):
    """Each part of `args.parts` on each backend, in the time left; whether
    every one finished."""
    parts = [part for part in args.parts.split(",") if part]
    results = pathlib.Path(tempfile.mkdtemp(prefix="gpu-check-bench-"))
    todo = [(part, backend) for part in parts for backend in BACKENDS]
    finished = True
    for done, (part, backend) in enumerate(todo):
        # Up to twice an even share of the time left: one part may take
        # longer than the next ones, not all of their time.
        share_s = 2 * steps.left_s() / (len(todo) - done)
        stored = results / f"{backend}.json"
        before = _modified_ns(stored)
        record = steps.run(
            f"bench-{part}-{backend}",
            [
                *(args.python, "-m", "benchmarks.run", "--only", part, "--merge"),
                *("--results", str(results), "--docs", str(results / "docs")),
                *args.bench_args,
            ],
            min(plan.bench_limit_s, share_s),
            out / "bench.log",
            env={"KERAS_BACKEND": backend},
        )
        # run.py writes its results file only once the part is done.
        record["recorded"] = _modified_ns(stored) != before
        if record["recorded"]:
            shutil.copyfile(stored, out / f"bench_{backend}.json")
        finished = finished and record.get("returncode") == 0
    return finished


def run_check(args):
    """The whole check; the exit status (see the module's docstring)."""
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    check_log = out / "check.log"
    plan = QUICK if args.quick else FULL

    def echo(text):
        print(text, flush=True)
        with open(check_log, "a") as log:
            log.write(text + "\n")

    steps = Steps(args.deadline, echo)
    summary = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "quick": args.quick,
        "tests": list(args.tests or plan.tests),
        "tests_per_function": {b: args.per_test or plan.per_test[b] for b in BACKENDS},
        "tests_env": FULL_FLOAT32_ENV,
        "bench_parts": args.parts,
        "steps": steps.records,
    }

    def write_summary():
        summary["wall_s"] = round(time.monotonic() - steps.started, 1)
        (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")

    summary["machine"] = probe(steps, args.python, plan.probe_limit_s, check_log)
    write_summary()
    installed = steps.run(
        "install",
        [
            *(args.python, "-m", "pip", "install", "--no-index", "--no-cache-dir"),
            *("--find-links", str(args.wheels.resolve()), *REQUIREMENTS),
        ],
        plan.install_limit_s,
        check_log,
    )
    write_summary()
    summary["tests_passed"] = installed.get("returncode") == 0
    for backend in BACKENDS:
        passed = run_tests(steps, args, plan, backend, out)
        summary["tests_passed"] = summary["tests_passed"] and passed
        write_summary()
    summary["bench_finished"] = run_bench(steps, args, plan, out)
    write_summary()
    echo(f"Summary ({out / 'summary.json'}):")
    for record in steps.records:
        echo(
            f"  {record['step']:28s} {record['status']:10s} "
            f"exit {record.get('returncode', '-')!s:4s} "
            f"{record.get('wall_s', 0):6.1f} s  {record.get('counts', '')}"
        )
    echo(f"  total {summary['wall_s']:.0f} s of {args.deadline:.0f} s")
    if not summary["tests_passed"]:
        return 1
    return 0 if summary["bench_finished"] else 2


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    prepare_parser = commands.add_parser("prepare", help="download the wheels here")
    prepare_parser.add_argument("--wheels", type=pathlib.Path, default=WHEELS)
    run_parser = commands.add_parser("run", help="the check, on the GPU machine")
    run_parser.add_argument(
        "--out", type=pathlib.Path, required=True, help="where the results go"
    )
    run_parser.add_argument(
        "--wheels", type=pathlib.Path, default=WHEELS, help="the carried wheels"
    )
    run_parser.add_argument(
        "--python", default=sys.executable, help="the Python to test with"
    )
    run_parser.add_argument(
        "--quick", action="store_true", help="a CPU rehearsal (the QUICK plan)"
    )
    run_parser.add_argument(
        "--tests", nargs="+", help="test files or ids (default: the plan's)"
    )
    run_parser.add_argument(
        "--per-test",
        type=int,
        help=f"cases run per test function (default: {FULL.per_test})",
    )
    run_parser.add_argument(
        "--parts", default=BENCH_PARTS, help=f"bench parts (default: {BENCH_PARTS})"
    )
    run_parser.add_argument(
        "--deadline",
        type=float,
        default=DEADLINE_S,
        help=f"seconds for everything (default: {DEADLINE_S})",
    )
    run_parser.add_argument(
        "--bench-args",
        nargs=argparse.REMAINDER,
        default=list(BENCH_ARGS),
        help="the rest of the line: arguments for every benchmarks.run",
    )
    args = parser.parse_args()
    if args.command == "prepare":
        prepare(args.wheels)
        return 0
    return run_check(args)


if __name__ == "__main__":
    sys.exit(main())
