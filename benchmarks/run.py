"""Benchmark this package against the backend's anchor and the matmul floor.

    KERAS_BACKEND=jax python -m benchmarks.run     # what `nox -s bench-jax` runs

One process per backend (the one in $KERAS_BACKEND). In this process every
implementation of a shape is timed side by side, forward and
forward+backward, in interleaved rounds after a warm-up, and the medians are
kept. Build + first call and the peak memory of one forward+backward step are
measured in a fresh subprocess per implementation, so that neither sees what
another one compiled or allocated.

Results go to ``benchmarks/results/<backend>.json``; then the performance page
(``docs/performance.md`` and ``docs/img/performance.png``) is rewritten from
every results file present, so running the backends one by one fills it in.

After those shapes, ``models.py`` measures the stream and GEMM rates of this
backend and of numpy, and times DeepFace's locally connected layers, other
fields' regimes (``cases.REGIMES``) and the chunk-size curve of the engine's
forward pass against the limit they set (``--no-models`` skips all three);
the page holds them against the machine's limit, the best rates of every
backend's run. On TensorFlow, where oneDNN is off by default, DeepFace's
layers are timed a second time in a fresh process with
``TF_ENABLE_ONEDNN_OPTS=1``. ``results["machine"]`` holds CPU 0's data caches
(as ``keras_localconn._machine`` reads them), which the chunk-size chart marks.

After them, ``groups.py`` times DeepFace's L4 with position groups
(blocks of 2x2 and 4x4, one group) beside the ungrouped layer and
``keras.layers.Conv2D``, ``quantization.py`` DeepFace's layers quantized
(int8, weight-only int8, int4) beside float32 and its limit, and
``genomics.py`` the genomics models (``cases.GENOMICS``) against their
limit; in the TensorFlow run, also tf.keras 2's models of them
(``implementation=1`` and ``=3``), each in a fresh process with a time limit.

Options: ``--only PARTS`` (comma-separated, of ``cases``, ``deepface``,
``regimes``, ``chunk-curve``, ``groups``, ``quantize``, ``genomics``; default
all) picks the parts; ``--cases a,b``, ``--impls substring``, ``--regimes
a,b``, ``--genomics a,b``, ``--curve-layers L4,L5`` and ``--curve-batches
1,8`` restrict them; ``--budget SECONDS`` is the timing budget per shape and
mode of the cases and of the genomics models; ``--keras2-timeout SECONDS``
limits each tf.keras 2 genomics process (0: none is started);
``--no-memory`` skips the subprocesses; ``--report-only`` only rewrites
the page;
``--results DIR`` and ``--docs DIR`` put the results and the page elsewhere
(a trial run), ``--no-save`` writes neither; ``--merge`` adds the parts
run to the stored results file instead of replacing it (the parts not run
keep their figures and the date of their run; ``merged`` lists what was
added when).
"""

import argparse
import datetime
import gc
import json
import os
import pathlib
import platform
import subprocess
import sys
import time

from benchmarks import genomics, groups, harness, models, quantization, report
from benchmarks.cases import CASES, DEEPFACE_LAYERS, GENOMICS, REGIMES
from benchmarks.impls import IMPLS, case_arrays, floor_arrays, warm_up_backend

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
CHILD_TIMEOUT_S = 90


def _impls(backend, pattern=None):
    impls = IMPLS[backend]
    if pattern:
        impls = tuple(i for i in impls if pattern in i.name or i.role == "floor")
    return impls


def _select(shapes, names=None):
    """`shapes`, or those named in `names` (comma-separated), in that order."""
    if not names:
        return shapes
    by_name = {shape.name: shape for shape in shapes}
    return tuple(by_name[name] for name in names.split(","))


# What a run times, in this order: `cases.CASES` here, then models.py's
# DeepFace layers, other fields' regimes and the chunk-size curve, position
# groups, the quantized layers and the genomics models.
PARTS = (
    "cases",
    "deepface",
    "regimes",
    "chunk-curve",
    "groups",
    "quantize",
    "genomics",
)
MODEL_PARTS = PARTS[1:]


def _parts(text):
    """The parts of a comma-separated ``--only`` value, checked."""
    parts = tuple(text.split(","))
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown parts {unknown}; choose from {', '.join(PARTS)}"
        )
    return parts


def _batches(text):
    return tuple(int(batch) for batch in text.split(","))


# --------------------------------------------------------------------------
# Speed: every implementation of one shape in this process, interleaved
# --------------------------------------------------------------------------


