"""The values of the performance page's blocks, derived from the results.

`blocks` gives, for each block of ``benchmarks/performance_template.md``
(`report.render`), the values of its slots each time it is written: table
rows (the headers are the template's, but where the columns follow the
results: `table`), and the few figures the prose quotes. A block with no
values is left out: a results file without a part renders without it.
Targets come from `cases.TARGETS` (`missed`).

Every ratio to "the limit" is to the machine's limit: the best stream and
GEMM rates of every run present (each backend's own and numpy's, measured in
its process; `models.best_rates`), applied to each case's shapes
(`models.forward_limit_ms`, `models.training_limit_ms`). The ratio to the
backend's own limit, at its own rates, is kept beside it.
"""

import math

from benchmarks import genomics, groups, models, quantization
from benchmarks.cases import (
    CASES,
    DEEPFACE_LAYERS,
    GENOMICS_BY_NAME,
    REGIMES_BY_NAME,
    TARGETS,
)

BACKENDS = ("tensorflow", "jax", "torch")
TITLES = {
    "tensorflow": "TensorFlow",
    "jax": "JAX",
    "torch": "PyTorch",
    "tensorflow-onednn": "TensorFlow + oneDNN",
}
# Every case a target may name, by name (`cases.TARGETS`).
CASE_LABELS = {
    case.name: case.label
    for case in (*CASES, *REGIMES_BY_NAME.values(), *GENOMICS_BY_NAME.values())
}
# The end of the forward table's sentence, with or without a oneDNN column.
ONEDNN_COLUMN = "; the last column puts TensorFlow with oneDNN in TensorFlow's place."


# --------------------------------------------------------------------------
# Cells and tables
# --------------------------------------------------------------------------


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


def _times(a, b):
    """`a` ÷ `b` as a cell: ``"2.10"``, or ``"–"`` where either is unknown."""
    return _fmt_ratio(_ratio(a, b))


def _ms_and_ratio(ms, limit):
    """``"12.3 (2.10)"``: ms and ÷ `limit`."""
    return f"{_fmt(ms)} ({_times(ms, limit)})"


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
    return _fmt(entry["step_peak_mb"]) if "step_peak_mb" in entry else "–"


def missed(part, case_name, backend, measures):
    """The cell of the targets of `cases.TARGETS` that `measures` (by
    measure name) miss: their labels, "none", or "–" where none applies."""
    targets = [t for t in TARGETS if t.applies(part, case_name, backend)]
    if not targets:
        return "–"
    labels = [t.label for t in targets if t.missed(measures.get(t.measure))]
    return ", ".join(labels) or "none"


def targets_text(part):
    """``"≤ 3× limit on JAX; …"``: the targets of `part`, for the prose."""
    return "; ".join(
        f"{t.label} on "
        + (", ".join(TITLES[b] for b in t.backends) if t.backends else "every backend")
        + (f", at {', '.join(CASE_LABELS[c] for c in t.cases)}" if t.cases else "")
        for t in TARGETS
        if t.part == part
    )


def _rows(rows, notes=()):
    """Markdown table rows of `rows` (lists of cells), then `notes` as a
    bullet list; the header is the template's (or `table`'s)."""
    text = "\n".join(
        "| " + " | ".join(str(cell) for cell in row) + " |" for row in rows
    )
    if notes:
        text += "\n\n" + "\n".join(f"- {note}" for note in notes)
    return text


def table(header, align, rows):
    """A Markdown table whose columns follow the results: `header` cells,
    `align` one letter per column (``l`` left, ``r`` right), `rows`."""
    head = "| " + " | ".join(header) + " |"
    rule = "|" + "".join("--:|" if a == "r" else "---|" for a in align)
    return f"{head}\n{rule}\n{_rows(rows)}"


# --------------------------------------------------------------------------
# Reading the results
# --------------------------------------------------------------------------


def role_of(result, name):
    """The role (`impls.Impl.role`) of implementation `name` in `result`."""
    return next(i["role"] for i in result["impls"] if i["name"] == name)


