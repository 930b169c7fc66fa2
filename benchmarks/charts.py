"""The performance page's charts, drawn from the results with matplotlib.

`draw` writes the three charts `report.CHARTS` names into a docs folder:
ours ÷ the matmul floor per case (`chart`), DeepFace's layers ÷ the
machine's limit (`limit_chart`) and the chunk-size curve
(`chunk_curve_chart`). `tables` reads the results; this module only draws.
"""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks import models, tables  # noqa: E402
from benchmarks.cases import CASES_BY_NAME, DEEPFACE_LAYERS  # noqa: E402

TITLES = tables.TITLES


def draw(results, paths):
    """The three charts of `results`, at `paths` (by `report.CHARTS`' names)."""
    runs = tables.model_runs(results)
    machine = models.best_rates(tables.rate_sets(runs))
    chart(results, paths["chart"])
    limit_chart(results, machine, paths["limit_chart"])
    chunk_curve_chart(results, machine, paths["curve_chart"])


def limit_chart(results, machine, path):
    """Ours ÷ the machine's limit: each DeepFace layer alone and the stack."""
    with_models = tables.runs_with(tables.model_runs(results), "forward", "stack")
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
                limit = tables.stack_limit_ms(mode, entry, machine)
            else:
                entry = data["forward"][case]
                limit = tables.layer_limit_ms(case, machine)
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
    curves = tables.curves(tables.model_runs(results))
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
                tables.curve_ratios(key, curve, machine),
                colors[curve["batch"]],
                styles.get(curve["layer"], "-"),
            )
        for (label, size), style in zip(tables.caches(results.get(k, {})), (":", "-.")):
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
            role = tables.role_of(result, name)
            xs, ys = [], []
            for j, case_name in enumerate(case_names):
                timings = result["cases"][case_name]
                floor = dict(tables.by_role(result, case_name, "floor"))
                if "fwd_bwd_ms" not in timings.get(name, {}) or not floor:
                    continue
                f = next(iter(floor.values()))["fwd_bwd_ms"]
                xs.append(j + (k - (len(names) - 1) / 2) * width)
                ys.append(timings[name]["fwd_bwd_ms"] / f)
            shade = colors[role]
            if role == "anchor":
                shade = plt.cm.Reds(
                    0.85
                    - 0.2
                    * sum(1 for n in names[:k] if tables.role_of(result, n) == "anchor")
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