def time_case(case, impls, budget_s, min_rounds=3, max_rounds=25):
    """Median ms of forward and forward+backward, per implementation.

    Rounds interleave the implementations, so load from elsewhere on the
    machine hits all of them alike. An implementation leaves the rounds once
    it has `min_rounds` samples and has used `budget_s`; the others go on
    while the round count is under `max_rounds` and the budget lasts.
    """
    runners, needed = {}, {}
    for impl in impls:
        runner = impl.make(case)
        # The first calls compile.
        first = max(harness.timed(runner.forward), harness.timed(runner.fwd_bwd))
        if first < budget_s / 4:
            runner.forward()
            runner.fwd_bwd()
        runners[impl.name] = runner
        # Very slow implementations (seconds per call, tens of times slower
        # than the others) get one sample: the ratio needs no better.
        needed[impl.name] = min_rounds if first < budget_s else 1
    results = {}
    for mode in ("forward", "fwd_bwd"):
        steps = {name: getattr(runner, mode) for name, runner in runners.items()}
        samples = harness.rounds_per_step_budget(steps, needed, budget_s, max_rounds)
        for name, values in samples.items():
            entry = results.setdefault(name, {})
            entry[f"{mode}_ms"] = harness.median_ms(values)
            entry[f"{mode}_runs"] = len(values)
    return results


# --------------------------------------------------------------------------
# Build + first call and peak memory: one fresh subprocess per implementation
# --------------------------------------------------------------------------


def child(case_name, impl_name):
    """Runs in the subprocess; prints one JSON line."""
    backend = harness.backend()
    (case,) = _select(CASES, case_name)
    (impl,) = [i for i in _impls(backend) if i.name == impl_name]
    import keras  # noqa: F401  (import time is not build time)

    if backend == "jax":
        import jax  # noqa: F401
    if backend == "tensorflow":
        import tensorflow  # noqa: F401
        import tf_keras  # noqa: F401
    if backend == "torch":
        import torch  # noqa: F401

    warm_up_backend(backend)
    case_arrays(case)  # the random inputs are made (and cached) before the clock
    floor_arrays(case)
    start = time.perf_counter()
    runner = impl.make(case)
    made = time.perf_counter()
    runner.forward()
    build_s = time.perf_counter() - start
    first_step_s = harness.timed(runner.fwd_bwd)
    timings = {}
    if case.name in impl.timed_in_child:
        for mode in ("forward", "fwd_bwd"):
            values = [harness.timed(getattr(runner, mode))]
            if values[0] < 2:
                values += [harness.timed(getattr(runner, mode)) for _ in range(2)]
            timings[f"{mode}_ms"] = harness.median_ms(values)
            timings[f"{mode}_runs"] = len(values)
    runner.fwd_bwd()
    gc.collect()
    step_peak_mb, resident_mb = harness.step_peak_mb(runner.fwd_bwd)
    print(
        json.dumps(
            {
                **timings,
                "build_s": build_s,
                "weights_s": made - start,
                "first_step_s": first_step_s,
                "step_peak_mb": step_peak_mb,
                "resident_mb": resident_mb,
            }
        )
    )


def _run_json_child(arguments, timeout_s, **env_overrides):
    """This module with `arguments` in a fresh process; its last stdout line
    as JSON, or ``{"timeout_s": ...}`` / ``{"error": ...}``."""
    env = dict(os.environ, **env_overrides)
    command = [sys.executable, "-m", "benchmarks.run", *arguments]
    try:
        done = subprocess.run(
            command,
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired:
        return {"timeout_s": timeout_s}
    if done.returncode != 0:
        print(done.stderr[-3000:], file=sys.stderr)
        return {"error": done.stderr.strip().splitlines()[-1][:200]}
    return json.loads(done.stdout.strip().splitlines()[-1])


# Large buffers in their own mappings, handed back to the system when freed:
# the resident set then follows what is live, not what glibc keeps.
_MEMORY_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(1 << 20),
    "MALLOC_TRIM_THRESHOLD_": str(1 << 20),
}


def run_child(case, impl):
    return _run_json_child(
        ["--child", case.name, impl.name], CHILD_TIMEOUT_S, **_MEMORY_ENV
    )


def run_models_with_onednn():
    """`models.time_models` on TensorFlow in a fresh process with oneDNN on."""
    return _run_json_child(["--child-models"], 1800, TF_ENABLE_ONEDNN_OPTS="1")


def run_keras2_child(case, implementation, timeout_s):
    """`genomics.keras2_record` of `case` in a fresh process, or why not."""
    reason = case.keras2_skipped.get(implementation) or models.keras2_missing()
    if reason:
        return {"skipped": reason}
    if timeout_s <= 0:
        return {"skipped": "not run (--keras2-timeout 0)"}
    arguments = ["--child-keras2", case.name, str(implementation)]
    return _run_json_child(arguments, timeout_s, **_MEMORY_ENV)


def run_model_child(model_name):
    """`models.training_step_peak_mb` in a fresh process (same environment)."""
    return _run_json_child(["--child-model", model_name], 600, **_MEMORY_ENV)


