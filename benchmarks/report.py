"""Write docs/performance.md and its chart from benchmarks/results/*.json.

The prose lives in ``benchmarks/performance_template.md``; the generated
tables replace its ``{{results}}`` line, so the page can be regenerated after
any backend's run (``python -m benchmarks.run --report-only``).

Every ratio to "the limit" is to the machine's limit: the best stream and
GEMM rates of every run present (each backend's own and numpy's, measured in
its process; `models.best_rates`), applied to each case's shapes
(`models.forward_limit_ms`, `models.training_limit_ms`). The ratio to the
backend's own limit, at its own rates, is kept beside it.

    python -m benchmarks.report [--results DIR] [--docs DIR]

rewrites the page from the results in DIR (default ``benchmarks/results``)
into another docs folder (default ``docs``: the page, and its charts under
``img/``), to check it against a trial run.
"""

import argparse
import json
import math
import pathlib

from benchmarks import groups, models, quantization
from benchmarks.cases import CASES, CASES_BY_NAME, DEEPFACE_LAYERS, REGIMES_BY_NAME

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
DOCS = ROOT / "docs"
TEMPLATE = HERE / "performance_template.md"
PAGE = "performance.md"  # in the docs folder, its charts in img/
CHART = "img/performance.png"
LIMIT_CHART = "img/performance_limit.png"
CURVE_CHART = "img/chunk_curve.png"
BACKENDS = ("tensorflow", "jax", "torch")
TITLES = {
    "tensorflow": "TensorFlow",
    "jax": "JAX",
    "torch": "PyTorch",
    "tensorflow-onednn": "TensorFlow + oneDNN",
}


def load(results_dir=RESULTS):
    results = {}
    for backend in BACKENDS:
        path = results_dir / f"{backend}.json"
        if path.exists():
            results[backend] = json.loads(path.read_text())
    return results


def _role(result, name):
    return next(i["role"] for i in result["impls"] if i["name"] == name)


def _by_role(result, case_name, role):
    timings = result["cases"].get(case_name, {})
    return [(n, t) for n, t in timings.items() if _role(result, n) == role]


def _fmt(value, digits=3):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.{digits}g}"


def _fmt_ratio(value):
    if value is None:
        return "–"
    return f"{value:.2g}" if value < 0.1 else f"{value:.2f}"


def _ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def _build_cell(entry):
    if "timeout_s" in entry:
        return f"> {entry['timeout_s']:.0f} (stopped)"
    if "error" in entry:
        return "failed"
    if "weights_s" in entry:
        return (
            f"{_fmt(entry['build_s'])} "
            f"({_fmt(entry['weights_s'], 2)} + "
            f"{_fmt(entry['build_s'] - entry['weights_s'], 2)})"
        )
    return _fmt(entry.get("build_s"))


def _memory_cell(entry):
    if "step_peak_mb" not in entry:
        return "–"
    return _fmt(entry["step_peak_mb"])


def backend_section(backend, result):
    versions = ", ".join(f"{k} {v}" for k, v in result["versions"].items())
    machine = result["machine"]
    lines = [
        f"### {TITLES[backend]}",
        "",
        f"Run {result['date']} on {machine['cpu']} ({machine['cores']} cores, "
        f"{machine['system']}; load average {machine['load_average_at_start']:.1f}"
        f" at the start), {versions}. The whole run took "
        f"{result['wall_s'] / 60:.1f} min.",
        "",
        "| shape | implementation | forward ms | fwd+bwd ms | forward × floor "
        "| fwd+bwd × floor | step peak MB | build + first call s (weights "
        "+ first call) "
        "| first fwd+bwd s |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for case in CASES:
        timings = result["cases"].get(case.name)
        if not timings:
            continue
        floor = next(iter(_by_role(result, case.name, "floor")), (None, {}))[1]
        for name, entry in timings.items():
            fwd, fb = entry.get("forward_ms"), entry.get("fwd_bwd_ms")
            build = _build_cell(entry) if "build_s" in entry or entry else "–"
            if _role(result, name) == "floor":
                build = "–"
            lines.append(
                f"| {case.label} | {name} | {_fmt(fwd)} | {_fmt(fb)} "
                f"| {_fmt_ratio(_ratio(fwd, floor.get('forward_ms')))} "
                f"| {_fmt_ratio(_ratio(fb, floor.get('fwd_bwd_ms')))} "
                f"| {_memory_cell(entry)} | {build} "
                f"| {_fmt(entry.get('first_step_s'))} |"
            )
    notes = [f"- *{i['name']}*: {i['note']}." for i in result["impls"] if i.get("note")]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines)


def _speedup(anchor, ours, key):
    if key not in anchor and "timeout_s" in anchor:
        return f"not measured (stopped after {anchor['timeout_s']:.0f} s)"
    return _fmt_ratio(_ratio(anchor.get(key), ours[key]))


def _limit_ms(mode, shapes, batch, rates):
    """The limit in ms of an ``"inference"`` or ``"training"`` step of
    `shapes` at `batch` under `rates`; None without rates."""
    if not rates:
        return None
    return models.LIMIT_MS[mode](shapes, batch, rates)