def by_role(result, case_name, role):
    """``[(implementation, timings)]`` of `case_name` with `role`."""
    timings = result["cases"].get(case_name, {})
    return [(n, t) for n, t in timings.items() if role_of(result, n) == role]


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


def limit_ms(mode, shapes, batch, rates):
    """The limit in ms of an ``"inference"`` or ``"training"`` step of
    `shapes` at `batch` under `rates`; None without rates."""
    if not rates:
        return None
    return models.LIMIT_MS[mode](shapes, batch, rates)


def layer_limit_ms(key, rates):
    """The forward limit of one DeepFace layer, by its `models.case_key`."""
    shape, batch = models.parse_case_key(key)
    return limit_ms("inference", (shape,), batch, rates)


def stack_limit_ms(mode, entry, rates):
    """The limit of the L4-L6 stack's `mode` entry (`models.time_models`)."""
    return limit_ms(mode, DEEPFACE_LAYERS, entry["batch"], rates)


def curves(runs):
    """Key -> the chunk-size curves of each run that has them."""
    return {k: r["chunk_curve"] for k, r in runs_with(runs, "chunk_curve").items()}


def curve_ratios(key, curve, machine):
    """``{chunk: ms ÷ the machine's limit}`` of one curve, in its order."""
    limit = layer_limit_ms(key, machine)
    return {p["chunk"]: _ratio(p["ms"], limit) for p in curve["points"]}


def _fmt_bytes(n):
    """``"663 KB"``, ``"32 MB"`` (binary units)."""
    for unit, size in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if n >= size:
            return f"{_fmt(n / size)} {unit}"
    return f"{n} B"


def caches(result):
    """``(label, bytes)`` of the L2 and L3 caches in `result`'s machine:
    ``("L2 1 MB (CPUs 0)", 1048576)``."""
    return [
        (
            f"L{c['level']} {_fmt_bytes(c['size_bytes'])} "
            f"(CPUs {c['shared_cpu_list']})",
            c["size_bytes"],
        )
        for c in result.get("machine", {}).get("caches", [])
        if c["level"] >= 2 and c["type"] in ("Unified", "Data")
    ]


# --------------------------------------------------------------------------
# The blocks of the template, each a list of its slots' values
# --------------------------------------------------------------------------


def _case_row(backend, case, result, machine):
    """The summary's row of one of `cases.CASES` on `backend`, or None."""
    ours = by_role(result, case.name, "ours")
    floor = by_role(result, case.name, "floor")
    if not ours or not floor:
        return None
    o, f = ours[0][1], floor[0][1]
    # The anchor to beat is the fastest one that ran.
    anchor_name, a = min(
        by_role(result, case.name, "anchor"),
        key=lambda item: item[1].get("fwd_bwd_ms", math.inf),
    )
    measures = {
        "forward ÷ floor": _ratio(o["forward_ms"], f["forward_ms"]),
        "fwd+bwd ÷ floor": _ratio(o["fwd_bwd_ms"], f["fwd_bwd_ms"]),
        "anchor ÷ ours, fwd+bwd": _ratio(a.get("fwd_bwd_ms"), o["fwd_bwd_ms"]),
        "memory ÷ anchor": _ratio(o.get("step_peak_mb"), a.get("step_peak_mb")),
        "build s": o.get("build_s"),
    }

    def speedup(key):
        if key not in a and "timeout_s" in a:
            return f"not measured (stopped after {a['timeout_s']:.0f} s)"
        return _times(a.get(key), o[key])

    def build(entry):
        return _build_cell(entry) if case.report_build else "–"

    return [
        TITLES[backend],
        case.label,
        _times(o["forward_ms"], limit_ms("inference", (case,), case.batch, machine)),
        _times(o["fwd_bwd_ms"], limit_ms("training", (case,), case.batch, machine)),
        _fmt_ratio(measures["forward ÷ floor"]),
        _fmt_ratio(measures["fwd+bwd ÷ floor"]),
        anchor_name,
        speedup("forward_ms"),
        speedup("fwd_bwd_ms"),
        f"{_memory_cell(o)} / {_memory_cell(a)} "
        f"({_fmt_ratio(measures['memory ÷ anchor'])})",
        f"{build(o)} / {build(a)}",
        missed("cases", case.name, backend, measures),
    ]