# --------------------------------------------------------------------------
# Environment description
# --------------------------------------------------------------------------


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_caches():
    """CPU 0's data and unified caches, found as the package finds them
    (`keras_localconn._machine`, from Linux's sysfs): level, type, size and
    the CPUs that share each (``shared_cpu_list``); [] where sysfs lacks them."""
    from keras_localconn import _machine

    caches = []
    for level, index in _machine._sysfs_data_caches(_machine._SYSFS_CACHE):
        try:
            caches.append(
                {
                    "level": level,
                    "type": (index / "type").read_text().strip(),
                    "size_bytes": _machine._parse_size((index / "size").read_text()),
                    "shared_cpu_list": (index / "shared_cpu_list").read_text().strip(),
                }
            )
        except (OSError, ValueError):
            continue
    return caches


def _machine():
    return {
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "system": f"{platform.system()} {platform.release()}",
        "load_average_at_start": os.getloadavg()[0],
        "caches": cpu_caches(),
    }


# --------------------------------------------------------------------------
# The parts of a run
# --------------------------------------------------------------------------


def time_cases(backend, impls, args):
    """Every implementation of the `cases.CASES` chosen, in this process,
    then build and memory in a fresh one each; a JSON-ready dict by case."""
    timed = {}
    for case in _select(CASES, args.cases):
        case_impls = [i for i in impls if i.runs_on(case)]
        print(f"[{backend}] {case.name}: timing {len(case_impls)} impls", flush=True)
        timings = time_case(
            case,
            [i for i in case_impls if case.name not in i.timed_in_child],
            args.budget,
        )
        gc.collect()
        if not args.no_memory:
            for impl in case_impls:
                if impl.role in ("floor", "variant"):
                    continue
                timings.setdefault(impl.name, {}).update(run_child(case, impl))
        timed[case.name] = timings
        for name, entry in timings.items():
            print(f"    {name:32s} {json.dumps(entry)}", flush=True)
    return timed


def _wall_s(fn, *args):
    """``(fn(*args), seconds it took)``."""
    started = time.time()
    return fn(*args), time.time() - started


def _deepface(backend, args):
    """`models.time_models`, and the training memory in fresh processes."""
    print(f"[{backend}] DeepFace layers against the machine's limit", flush=True)
    record = models.time_models(backend)
    if not args.no_memory:
        record["training_memory"] = {
            name: run_model_child(name) for name in models.MODEL_BUILDERS
        }
        print(f"    memory: {record['training_memory']}", flush=True)
    return record


def _genomics(backend, rates, args):
    """`genomics.time_genomics`; in the TensorFlow run (tf.keras 2 runs on
    TensorFlow whatever the backend: once is enough), tf.keras 2's models of
    the same cases, each in a fresh process (`run_keras2_child`)."""
    cases = _select(GENOMICS, args.genomics)
    record = genomics.time_genomics(rates, cases, args.budget)
    if backend == "tensorflow":
        for case in cases:
            record[case.name]["keras2"] = {
                genomics.keras2_name(i): run_keras2_child(case, i, args.keras2_timeout)
                for i in genomics.KERAS2_IMPLEMENTATIONS
            }
            print(f"    tf.keras 2: {record[case.name]['keras2']}", flush=True)
    return record


def time_model_parts(backend, parts, args):
    """The rates, then models.py's `parts` (DeepFace's layers and their
    training memory, the regimes, the chunk-size curve, position groups,
    the quantized layers, the genomics models); a JSON-ready dict with the
    wall seconds of each part under ``part_wall_s``."""
    if "deepface" in parts:
        record, seconds = _wall_s(_deepface, backend, args)
        record["part_wall_s"] = {"deepface": seconds}
    else:
        record, seconds = _wall_s(models.measure_rates, backend)
        record["part_wall_s"] = {"rates": seconds}
    rates = record["rates"]
    if "regimes" in parts:
        print(f"[{backend}] other fields' regimes", flush=True)
        regimes = _select(REGIMES, args.regimes)
        record["regimes"], record["part_wall_s"]["regimes"] = _wall_s(
            models.time_regimes, rates, regimes
        )
    if "chunk-curve" in parts:
        print(f"[{backend}] the chunk-size curve", flush=True)
        layers = _select(DEEPFACE_LAYERS, args.curve_layers)
        record["chunk_curve"], record["part_wall_s"]["chunk-curve"] = _wall_s(
            models.time_chunk_curve, backend, rates, layers, args.curve_batches
        )
    if "groups" in parts:
        print(f"[{backend}] position groups on L4", flush=True)
        record["groups"], record["part_wall_s"]["groups"] = _wall_s(
            groups.time_groups, rates
        )
    if "quantize" in parts:
        print(f"[{backend}] DeepFace's layers quantized", flush=True)
        record["quantization"], record["part_wall_s"]["quantize"] = _wall_s(
            quantization.time_quantization, rates
        )
    if "genomics" in parts:
        print(f"[{backend}] genomics models", flush=True)
        record["genomics"], record["part_wall_s"]["genomics"] = _wall_s(
            _genomics, backend, rates, args
        )
    print(f"    seconds per part: {record['part_wall_s']}", flush=True)
    return record