def _layer_limit_ms(key, rates):
    """The forward limit of one DeepFace layer, by its `models.case_key`."""
    shape, batch = models.parse_case_key(key)
    return _limit_ms("inference", (shape,), batch, rates)


def _stack_limit_ms(mode, entry, rates):
    """The limit of the L4-L6 stack's `mode` entry (`models.time_models`)."""
    return _limit_ms(mode, DEEPFACE_LAYERS, entry["batch"], rates)


def _case_limits(case, rates):
    """(forward, fwd+bwd) limits in ms of one of `cases.CASES`, or Nones."""
    return (
        _limit_ms("inference", (case,), case.batch, rates),
        _limit_ms("training", (case,), case.batch, rates),
    )


def summary_rows(backend, result, machine):
    """One row per shape: the ratios the targets are about."""
    rows = []
    for case in CASES:
        if case.name not in result["cases"]:
            continue
        ours = dict(_by_role(result, case.name, "ours"))
        floor = dict(_by_role(result, case.name, "floor"))
        anchors = _by_role(result, case.name, "anchor")
        if not ours or not floor:
            continue
        o, f = next(iter(ours.values())), next(iter(floor.values()))
        # The anchor to beat is the fastest one that ran.
        anchor_name, a = min(
            anchors, key=lambda item: item[1].get("fwd_bwd_ms", math.inf)
        )
        mem = _ratio(o.get("step_peak_mb"), a.get("step_peak_mb"))
        missed = []
        if o["forward_ms"] > 1.5 * f["forward_ms"]:
            missed.append("forward ≤ 1.5× floor")
        if o["fwd_bwd_ms"] > 1.5 * f["fwd_bwd_ms"]:
            missed.append("fwd+bwd ≤ 1.5× floor")
        if a.get("fwd_bwd_ms", math.inf) < 2 * o["fwd_bwd_ms"]:
            missed.append("≥ 2× anchor")
        if mem is not None and mem > 1:
            missed.append("memory ≤ anchor")
        if case.name == "large" and o.get("build_s", 0) > 1.5:
            missed.append("build + first call < 1.5 s")
        limits = _case_limits(case, machine)
        rows.append(
            f"| {TITLES[backend]} | {case.label} "
            f"| {_fmt_ratio(_ratio(o['forward_ms'], limits[0]))} "
            f"| {_fmt_ratio(_ratio(o['fwd_bwd_ms'], limits[1]))} "
            f"| {_fmt_ratio(_ratio(o['forward_ms'], f['forward_ms']))} "
            f"| {_fmt_ratio(_ratio(o['fwd_bwd_ms'], f['fwd_bwd_ms']))} "
            f"| {anchor_name} "
            f"| {_speedup(a, o, 'forward_ms')} "
            f"| {_speedup(a, o, 'fwd_bwd_ms')} "
            f"| {_memory_cell(o)} / {_memory_cell(a)} ({_fmt_ratio(mem)}) "
            f"| {_build_cell(o) if case.report_build else '–'} / "
            f"{_build_cell(a) if case.report_build else '–'} "
            f"| {', '.join(missed) or 'none'} |"
        )
    return rows


def summary(results, machine):
    lines = [
        "| backend | shape | ours ÷ limit, forward | ours ÷ limit, fwd+bwd "
        "| ours ÷ floor, forward | ours ÷ floor, fwd+bwd "
        "| fastest anchor | anchor ÷ ours, forward | anchor ÷ ours, fwd+bwd "
        "| step peak MB, ours / anchor (ratio) | build + first call s "
        "(weights + first call), ours / anchor | targets missed |",
        "|---|---|--:|--:|--:|--:|---|--:|--:|--:|--:|---|",
    ]
    for backend, result in results.items():
        lines += summary_rows(backend, result, machine)
    return "\n".join(lines)


def model_runs(results):
    """DeepFace runs by title key: each backend as installed, then TensorFlow
    again with TF_ENABLE_ONEDNN_OPTS=1 where `run.py` timed it."""
    runs = {b: r["models"] for b, r in results.items() if "models" in r}
    onednn = results.get("tensorflow", {}).get("models_onednn", {})
    if "forward" in onednn:
        runs["tensorflow-onednn"] = onednn
    return runs


def runs_with(runs, *keys):
    """The runs of `runs` that hold every one of `keys`."""
    return {k: run for k, run in runs.items() if all(key in run for key in keys)}


def rate_sets(runs):
    """Label -> rates of every process in `runs`: the backend's own and, where
    measured, numpy's in the same process."""
    sets = {}
    for key, run in runs.items():
        if "rates" in run:
            sets[TITLES[key]] = run["rates"]
        if "numpy_rates" in run:
            sets[f"numpy, in the {TITLES[key]} run"] = run["numpy_rates"]
    return sets


def machine_rates(results):
    """The machine's rates: the best of every results file (`models.best_rates`)."""
    return models.best_rates(rate_sets(model_runs(results)))


def _gb_per_s(rates, key):
    return f"{rates[key] / 1e9:.1f}" if key in rates else "–"