def summary_block(results, machine):
    rows = [
        row
        for backend, result in results.items()
        for case in CASES
        if case.name in result["cases"]
        for row in [_case_row(backend, case, result, machine)]
        if row
    ]
    return [{"rows": _rows(rows)}]


def _gb_per_s(rates, key):
    return f"{rates[key] / 1e9:.1f}" if key in rates else "–"


def rates_blocks(runs, machine):
    """Every rate measured, and which of them set the machine's limit."""
    if not runs:
        return {}
    rows = [
        [
            label,
            _gb_per_s(rates, "stream_bytes_per_s"),
            _gb_per_s(rates, "copy_bytes_per_s"),
            f"{rates['gemm_flops_per_s'] / 1e9:.0f}",
        ]
        for label, rates in rate_sets(runs).items()
    ]
    limit = [
        {
            "stream": f"{machine['stream_bytes_per_s'] / 1e9:.1f}",
            "stream_from": machine["stream_from"],
            "gemm": f"{machine['gemm_flops_per_s'] / 1e9:.0f}",
            "gemm_from": machine["gemm_from"],
        }
    ]
    return {
        "deepface-rates": [{"rows": _rows(rows)}],
        "machine-limit": limit if machine else [],
    }


def _spread(times):
    """The slowest ÷ the fastest of the known `times`."""
    known = [t for t in times if t]
    return _fmt_ratio(max(known) / min(known)) if len(known) > 1 else "–"


def forward_block(runs, machine):
    """Each layer alone: ms, ÷ limit and ÷ own limit per backend; the spread."""
    runs = runs_with(runs, "forward")
    if not runs:
        return []
    keys = list(runs)
    installed = [k for k in keys if k in BACKENDS]
    onednn = "tensorflow-onednn" in runs
    swapped = ["tensorflow-onednn" if k == "tensorflow" else k for k in installed]
    rows = []
    for case in runs[keys[0]]["forward"]:
        limit = layer_limit_ms(case, machine)
        times = {k: runs[k]["forward"].get(case, {}).get("ours_ms") for k in keys}
        row = [case]
        for k in keys:
            own_limit = layer_limit_ms(case, runs[k].get("rates"))
            row += [
                _fmt(times[k]),
                _times(times[k], limit),
                _times(times[k], own_limit),
            ]
        row.append(_spread([times[k] for k in installed]))
        if onednn:
            row.append(_spread([times[k] for k in swapped]))
        rows.append(row)
    header = ["case"]
    for k in keys:
        header += [
            f"{TITLES[k]} ms",
            f"{TITLES[k]} ÷ limit",
            f"{TITLES[k]} ÷ own limit",
        ]
    header += ["spread", *(["spread, TF + oneDNN"] if onednn else [])]
    return [
        {
            "onednn_column": ONEDNN_COLUMN if onednn else ".",
            "table": table(header, "l" + "r" * (len(header) - 1), rows),
        }
    ]


def _versus_keras2(entry, limit, own_limit):
    """ours ms, ÷ limit, ÷ own limit, tf.keras 2 ms, tf.keras 2 ÷ ours."""
    ours, keras2 = entry.get("ours_ms"), entry.get("keras2_ms")
    return [
        _fmt(ours),
        _times(ours, limit),
        _times(ours, own_limit),
        _fmt(keras2),
        _times(keras2, ours),
    ]


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


def stack_block(runs, machine):
    """The L4-L6 stack beside tf.keras 2, and the training step's memory."""
    rows = [
        [
            TITLES[k],
            f"{mode}, batch {entry['batch']}",
            *_versus_keras2(
                entry,
                stack_limit_ms(mode, entry, machine),
                stack_limit_ms(mode, entry, run.get("rates")),
            ),
            _stack_memory_cell(run) if mode == "training" else "–",
        ]
        for k, run in runs_with(runs, "stack").items()
        for mode, entry in run["stack"].items()
    ]
    return [{"rows": _rows(rows)}] if rows else []