# --------------------------------------------------------------------------


def merged(stored, results, parts):
    """`stored` results with the `parts` of `results` added: the cases if
    they were run, and the models' parts, each with its wall time; the
    rates, machine and versions of `stored`'s run are kept (its other
    figures were measured at them), and ``merged`` records the addition."""
    if "cases" in parts:
        stored["cases"], stored["impls"] = results["cases"], results["impls"]
    new = results.get("models", {})
    if new:
        models_record = stored.setdefault("models", {})
        for key, value in new.items():
            if key == "part_wall_s":
                models_record.setdefault(key, {}).update(value)
            elif (
                key not in ("rates", "numpy_rates", "onednn")
                or key not in models_record
            ):
                models_record[key] = value
    stored.setdefault("merged", []).append(
        {"parts": list(parts), "date": results["date"], "versions": results["versions"]}
    )
    return stored


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=2, metavar=("CASE", "IMPL"))
    parser.add_argument("--child-model", metavar="MODEL")
    parser.add_argument("--child-keras2", nargs=2, metavar=("CASE", "IMPLEMENTATION"))
    parser.add_argument("--child-models", action="store_true")
    parser.add_argument(
        "--no-models", action="store_true", help="skip all of models.py"
    )
    parser.add_argument(
        "--only",
        type=_parts,
        default=PARTS,
        help=f"comma-separated parts to run, of {','.join(PARTS)} (default: all)",
    )
    parser.add_argument("--regimes", help="comma-separated names of cases.REGIMES")
    parser.add_argument("--genomics", help="comma-separated names of cases.GENOMICS")
    parser.add_argument(
        "--keras2-timeout",
        type=float,
        default=genomics.KERAS2_TIMEOUT_S,
        help="seconds per tf.keras 2 genomics process (0: none)",
    )
    parser.add_argument(
        "--curve-layers", help="comma-separated DeepFace layers of the curve"
    )
    parser.add_argument(
        "--curve-batches",
        type=_batches,
        default=models.CURVE_BATCHES,
        help="batches of the chunk-size curve",
    )
    parser.add_argument("--cases")
    parser.add_argument("--impls")
    parser.add_argument("--budget", type=float, default=4.0)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--no-save", action="store_true")
    parser.add_argument(
        "--merge", action="store_true", help="add the parts run to stored results"
    )
    parser.add_argument(
        "--results", type=pathlib.Path, default=RESULTS, help="where results go"
    )
    parser.add_argument(
        "--docs", type=pathlib.Path, default=report.DOCS, help="where the page goes"
    )
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    if args.child_model:
        print(json.dumps(models.training_step_peak_mb(args.child_model)))
        return
    if args.child_keras2:
        (case,) = _select(GENOMICS, args.child_keras2[0])
        print(json.dumps(genomics.keras2_record(case, int(args.child_keras2[1]))))
        return
    if args.child_models:
        print(json.dumps(models.time_models(harness.backend())))
        return
    if args.report_only:
        report.write_page(args.results, args.docs)
        return

    backend = harness.backend()
    started = time.time()
    impls = _impls(backend, args.impls)
    results = {
        "backend": backend,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime(
            "%Y-%m-%d %H:%M UTC"
        ),
        "machine": _machine(),
        "versions": harness.versions(backend),
        "impls": [
            {"name": i.name, "role": i.role, "note": i.note, "cases": i.cases}
            for i in impls
        ],
        "cases": {},
    }
    parts = [p for p in args.only if not (args.no_models and p in MODEL_PARTS)]
    if "cases" in parts:
        results["cases"] = time_cases(backend, impls, args)
    if set(parts) & set(MODEL_PARTS):
        results["models"] = time_model_parts(backend, parts, args)
        if backend == "tensorflow" and results["models"].get("onednn") is False:
            print(f"[{backend}] again, with TF_ENABLE_ONEDNN_OPTS=1", flush=True)
            results["models_onednn"] = run_models_with_onednn()
    results["wall_s"] = time.time() - started
    print(f"[{backend}] done in {results['wall_s']:.0f} s", flush=True)
    if args.no_save:
        return
    args.results.mkdir(parents=True, exist_ok=True)
    path = args.results / f"{backend}.json"
    if args.merge and path.exists():
        results = merged(json.loads(path.read_text()), results, parts)
    path.write_text(json.dumps(results, indent=1) + "\n")
    report.write_page(args.results, args.docs)


if __name__ == "__main__":
    main()
