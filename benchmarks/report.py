"""Write docs/performance.md and its charts from benchmarks/results/*.json.

The page is ``benchmarks/performance_template.md`` rendered (`render`): the
prose is the template's. Each block of the template, ``<!-- NAME -->`` up to
``<!-- end NAME -->``, is written once per set of values `tables.blocks`
derives for it from the results (none: the block is left out, as where a
results file lacks its part; the backends' sections: once per backend), its
``{{slot}}``s filled. The charts are drawn by `charts`.

    python -m benchmarks.report [--results DIR] [--docs DIR]

rewrites the page from the results in DIR (default ``benchmarks/results``)
into another docs folder (default ``docs``: the page, and its charts under
``img/``), to check it against a trial run.
"""

import argparse
import json
import pathlib
import re

from benchmarks import tables

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
DOCS = ROOT / "docs"
TEMPLATE = HERE / "performance_template.md"
PAGE = "performance.md"  # in the docs folder, its charts in img/
CHARTS = {
    "chart": "img/performance.png",
    "limit_chart": "img/performance_limit.png",
    "curve_chart": "img/chunk_curve.png",
}


def load(results_dir=RESULTS, prefix=""):
    """Backend -> the results file ``<prefix><backend>.json`` of `results_dir`."""
    results = {}
    for backend in tables.BACKENDS:
        path = results_dir / f"{prefix}{backend}.json"
        if path.exists():
            results[backend] = json.loads(path.read_text())
    return results


BLOCK = re.compile(r"<!-- ([\w-]+) -->\n(.*?)<!-- end \1 -->\n", re.DOTALL)
SLOT = re.compile(r"\{\{(\w+)\}\}")


def render(template, values):
    """`template` with each block written once per dict of `values[name]`
    (left out where there is none), each ``{{slot}}`` filled from that dict
    or from `CHARTS`."""

    def fill(text, slots):
        slots = {**CHARTS, **slots}
        return SLOT.sub(lambda match: str(slots[match[1]]), text)

    return BLOCK.sub(
        lambda match: "".join(fill(match[2], v) for v in values.get(match[1], ())),
        template,
    )


def write_page(results_dir=RESULTS, docs_dir=DOCS):
    """The page and its charts in `docs_dir`, from the results in `results_dir`."""
    results = load(results_dir)
    if not results:
        return
    page = docs_dir / PAGE
    (docs_dir / CHARTS["chart"]).parent.mkdir(parents=True, exist_ok=True)
    values = tables.blocks(results, load(results_dir, prefix="transpose_"))
    page.write_text(render(TEMPLATE.read_text(), values))
    try:
        from benchmarks import charts  # needs matplotlib

        charts.draw(results, {name: docs_dir / path for name, path in CHARTS.items()})
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