def parts_block(runs, machine):
    """What bounds the cases: Keras' per-call cost, L4's two steps alone."""
    with_parts = runs_with(runs, "parts")
    if not with_parts:
        return []
    rows = []
    for k, run in with_parts.items():
        parts = run["parts"]
        for case, entry in parts.items():
            if case == "dispatch_ms":
                continue
            ours = run.get("forward", {}).get(case, {}).get("ours_ms")
            limit = layer_limit_ms(case, machine)
            rows.append(
                [
                    TITLES[k],
                    _fmt(parts["dispatch_ms"]),
                    case,
                    _times(ours, limit),
                    _times(entry["gather_ms"], limit),
                    _times(entry["contract_ms"], limit),
                ]
            )
    return [{"rows": _rows(rows)}]


def regimes_block(runs, machine):
    """Other fields' regimes: ours and tf.keras 2, inference and training."""
    with_regimes = runs_with(runs, "regimes")
    rows, skipped = [], {}
    for k, run in with_regimes.items():
        for name, timed in run["regimes"].items():
            shape = REGIMES_BY_NAME.get(name)
            if shape is None:  # a case since renamed or dropped
                continue
            for mode, entry in timed.items():
                if mode not in models.LIMIT_MS:
                    continue
                limit = limit_ms(mode, (shape,), entry["batch"], machine)
                own_limit = limit_ms(mode, (shape,), entry["batch"], run.get("rates"))
                measures = {"ours ÷ limit": _ratio(entry.get("ours_ms"), limit)}
                rows.append(
                    [
                        TITLES[k],
                        shape.label,
                        f"{mode}, batch {entry['batch']}",
                        *_versus_keras2(entry, limit, own_limit),
                        missed("regimes", name, k, measures),
                    ]
                )
            if "keras2_skipped" in timed:
                skipped[shape.label] = timed["keras2_skipped"]
    notes = [f"tf.keras 2 at *{n}*: not timed; {r}." for n, r in skipped.items()]
    values = {"rows": _rows(rows, notes), "targets": targets_text("regimes")}
    return [values] if with_regimes else []


def _keras2_cell(entry, mode):
    """ms of one tf.keras 2 implementation's `mode` step, or why none."""
    if "timeout_s" in entry:
        return f"> {entry['timeout_s']:.0f} s (stopped)"
    if "error" in entry:
        return "failed"
    return _fmt(entry.get(f"{mode}_ms"))


def _keras2_note(label, name, entry):
    """What the page says of one tf.keras 2 implementation beside a case."""
    if "skipped" in entry:
        return f"tf.keras 2 {name} at *{label}*: not timed; {entry['skipped']}."
    if "build_s" not in entry:
        return None
    return (
        f"tf.keras 2 {name} at *{label}*: built in {_fmt(entry['build_s'])} s; "
        f"first inference call {_fmt(entry['inference_first_s'])} s, first "
        f"training step {_fmt(entry['training_first_s'])} s."
    )