def rates_lines(runs, machine):
    """Every rate measured, and which of them set the machine's limit."""
    lines = [
        "| measured by | stream rate GB/s (sum of 239 MB) | stream rate GB/s "
        "(copy of 239 MB, read + write) | GEMM rate GFLOP/s (2048² matmul) |",
        "|---|--:|--:|--:|",
    ]
    for label, rates in rate_sets(runs).items():
        lines.append(
            f"| {label} | {_gb_per_s(rates, 'stream_bytes_per_s')} "
            f"| {_gb_per_s(rates, 'copy_bytes_per_s')} "
            f"| {rates['gemm_flops_per_s'] / 1e9:.0f} |"
        )
    if machine:
        lines += [
            "",
            f"The machine's limit: stream "
            f"{machine['stream_bytes_per_s'] / 1e9:.1f} GB/s "
            f"({machine['stream_from']}), GEMM "
            f"{machine['gemm_flops_per_s'] / 1e9:.0f} GFLOP/s "
            f"({machine['gemm_from']}).",
        ]
    return lines


def models_section(results, machine):
    """DeepFace's layers: the rates, ours ÷ limit per backend and the spread
    between backends, the stack beside tf.keras 2, and what bounds them."""
    runs = model_runs(results)
    if not runs:
        return []
    return [
        "### DeepFace's layers against the limit",
        "",
        *rates_lines(runs, machine),
        *forward_lines(runs, machine),
        *stack_lines(runs, machine),
        *parts_lines(runs, machine),
    ]


def _spread(times):
    """The slowest ÷ the fastest of the known `times`."""
    known = [t for t in times if t]
    return _fmt_ratio(max(known) / min(known)) if len(known) > 1 else "–"


def forward_lines(runs, machine):
    """Each layer alone: ms, ÷ limit and ÷ own limit per backend; the spread."""
    runs = runs_with(runs, "forward")
    if not runs:
        return []
    keys = list(runs)
    installed = [k for k in keys if k in BACKENDS]
    onednn = "tensorflow-onednn" in runs
    header = "| case | " + " | ".join(
        f"{TITLES[k]} ms | {TITLES[k]} ÷ limit | {TITLES[k]} ÷ own limit" for k in keys
    )
    lines = [
        "",
        "Forward (`model.predict_on_batch`), one layer at a time; *÷ limit* is "
        "to the machine's limit, *÷ own limit* to the limit at that backend's "
        "own rates. The spread is the slowest ÷ the fastest of the three "
        "backends as installed"
        + (
            "; the last column puts TensorFlow with oneDNN in TensorFlow's place."
            if onednn
            else "."
        ),
        "",
        header + " | spread |" + (" spread, TF + oneDNN |" if onednn else ""),
        "|---|" + "--:|--:|--:|" * len(keys) + "--:|" + ("--:|" if onednn else ""),
    ]
    for case in runs[keys[0]]["forward"]:
        cells, times = [], {}
        limit = _layer_limit_ms(case, machine)
        for k in keys:
            times[k] = runs[k]["forward"].get(case, {}).get("ours_ms")
            own_limit = _layer_limit_ms(case, runs[k].get("rates"))
            cells.append(
                f"{_fmt(times[k])} | {_fmt_ratio(_ratio(times[k], limit))} "
                f"| {_fmt_ratio(_ratio(times[k], own_limit))}"
            )
        line = f"| {case} | " + " | ".join(cells)
        line += f" | {_spread([times[k] for k in installed])} |"
        if onednn:
            swapped = [
                "tensorflow-onednn" if k == "tensorflow" else k for k in installed
            ]
            line += f" {_spread([times[k] for k in swapped])} |"
        lines.append(line)
    return lines


def _versus_keras2_cells(entry, limit, own_limit):
    """ours ms | ÷ limit | ÷ own limit | tf.keras 2 ms | tf.keras 2 ÷ ours."""
    ours, keras2 = entry.get("ours_ms"), entry.get("keras2_ms")
    return (
        f"{_fmt(ours)} | {_fmt_ratio(_ratio(ours, limit))} "
        f"| {_fmt_ratio(_ratio(ours, own_limit))} "
        f"| {_fmt(keras2)} | {_fmt_ratio(_ratio(keras2, ours))}"
    )


def _stack_memory_cell(run):
    """Peak MB of the batch-32 training step: ours / tf.keras 2 (kernels)."""
    memory = run.get("training_memory", {})
    ours = memory.get("ours", {})
    if "step_peak_mb" not in ours:
        return "–"
    keras2 = memory.get("tf.keras 2 implementation=1", {})
    return (
        f"{_fmt(ours['step_peak_mb'])} / {_fmt(keras2.get('step_peak_mb'))} "
        f"({_fmt(ours['kernels_mb'])})"
    )