def genomics_block(runs, machine):
    """The genomics models: ours ÷ the limit per backend, beside tf.keras 2's
    implementations (timed in the TensorFlow run) and the targets."""
    with_genomics = runs_with(runs, "genomics")
    if not with_genomics:
        return []
    # tf.keras 2 runs on TensorFlow whatever the backend: timed in one run.
    anchors = {
        name: timed["keras2"]
        for run in with_genomics.values()
        for name, timed in run["genomics"].items()
        if "keras2" in timed
    }
    names = [genomics.keras2_name(i) for i in genomics.KERAS2_IMPLEMENTATIONS]
    rows, notes = [], {}
    for k, run in with_genomics.items():
        for name, timed in run["genomics"].items():
            case = GENOMICS_BY_NAME.get(name)
            if case is None:  # a case since renamed or dropped
                continue
            keras2 = anchors.get(name, {})
            for mode, entry in timed.items():
                if mode not in models.LIMIT_MS:
                    continue
                ours = entry["ours_ms"]
                limit = limit_ms(mode, case.layers, entry["batch"], machine)
                own_limit = limit_ms(mode, case.layers, entry["batch"], run["rates"])
                measured = [
                    e[f"{mode}_ms"] for e in keras2.values() if f"{mode}_ms" in e
                ]
                measures = {
                    "ours ÷ limit": _ratio(ours, limit),
                    "best tf.keras 2 ÷ ours": _ratio(min(measured, default=None), ours),
                }
                rows.append(
                    [
                        TITLES[k],
                        case.label,
                        f"{mode}, batch {entry['batch']}",
                        _fmt(limit),
                        _fmt(ours),
                        _times(ours, limit),
                        _times(ours, own_limit),
                        *(_keras2_cell(keras2.get(n, {}), mode) for n in names),
                        _fmt_ratio(measures["best tf.keras 2 ÷ ours"]),
                        missed("genomics", name, k, measures),
                    ]
                )
            for n in names:
                notes[(name, n)] = _keras2_note(case.label, n, keras2.get(n, {}))
    return [
        {
            "timeout": _fmt(genomics.KERAS2_TIMEOUT_S),
            "targets": targets_text("genomics"),
            "rows": _rows(rows, [note for note in notes.values() if note]),
        }
    ]


def groups_block(runs, machine):
    """Position groups on L4: each grouping against the ungrouped layer, its
    own limit, and one group against Conv2D (`groups.time_groups`)."""
    with_groups = runs_with(runs, "groups")
    if not with_groups:
        return []
    names = [n for n in groups.GROUPINGS if n != "ungrouped"]
    rows = []
    for k, run in with_groups.items():
        for batch in groups.BATCHES:
            entry = run["groups"].get(f"b{batch}")
            if entry is None:
                continue
            plain = entry["ungrouped_ms"]
            limits = {
                name: groups.limit_ms(
                    groups.SHAPE, blocks, batch, run["groups"]["rates"]
                )
                for name, blocks in groups.GROUPINGS.items()
            }
            # ms (times faster than ungrouped, ÷ its own limit)
            cells = [
                f"{_fmt(entry[f'{n}_ms'])} "
                f"({_times(plain, entry[f'{n}_ms'])}×, "
                f"{_times(entry[f'{n}_ms'], limits[n])})"
                for n in names
            ]
            conv = entry.get(f"{groups.CONV}_ms")
            rows.append(
                [
                    TITLES[k],
                    batch,
                    _ms_and_ratio(plain, limits["ungrouped"]),
                    *cells,
                    _fmt(conv),
                    _times(entry["one group_ms"], conv),
                ]
            )
    kernels = next(iter(with_groups.values()))["groups"]["kernels"]
    header = [
        "backend", "batch", "ungrouped ms (÷ limit)", *names, "Conv2D ms",
        "one group ÷ Conv2D",
    ]  # fmt: skip
    return [
        {
            "kernels": ", ".join(f"{n} {t}" for n, t in kernels.items()),
            "table": table(header, "l" + "r" * (len(header) - 1), rows),
        }
    ]


def quantization_block(runs, machine):
    """DeepFace's layers quantized, beside float32 and the float32 limit
    (`quantization.time_quantization`)."""
    with_quantization = {
        k: r["quantization"]
        for k, r in runs_with(runs, "quantization").items()
        if "skipped" not in r["quantization"]
    }
    if not with_quantization:
        return []
    rows = []
    for k, record in with_quantization.items():
        for shape in quantization.SHAPES:
            for batch in quantization.BATCHES:
                entry = record.get(shape.name, {}).get(f"b{batch}")
                if entry is None:
                    continue
                float_ms = entry[f"{quantization.FLOAT}_ms"]
                float_limit = entry[f"{quantization.FLOAT}_limit_ms"]
                # ms (times faster than float32, ÷ the float32 limit, ÷ its own)
                cells = [
                    f"{_fmt(entry[f'{m}_ms'])} "
                    f"({_times(float_ms, entry[f'{m}_ms'])}×, "
                    f"{_times(entry[f'{m}_ms'], float_limit)}, "
                    f"{_times(entry[f'{m}_ms'], entry[f'{m}_limit_ms'])})"
                    for m in quantization.MODES
                ]
                rows.append(
                    [
                        TITLES[k],
                        shape.name,
                        batch,
                        _ms_and_ratio(float_ms, float_limit),
                        *cells,
                    ]
                )
    header = ["backend", "layer", "batch", "float32 ms (÷ limit)", *quantization.MODES]
    return [
        {
            "int4_block": quantization.INT4_BLOCK,
            "table": table(header, "llrr" + "r" * len(quantization.MODES), rows),
        }
    ]


def _chunk_cell(ratios, chunk):
    return f"{_fmt(chunk) if chunk else 'all'}: {_fmt_ratio(ratios.get(chunk))}"


def chunk_curve_block(results, runs, machine):
    """The chunk-size curve as a table: time ÷ limit per chunk size."""
    by_run = curves(runs)
    if not by_run:
        return []
    sequence = sorted(
        {
            chunk
            for by_key in by_run.values()
            for curve in by_key.values()
            for chunk in models.geometric_chunks(curve["positions"])
        }
    )
    columns = (*sequence, None)
    rows = []
    for k, by_key in by_run.items():
        for key, curve in by_key.items():
            ratios = curve_ratios(key, curve, machine)
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
            rows.append(
                [
                    TITLES[k],
                    f"{curve['layer']}, batch {curve['batch']}",
                    curve["positions"],
                    curve["patch_size"],
                    _fmt(layer_limit_ms(key, machine)),
                    *cells,
                    dividing,
                    _chunk_cell(ratios, default),
                    _chunk_cell(ratios, best),
                ]
            )
    labels = ", ".join(label for label, _ in caches(next(iter(results.values()))))
    header = [
        "backend", "layer, batch", "P", "K", "limit ms", *map(str, sequence),
        "all", "chunks dividing P", "default", "best",
    ]  # fmt: skip
    return [
        {
            "first_chunk": models.CURVE_FIRST_CHUNK,
            "max_chunks": models.CURVE_MAX_CHUNKS,
            "caches": f" This machine's caches: {labels}." if labels else "",
            "table": table(header, "ll" + "r" * len(columns) + "rrr" + "lll", rows),
        }
    ]


def transpose_block(runs):
    """The transposed layers (`benchmarks/transpose.py`), where it has run."""
    if not runs:
        return []
    rows = []
    for backend, run in runs.items():
        for shape in run["shapes"]:
            timings = {
                ("conv" if name.startswith("Conv") else name): entry["median_ms"]
                for name, entry in shape["timings"].items()
            }
            rows.append(
                [
                    TITLES[backend],
                    shape["label"],
                    *(
                        _fmt(timings.get(name))
                        for name in (
                            "ours",
                            "ours, gather-sum",
                            "grad of forward",
                            "conv",
                        )
                    ),
                    _fmt_ratio(shape["ours_vs_grad_of_forward"]),
                    _fmt_ratio(shape["ours_vs_conv_transpose"]),
                ]
            )
    return [
        {
            "rows": _rows(rows),
            "dates": ", ".join(f"{TITLES[b]} {r['date']}" for b, r in runs.items()),
        }
    ]