def stack_lines(runs, machine):
    """The L4-L6 stack beside tf.keras 2, and the training step's memory."""
    runs = runs_with(runs, "stack")
    if not runs:
        return []
    lines = [
        "",
        "The L4–L6 stack beside tf.keras 2 (`implementation=1`), in the same "
        "process; peak memory of the batch-32 training step in a fresh process "
        "each.",
        "",
        "| backend | case | ours ms | ours ÷ limit | ours ÷ own limit "
        "| tf.keras 2 ms | tf.keras 2 ÷ ours "
        "| step peak MB, ours / tf.keras 2 (kernels) |",
        "|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    for k, run in runs.items():
        for mode, entry in run["stack"].items():
            limits = (
                _stack_limit_ms(mode, entry, rates)
                for rates in (machine, run.get("rates"))
            )
            memory = _stack_memory_cell(run) if mode == "training" else "–"
            lines.append(
                f"| {TITLES[k]} | {mode}, batch {entry['batch']} "
                f"| {_versus_keras2_cells(entry, *limits)} | {memory} |"
            )
    return lines


def parts_lines(runs, machine):
    """What bounds the cases: Keras' per-call cost, L4's two steps alone."""
    with_parts = {k: r["parts"] for k, r in runs_with(runs, "parts").items()}
    if not with_parts:
        return []
    lines = [
        "",
        "What bounds them, each part timed alone in the same process: one "
        "`predict_on_batch` call of an Identity model (Keras' own cost per "
        "call), and for L4 the gather that builds all patches and the batched "
        "matmul of pre-built patches with the kernel, `(P, B, K) @ (P, K, F)`. "
        "Ratios are to the case's limit.",
        "",
        "| backend | Identity model, ms | case | ours ÷ limit | gather ÷ limit "
        "| matmul ÷ limit |",
        "|---|--:|---|--:|--:|--:|",
    ]
    for k, parts in with_parts.items():
        for case, entry in parts.items():
            if case == "dispatch_ms":
                continue
            ours = runs[k].get("forward", {}).get(case, {}).get("ours_ms")
            limit = _layer_limit_ms(case, machine)
            lines.append(
                f"| {TITLES[k]} | {_fmt(parts['dispatch_ms'])} | {case} "
                f"| {_fmt_ratio(_ratio(ours, limit))} "
                f"| {_fmt_ratio(_ratio(entry['gather_ms'], limit))} "
                f"| {_fmt_ratio(_ratio(entry['contract_ms'], limit))} |"
            )
    return lines


def regimes_lines(runs, machine):
    """Other fields' regimes: ours and tf.keras 2, inference and training."""
    with_regimes = runs_with(runs, "regimes")
    if not with_regimes:
        return []
    lines = [
        "",
        "### Other fields' regimes",
        "",
        "Each layer alone at its batch, `model.predict_on_batch` (inference) and "
        "one `model.train_on_batch` step (training), beside tf.keras 2's layer "
        "(`implementation=1`) where it is timed, in the same process.",
        "",
        "| backend | case | step, batch | ours ms | ours ÷ limit | ours ÷ own limit "
        "| tf.keras 2 ms | tf.keras 2 ÷ ours |",
        "|---|---|---|--:|--:|--:|--:|--:|",
    ]
    skipped = {}
    for k, run in with_regimes.items():
        for name, timed in run["regimes"].items():
            shape = REGIMES_BY_NAME.get(name)
            if shape is None:  # a case since renamed or dropped
                continue
            for mode, entry in timed.items():
                if mode not in models.LIMIT_MS:
                    continue
                limits = (
                    _limit_ms(mode, (shape,), entry["batch"], rates)
                    for rates in (machine, run.get("rates"))
                )
                lines.append(
                    f"| {TITLES[k]} | {shape.label} | {mode}, batch {entry['batch']} "
                    f"| {_versus_keras2_cells(entry, *limits)} |"
                )
            if "keras2_skipped" in timed:
                skipped[shape.label] = timed["keras2_skipped"]
    if skipped:
        lines += [
            "",
            *(f"- tf.keras 2 at *{n}*: not timed; {r}." for n, r in skipped.items()),
        ]
    return lines


def _group_cell(entry, name, plain_ms, limit):
    """``"12.3 (4.1×, 1.6)"``: ms, times faster than ungrouped, ÷ own limit."""
    ms = entry[f"{name}_ms"]
    speedup = _fmt_ratio(_ratio(plain_ms, ms))
    return f"{_fmt(ms)} ({speedup}×, {_fmt_ratio(_ratio(ms, limit))})"


def groups_lines(runs, machine):
    """Position groups on L4: each grouping against the ungrouped layer, its
    own limit, and one group against Conv2D (`groups.time_groups`)."""
    with_groups = runs_with(runs, "groups")
    if not with_groups:
        return []
    names = [n for n in groups.GROUPINGS if n != "ungrouped"]
    kernels = next(iter(with_groups.values()))["groups"]["kernels"]
    lines = [
        "",
        "### Position groups",
        "",
        "L4's shape with `position_groups` (kernels: "
        + ", ".join(f"{n} {t}" for n, t in kernels.items())
        + "), `model.predict_on_batch`, side by side in one process. Each cell: "
        "ms, then how many times faster than the ungrouped layer, then ÷ the "
        "limit of its own kernels at the rates measured in the same process; "
        "the last column, one group ÷ `keras.layers.Conv2D`.",
        "",
        "| backend | batch | ungrouped ms (÷ limit) | "
        + " | ".join(names)
        + " | Conv2D ms | one group ÷ Conv2D |",
        "|---|--:|--:|" + "--:|" * len(names) + "--:|--:|",
    ]
    for k, run in with_groups.items():
        for batch in groups.BATCHES:
            entry = run["groups"].get(f"b{batch}")
            if entry is None:
                continue
            limits = {
                name: groups.limit_ms(
                    groups.SHAPE, blocks, batch, run["groups"]["rates"]
                )
                for name, blocks in groups.GROUPINGS.items()
            }
            plain = entry["ungrouped_ms"]
            cells = [_group_cell(entry, n, plain, limits[n]) for n in names]
            conv = entry.get(f"{groups.CONV}_ms")
            plain_cell = (
                f"{_fmt(plain)} ({_fmt_ratio(_ratio(plain, limits['ungrouped']))})"
            )
            lines.append(
                f"| {TITLES[k]} | {batch} | {plain_cell} | {' | '.join(cells)} "
                f"| {_fmt(conv)} | {_fmt_ratio(_ratio(entry['one group_ms'], conv))} |"
            )
    return lines


def _quantized_cell(entry, mode, float_limit):
    """``"6.1 (2.0×, 0.55, 1.9)"``: ms, times faster than float32, ÷ the
    float32 limit, ÷ the mode's own limit."""
    ms = entry[f"{mode}_ms"]
    faster = _fmt_ratio(_ratio(entry[f"{quantization.FLOAT}_ms"], ms))
    own = _fmt_ratio(_ratio(ms, entry[f"{mode}_limit_ms"]))
    return f"{_fmt(ms)} ({faster}×, {_fmt_ratio(_ratio(ms, float_limit))}, {own})"


def quantization_lines(runs, machine):
    """DeepFace's layers quantized, beside float32 and the float32 limit
    (`quantization.time_quantization`)."""
    with_quantization = {
        k: r["quantization"]
        for k, r in runs_with(runs, "quantization").items()
        if "skipped" not in r["quantization"]
    }
    if not with_quantization:
        return []
    modes = quantization.MODES
    lines = [
        "",
        "### Quantized layers",
        "",
        "DeepFace's layers after `model.quantize(...)`, `model.predict_on_batch`, "
        "side by side with the float32 layer in one process. float32: ms (÷ the "
        "float32 limit). Each mode: ms, then how many times faster than float32, "
        "then ÷ the float32 limit (below 1: past it), then ÷ its own limit (the "
        "bytes it stores moved once, or the FLOPs at the GEMM rate); int4 with "
        f"Keras' default block of {quantization.INT4_BLOCK} along K.",
        "",
        "| backend | layer | batch | float32 ms (÷ limit) | "
        + " | ".join(modes)
        + " |",
        "|---|---|--:|--:|" + "--:|" * len(modes),
    ]
    for k, record in with_quantization.items():
        for shape in quantization.SHAPES:
            for batch in quantization.BATCHES:
                entry = record.get(shape.name, {}).get(f"b{batch}")
                if entry is None:
                    continue
                float_ms = entry[f"{quantization.FLOAT}_ms"]
                float_limit = entry[f"{quantization.FLOAT}_limit_ms"]
                cells = [_quantized_cell(entry, m, float_limit) for m in modes]
                lines.append(
                    f"| {TITLES[k]} | {shape.name} | {batch} | {_fmt(float_ms)} "
                    f"({_fmt_ratio(_ratio(float_ms, float_limit))}) | "
                    + " | ".join(cells)
                    + " |"
                )
    return lines


def _answer_cell(ms, limit):
    """``"12.3 (2.1×)"``: ms and ÷ the machine's limit."""
    if ms is None:
        return "–"
    return f"{_fmt(ms)} ({_fmt_ratio(_ratio(ms, limit))})"


def _answer_rows(runs, machine):
    """``(label, limit ms, {run key: ms}, tf.keras 2 ms)`` of every case the
    runs hold: DeepFace's layers, the stack, the other regimes."""
    first = next(iter(runs.values()))
    for key in first.get("forward", {}):
        times = {
            k: r.get("forward", {}).get(key, {}).get("ours_ms") for k, r in runs.items()
        }
        yield f"DeepFace {key}, forward", _layer_limit_ms(key, machine), times, None
    for mode, entry in first.get("stack", {}).items():
        times = {
            k: r.get("stack", {}).get(mode, {}).get("ours_ms") for k, r in runs.items()
        }
        keras2 = runs.get("tensorflow", first).get("stack", {}).get(mode, {})
        label = f"DeepFace L4–L6 stack, {mode}, batch {entry['batch']}"
        yield (
            label,
            _stack_limit_ms(mode, entry, machine),
            times,
            keras2.get("keras2_ms"),
        )
    for name, timed in first.get("regimes", {}).items():
        shape = REGIMES_BY_NAME.get(name)
        if shape is None:
            continue
        for mode, entry in timed.items():
            if mode not in models.LIMIT_MS:
                continue
            times = {
                k: r.get("regimes", {}).get(name, {}).get(mode, {}).get("ours_ms")
                for k, r in runs.items()
            }
            keras2 = runs.get("tensorflow", first).get("regimes", {}).get(name, {})
            limit = _limit_ms(mode, (shape,), entry["batch"], machine)
            label = f"{shape.label}, {mode}, batch {entry['batch']}"
            yield label, limit, times, keras2.get(mode, {}).get("keras2_ms")


def answer_lines(runs, machine):
    """The page's opening answer: ours per backend, tf.keras 2 and the
    machine's limit, on DeepFace's layers and the other regimes."""
    runs = {k: r for k, r in runs_with(runs, "forward").items() if k in BACKENDS}
    if not runs or not machine:
        return ["No benchmark results yet: run `nox -s bench`."]
    keys = list(runs)
    lines = [
        "Milliseconds per call, and in brackets the time ÷ the machine's limit "
        "(the bytes that must move once at the best stream rate, or the FLOPs "
        "at the best GEMM rate, measured on this machine by numpy or any "
        "backend; 1.0× is the best any implementation could do). tf.keras 2 is "
        "`LocallyConnected2D(implementation=1)` where it exists, timed in the "
        "TensorFlow process.",
        "",
        "| case | limit ms | "
        + " | ".join(TITLES[k] for k in keys)
        + " | tf.keras 2 ms |",
        "|---|--:|" + "--:|" * len(keys) + "--:|",
    ]
    for label, limit, times, keras2 in _answer_rows(runs, machine):
        cells = " | ".join(_answer_cell(times.get(k), limit) for k in keys)
        lines.append(f"| {label} | {_fmt(limit)} | {cells} | {_fmt(keras2)} |")
    return [
        *lines,
        "",
        f"![DeepFace's layers: time relative to the machine's limit]({LIMIT_CHART})",
    ]


def _fmt_bytes(n):
    """``"663 KB"``, ``"32 MB"`` (binary units)."""
    for unit, size in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if n >= size:
            return f"{_fmt(n / size)} {unit}"
    return f"{n} B"


def _caches(result):
    """``(label, bytes)`` of the L2 and L3 caches in `result`'s machine:
    ``("L2 1 MB (CPUs 0)", 1048576)``."""
    found = []
    for cache in result.get("machine", {}).get("caches", []):
        if cache["level"] >= 2 and cache["type"] in ("Unified", "Data"):
            size = _fmt_bytes(cache["size_bytes"])
            found.append(
                (
                    f"L{cache['level']} {size} (CPUs {cache['shared_cpu_list']})",
                    cache["size_bytes"],
                )
            )
    return found


def _curves(runs):
    """Key -> the chunk-size curves of each run that has them."""
    return {k: r["chunk_curve"] for k, r in runs_with(runs, "chunk_curve").items()}


def _curve_ratios(key, curve, machine):
    """``{chunk: ms ÷ the machine's limit}`` of one curve, in its order."""
    limit = _layer_limit_ms(key, machine)
    return {p["chunk"]: _ratio(p["ms"], limit) for p in curve["points"]}


def _chunk_cell(ratios, chunk):
    return f"{_fmt(chunk) if chunk else 'all'}: {_fmt_ratio(ratios.get(chunk))}"


def chunk_curve_lines(results, runs, machine):
    """The chunk-size curve as a table: time ÷ limit per chunk size."""
    curves = _curves(runs)
    if not curves:
        return []
    sequence = sorted(
        {
            chunk
            for by_key in curves.values()
            for curve in by_key.values()
            for chunk in models.geometric_chunks(curve["positions"])
        }
    )
    caches = ", ".join(label for label, _ in _caches(next(iter(results.values()))))
    lines = [
        "",
        "### The chunk-size curve",
        "",
        "The engine's forward pass alone (`_local_conv.local_conv`, compiled as "
        "in the tables above), in the formulation the engine picks for the "
        "backend but for its chunk: the positions per chunk doubling from "
        f"{models.CURVE_FIRST_CHUNK} (at most {models.CURVE_MAX_CHUNKS} chunks "
        "a call), the chunks that divide the positions P "
        "(none left over for a last, smaller step; the lines of the chart), and "
        "all at once. A chunk's patches take chunk × K × batch × 4 bytes. "
        "Cells are time ÷ the machine's limit; the engine's default pick is "
        "in bold, and in the *default* column with its chunk; *best* is the "
        "fastest." + (f" This machine's caches: {caches}." if caches else ""),
        "",
        f"![time ÷ limit against the patch bytes of one chunk]({CURVE_CHART})",
        "",
        "| backend | layer, batch | P | K | limit ms | "
        + " | ".join(str(c) for c in sequence)
        + " | all | chunks dividing P | default | best |",
        "|---|---|--:|--:|--:|" + "--:|" * (len(sequence) + 1) + "---|---|---|",
    ]
    columns = (*sequence, None)
    for k, by_key in curves.items():
        for key, curve in by_key.items():
            ratios = _curve_ratios(key, curve, machine)
            default = curve["default_chunk"]
            cells = [_fmt_ratio(ratios[c]) if c in ratios else "–" for c in columns]
            if default in columns and default in ratios:
                cells[columns.index(default)] = f"**{cells[columns.index(default)]}**"
            best = min(ratios, key=lambda c: ratios[c] or math.inf)
            dividing = ", ".join(
                _chunk_cell(ratios, c)
                for c in models.dividing_chunks(curve["positions"])
                if c in ratios
            )
            lines.append(
                f"| {TITLES[k]} | {curve['layer']}, batch {curve['batch']} "
                f"| {curve['positions']} | {curve['patch_size']} "
                f"| {_fmt(_layer_limit_ms(key, machine))} | "
                + " | ".join(cells)
                + f" | {dividing} | {_chunk_cell(ratios, default)} "
                f"| {_chunk_cell(ratios, best)} |"
            )
    return lines


def transpose_section(results_dir):
    """The transposed layers (`benchmarks/transpose.py`), where it has run."""
    runs = {}
    for backend in BACKENDS:
        path = results_dir / f"transpose_{backend}.json"
        if path.exists():
            runs[backend] = json.loads(path.read_text())
    if not runs:
        return []
    lines = [
        "## The transposed layers",
        "",
        "`LocallyConnected{N}DTranspose`'s forward pass (`python -m "
        "benchmarks.transpose`, which `nox -s bench` runs after the "
        "above), beside the same arithmetic through the backend's autodiff "
        "(the input gradient of the forward layer with the same kernel) and "
        "Keras' shared-weight `Conv{N}DTranspose` of the same shapes (P times "
        "fewer weights). *gather-sum* is the formulation used on Keras older "
        "than 3.14, timed here to show the choice. Medians in ms, each "
        "backend in its own process.",
        "",
        "| backend | shape | ours | gather-sum | grad of forward | ConvTranspose "
        "| ours ÷ grad of forward | ours ÷ ConvTranspose |",
        "|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    for backend, run in runs.items():
        for shape in run["shapes"]:
            timings = {
                ("conv" if name.startswith("Conv") else name): entry["median_ms"]
                for name, entry in shape["timings"].items()
            }
            lines.append(
                f"| {TITLES[backend]} | {shape['label']} "
                f"| {_fmt(timings.get('ours'))} "
                f"| {_fmt(timings.get('ours, gather-sum'))} "
                f"| {_fmt(timings.get('grad of forward'))} "
                f"| {_fmt(timings.get('conv'))} "
                f"| {_fmt_ratio(shape['ours_vs_grad_of_forward'])} "
                f"| {_fmt_ratio(shape['ours_vs_conv_transpose'])} |"
            )
    dates = ", ".join(f"{TITLES[b]} {r['date']}" for b, r in runs.items())
    lines += ["", f"Measured: {dates}."]
    return lines


def limit_chart(results, machine, path):
    """Ours ÷ the machine's limit: each DeepFace layer alone and the stack."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_models = runs_with(model_runs(results), "forward", "stack")
    if not with_models or not machine:
        return
    first = next(iter(with_models.values()))
    cases = [(key, None) for key in first["forward"]]
    cases += [
        (f"stack {mode} b{e['batch']}", mode) for mode, e in first["stack"].items()
    ]
    fig, ax = plt.subplots(figsize=(11, 4.2))
    width = 0.8 / len(with_models)
    for k, (backend, data) in enumerate(with_models.items()):
        ys = []
        for case, mode in cases:
            if mode:
                entry = data["stack"][mode]
                limit = _stack_limit_ms(mode, entry, machine)
            else:
                entry = data["forward"][case]
                limit = _layer_limit_ms(case, machine)
            ys.append(entry["ours_ms"] / limit)
        xs = [j + (k - (len(with_models) - 1) / 2) * width for j in range(len(cases))]
        ax.bar(xs, ys, width, label=TITLES[backend])
    ax.axhline(1.0, color="black", lw=1, ls="--", label="limit")
    ax.axhline(1.5, color="grey", lw=1, ls=":", label="target: 1.5 × limit")
    ax.set_yscale("log")
    ax.set_xticks(range(len(cases)))
    ax.set_xticklabels([c.replace(" ", "\n") for c, _ in cases], fontsize=8)
    ax.set_title("DeepFace's layers: time ÷ the machine's limit (log)", fontsize=10)
    ax.legend(fontsize=8, ncol=3, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_curve(ax, curve, ratios, color, style):
    """One chunk-size curve, time ÷ limit against the patch bytes of one
    chunk: a line through the chunks that leave no positions over (those
    dividing P, and all at once), crosses at the others (a last, smaller
    step too), a star at the default pick."""
    xs = [point["chunk_bytes"] for point in curve["points"]]
    chunks, ys = list(ratios), list(ratios.values())

    def plot(chosen, *args, **kwargs):
        picked = [j for j, chunk in enumerate(chunks) if chosen(chunk)]
        ax.plot([xs[j] for j in picked], [ys[j] for j in picked], *args, **kwargs)

    plot(
        lambda chunk: chunk is None or curve["positions"] % chunk == 0,
        style,
        color=color,
        marker="o",
        markersize=4,
        label=f"{curve['layer']} batch {curve['batch']}",
    )
    plot(
        lambda chunk: chunk is not None and curve["positions"] % chunk != 0,
        "x",
        color=color,
        markersize=5,
    )
    plot(
        lambda chunk: chunk == curve["default_chunk"],
        "*",
        color=color,
        markersize=13,
        markeredgecolor="black",
    )


def chunk_curve_chart(results, machine, path):
    """Per backend, time ÷ the machine's limit against the patch bytes of one
    chunk (both log): a curve per layer and batch (`_plot_curve`), the L2 and
    L3 sizes as vertical lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = _curves(model_runs(results))
    if not curves or not machine:
        return
    batches = sorted(
        {c["batch"] for by_key in curves.values() for c in by_key.values()}
    )
    colors = {
        b: plt.cm.viridis(0.85 * i / max(len(batches) - 1, 1))
        for i, b in enumerate(batches)
    }
    styles = dict(zip((shape.name for shape in DEEPFACE_LAYERS), ("-", "--", ":")))
    fig, axes = plt.subplots(
        1, len(curves), figsize=(5.2 * len(curves), 4.8), squeeze=False, sharey=True
    )
    for ax, (k, by_key) in zip(axes[0], curves.items()):
        for key, curve in by_key.items():
            _plot_curve(
                ax,
                curve,
                _curve_ratios(key, curve, machine),
                colors[curve["batch"]],
                styles.get(curve["layer"], "-"),
            )
        for (label, size), style in zip(_caches(results.get(k, {})), (":", "-.")):
            ax.axvline(size, color="grey", ls=style, lw=1, label=label)
        ax.axhline(1.0, color="black", lw=1, ls="--", label="limit")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(
            "patch bytes of one chunk (lines: chunks dividing P, ×: the others, "
            "★: the engine's pick)",
            fontsize=8,
        )
        ax.set_title(f"{TITLES[k]}: forward time ÷ limit (log)", fontsize=10)
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def chart(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backends = list(results)
    fig, axes = plt.subplots(
        1, len(backends), figsize=(5.2 * len(backends), 5.0), squeeze=False
    )
    colors = {"ours": "#1f77b4", "variant": "#9ecae1", "anchor": "#d62728"}
    for ax, backend in zip(axes[0], backends):
        result = results[backend]
        names = [
            i["name"] for i in result["impls"] if i["role"] in colors
        ]  # floor is the line at 1
        case_names = [c for c in result["cases"] if c in CASES_BY_NAME]
        width = 0.8 / max(len(names), 1)
        for k, name in enumerate(names):
            role = _role(result, name)
            xs, ys = [], []
            for j, case_name in enumerate(case_names):
                timings = result["cases"][case_name]
                floor = dict(_by_role(result, case_name, "floor"))
                if "fwd_bwd_ms" not in timings.get(name, {}) or not floor:
                    continue
                f = next(iter(floor.values()))["fwd_bwd_ms"]
                xs.append(j + (k - (len(names) - 1) / 2) * width)
                ys.append(timings[name]["fwd_bwd_ms"] / f)
            shade = colors[role]
            if role == "anchor":
                shade = plt.cm.Reds(
                    0.85
                    - 0.2 * sum(1 for n in names[:k] if _role(result, n) == "anchor")
                )
            ax.bar(xs, ys, width, label=name, color=shade)
        ax.axhline(1.0, color="black", lw=1, ls="--", label="floor (batched matmul)")
        ax.axhline(1.5, color="grey", lw=1, ls=":", label="target: 1.5 × floor")
        ax.set_yscale("log")
        ax.set_xticks(range(len(case_names)))
        ax.set_xticklabels([CASES_BY_NAME[c].short for c in case_names], fontsize=8)
        ax.set_title(f"{TITLES[backend]}: fwd+bwd time ÷ floor (log)", fontsize=10)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_page(results_dir=RESULTS, docs_dir=DOCS):
    """The page and its charts in `docs_dir`, from the results in `results_dir`."""
    results = load(results_dir)
    if not results:
        return
    machine = machine_rates(results)
    runs = model_runs(results)
    sections = [
        "## Summary",
        "",
        summary(results, machine),
        "",
        f"![forward+backward time relative to the matmul floor, per backend]({CHART})",
        "",
        *models_section(results, machine),
        *regimes_lines(runs, machine),
        *groups_lines(runs, machine),
        *quantization_lines(runs, machine),
        *chunk_curve_lines(results, runs, machine),
        "",
        *transpose_section(results_dir),
        "",
        "## All measurements",
        "",
    ]
    for backend, result in results.items():
        sections += [backend_section(backend, result), ""]
    text = TEMPLATE.read_text().replace("{{results}}", "\n".join(sections).strip())
    text = text.replace("{{answer}}", "\n".join(answer_lines(runs, machine)))
    page = docs_dir / PAGE
    (docs_dir / CHART).parent.mkdir(parents=True, exist_ok=True)
    page.write_text(text)
    try:
        chart(results, docs_dir / CHART)
        limit_chart(results, machine, docs_dir / LIMIT_CHART)
        chunk_curve_chart(results, machine, docs_dir / CURVE_CHART)
    except ImportError:
        print("matplotlib is not installed: the chart was not redrawn")
    print(f"wrote {page} and its charts")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=pathlib.Path, default=RESULTS)
    parser.add_argument("--docs", type=pathlib.Path, default=DOCS)
    args = parser.parse_args()
    write_page(args.results, args.docs)


if __name__ == "__main__":
    main()