def backend_blocks(results):
    """Every measurement of `cases.CASES`, one block per backend."""
    blocks = []
    for backend, result in results.items():
        rows = []
        for case in CASES:
            floor = next(iter(by_role(result, case.name, "floor")), (None, {}))[1]
            for name, entry in result["cases"].get(case.name, {}).items():
                fwd, fb = entry.get("forward_ms"), entry.get("fwd_bwd_ms")
                is_floor = role_of(result, name) == "floor"
                rows.append(
                    [
                        case.label,
                        name,
                        _fmt(fwd),
                        _fmt(fb),
                        _times(fwd, floor.get("forward_ms")),
                        _times(fb, floor.get("fwd_bwd_ms")),
                        _memory_cell(entry),
                        "–" if is_floor or not entry else _build_cell(entry),
                        _fmt(entry.get("first_step_s")),
                    ]
                )
        notes = [
            f"*{i['name']}*: {i['note']}." for i in result["impls"] if i.get("note")
        ]
        machine = result["machine"]
        blocks.append(
            {
                "title": TITLES[backend],
                "date": result["date"],
                "cpu": machine["cpu"],
                "cores": machine["cores"],
                "system": machine["system"],
                "load": f"{machine['load_average_at_start']:.1f}",
                "versions": ", ".join(
                    f"{k} {v}" for k, v in result["versions"].items()
                ),
                "minutes": f"{result['wall_s'] / 60:.1f}",
                "rows": _rows(rows, notes),
            }
        )
    return blocks


def answer_rows(runs, machine):
    """``(label, limit ms, {run key: ms}, tf.keras 2 ms)`` of every case the
    runs hold: DeepFace's layers, the stack, the other regimes."""
    first = next(iter(runs.values()))
    keras2_run = runs.get("tensorflow", first)
    for key in first.get("forward", {}):
        times = {
            k: r.get("forward", {}).get(key, {}).get("ours_ms") for k, r in runs.items()
        }
        yield f"DeepFace {key}, forward", layer_limit_ms(key, machine), times, None
    for mode, entry in first.get("stack", {}).items():
        times = {
            k: r.get("stack", {}).get(mode, {}).get("ours_ms") for k, r in runs.items()
        }
        yield (
            f"DeepFace L4–L6 stack, {mode}, batch {entry['batch']}",
            stack_limit_ms(mode, entry, machine),
            times,
            keras2_run.get("stack", {}).get(mode, {}).get("keras2_ms"),
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
            keras2 = keras2_run.get("regimes", {}).get(name, {}).get(mode, {})
            yield (
                f"{shape.label}, {mode}, batch {entry['batch']}",
                limit_ms(mode, (shape,), entry["batch"], machine),
                times,
                keras2.get("keras2_ms"),
            )


def answer_blocks(runs, machine):
    """The page's opening answer: ours per backend, tf.keras 2 and the
    machine's limit, on DeepFace's layers and the other regimes."""
    runs = {k: r for k, r in runs_with(runs, "forward").items() if k in BACKENDS}
    if not runs or not machine:
        return {"no-results": [{}]}
    rows = [
        [
            label,
            _fmt(limit),
            *(
                "–" if times.get(k) is None else _ms_and_ratio(times[k], limit)
                for k in runs
            ),
            _fmt(keras2),
        ]
        for label, limit, times, keras2 in answer_rows(runs, machine)
    ]
    header = ["case", "limit ms", *(TITLES[k] for k in runs), "tf.keras 2 ms"]
    return {"answer": [{"table": table(header, "l" + "r" * (len(header) - 1), rows)}]}


def blocks(results, transpose_runs):
    """Block name -> the values of each time the block is written."""
    runs = model_runs(results)
    machine = models.best_rates(rate_sets(runs))
    return {
        **answer_blocks(runs, machine),
        "summary": summary_block(results, machine),
        **rates_blocks(runs, machine),
        "deepface-forward": forward_block(runs, machine),
        "deepface-stack": stack_block(runs, machine),
        "deepface-parts": parts_block(runs, machine),
        "regimes": regimes_block(runs, machine),
        "genomics": genomics_block(runs, machine),
        "groups": groups_block(runs, machine),
        "quantization": quantization_block(runs, machine),
        "chunk-curve": chunk_curve_block(results, runs, machine),
        "transpose": transpose_block(transpose_runs),
        "backend": backend_blocks(results),
    }
