"""The generated blocks of README.md: what ``mtbench compare`` prints for a committed results folder,
its Pareto figure, and its proxy-validity check, kept between markers so a test can tell when the
README and the results disagree.

Three kinds of block, each named by a results folder ``results/NAME``:

- ``<!-- leaderboard:NAME:start -->`` … ``<!-- leaderboard:NAME:end -->`` holds exactly what
  ``mtbench compare --results results/NAME --format md`` prints for the validation-split records
  there, or :func:`empty_text` while that folder holds no completed run (compare has no table then).
- ``<!-- pareto:NAME:start -->`` … holds a link to ``docs/figures/pareto_NAME.png``, the figure of
  ``mtbench plot`` (Δm against trainable parameters, 95 % intervals as error bars), which is written
  with ``docs/figures/pareto_NAME.csv``, the points it plots. A PNG differs from one matplotlib to
  the next, so what is checked is the CSV: it must equal the points the records give now.
- ``<!-- proxy:NAME:DATASET:start -->`` … holds what ``mtbench compare --results results/NAME
  --dataset NAME --proxy DATASET`` prints: Kendall's τ of the measured ranking against the published
  one of ``DATASET``.

Regenerate every block with::

    python -m mtpeft_bench.report.readme            # rewrites README.md (and the figures) in place
    python -m mtpeft_bench.report.readme --check    # exit 1 if a block or a figure is out of date

Torch-free.
"""

from __future__ import annotations

import argparse
import csv
import io
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

KINDS = ("leaderboard", "pareto", "proxy")
START = "<!-- {key}:start -->"
END = "<!-- {key}:end -->"
_BLOCK = re.compile(r"<!-- (?P<key>(?:leaderboard|pareto|proxy)(?::[\w.-]+)+):start -->\n(?P<body>.*?)"
                    r"<!-- (?P=key):end -->", re.DOTALL)
FIGURES = Path("docs") / "figures"
POINT_COLUMNS = ("row", "tasks", "seeds", "trainable_params", "delta_m_mean", "delta_m_ci95", "pareto")


def empty_text(label: str) -> str:
    """The leaderboard block of a results folder (``label``, e.g. ``results/synth``) without completed runs."""
    return f"*No leaderboard run (validation split) is in `{label}/` yet, so there is no table to show.*\n"


def no_figure_text(label: str) -> str:
    """The Pareto block of a results folder whose rows have no Δm yet."""
    return f"*No leaderboard row in `{label}/` has a Δm yet, so there is no figure to show.*\n"


def no_proxy_text(label: str) -> str:
    """The proxy block of a results folder without completed validation-split runs."""
    return f"*No leaderboard run (validation split) is in `{label}/` yet, so there is no ranking to compare.*\n"


def _val_records(results: Path) -> list[dict[str, Any]]:
    from mtpeft_bench.results import read_records, select_split

    records = read_records(results, warn=lambda line: None) if Path(results).is_dir() else []
    return select_split(records, "val")[0]


def leaderboard_markdown(results: Path, label: str) -> str:
    """What ``mtbench compare --results RESULTS --format md`` prints (defaults otherwise), or
    :func:`empty_text` of ``label`` when there is no completed validation-split run under ``results``."""
    from mtpeft_bench.report.rows import leaderboard, render_document

    rows = leaderboard(_val_records(results))
    return render_document(rows, "md") if rows else empty_text(label)


def proxy_markdown(results: Path, label: str, dataset: str, published: str) -> str:
    """What ``mtbench compare --results RESULTS --dataset DATASET --proxy PUBLISHED`` prints, or
    :func:`no_proxy_text` of ``label`` when ``results`` holds no completed run of ``dataset``."""
    from mtpeft_bench.report.proxy import proxy_validity, render_proxy
    from mtpeft_bench.report.rows import leaderboard

    rows = leaderboard(_val_records(results), dataset=dataset)
    return render_proxy(proxy_validity(rows, dataset, published), "md") if rows else no_proxy_text(label)


@dataclass(frozen=True)
class ParetoFigure:
    """The Pareto figure of one results folder: its rows (one task set, each with a Δm), where its
    PNG and points go, and how the README shows it."""

    rows: list[dict[str, Any]]
    png: Path  # relative to the repository
    title: str

    @property
    def points_path(self) -> Path:
        return self.png.with_suffix(".csv")

    def points_csv(self) -> str:
        """The plotted points, one line per row: its label, task set, seeds, mean trainable
        parameters, Δm mean and 95 % half-width, and whether it is on the Pareto front."""
        from mtpeft_bench.report.plots import row_label
        from mtpeft_bench.report.stats import mean_ci

        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(POINT_COLUMNS)
        for row in self.rows:
            delta, params = mean_ci(row["delta_m"]), mean_ci(row["trainable"])
            writer.writerow([row_label(row), " ".join(row["tasks"]), delta.n, f"{params.mean:.0f}",
                             f"{delta.mean:.4f}", "" if delta.half_width is None else f"{delta.half_width:.4f}",
                             "yes" if row.get("pareto") else "no"])
        return out.getvalue()

    def markdown(self) -> str:
        return (f"![{self.title}]({self.png.as_posix()})\n\n"
                f"*The points of this figure, with their intervals: [{self.points_path.as_posix()}]"
                f"({self.points_path.as_posix()}).*\n")


def pareto_figure(results: Path, name: str) -> ParetoFigure | None:
    """The Pareto figure of the multi-task rows of ``results`` (validation split) that have a Δm,
    or None when there are none. With several multi-task sets, the one with the most rows."""
    from mtpeft_bench.report.rows import leaderboard
    from mtpeft_bench.report.stats import mean_ci

    rows = [r for r in leaderboard(_val_records(results)) if r.get("source") == "suite" and len(r["tasks"]) > 1
            and mean_ci(r["delta_m"]).mean is not None and mean_ci(r["trainable"]).mean is not None]
    if not rows:
        return None
    sets: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        sets.setdefault((row["dataset"], *row["tasks"]), []).append(row)
    key = max(sets, key=lambda k: len(sets[k]))
    title = f"{name}: Δm against trainable parameters (mean ± 95 % interval over seeds)"
    return ParetoFigure(sets[key], FIGURES / f"pareto_{name}.png", title)


@dataclass(frozen=True)
class Block:
    """One generated block: its key (``kind:name[:arg]``) and the body it should hold."""

    key: str
    body: str
    figure: ParetoFigure | None = None


def expected_block(key: str, repo: Path) -> Block:
    """What the block ``key`` should hold for the results under ``repo/results``."""
    kind, name, *args = key.split(":")
    results, label = repo / "results" / name, f"results/{name}"
    if kind == "leaderboard" and not args:
        return Block(key, leaderboard_markdown(results, label))
    if kind == "pareto" and not args:
        figure = pareto_figure(results, name)
        return Block(key, figure.markdown() if figure else no_figure_text(label), figure)
    if kind == "proxy" and len(args) == 1:
        return Block(key, proxy_markdown(results, label, name, args[0]))
    raise ValueError(f"unknown README block {key!r}: use leaderboard:NAME, pareto:NAME or proxy:NAME:DATASET")


def blocks(text: str) -> dict[str, str]:
    """The generated blocks of a README text: key (e.g. ``leaderboard:synth``) → body."""
    return {match["key"]: match["body"] for match in _BLOCK.finditer(text)}


def expected_blocks(text: str, repo: Path) -> dict[str, Block]:
    """:func:`expected_block` of every generated block of ``text`` (each computed once)."""
    return {key: expected_block(key, repo) for key in blocks(text)}


def regenerate(text: str, repo: Path, expected: Mapping[str, Block] | None = None) -> str:
    """``text`` with every generated block replaced by what :func:`expected_block` gives
    (``expected``: those blocks, when already computed)."""
    expected = expected if expected is not None else expected_blocks(text, repo)

    def body(match: re.Match) -> str:
        key = match["key"]
        return f"{START.format(key=key)}\n{expected[key].body}{END.format(key=key)}"

    return _BLOCK.sub(body, text)


def figure_is_current(figure: ParetoFigure, repo: Path) -> bool:
    """Whether the committed points file equals the figure's points, and its PNG exists."""
    points = repo / figure.points_path
    return (repo / figure.png).is_file() and points.is_file() and \
        points.read_text(encoding="utf-8") == figure.points_csv()


def write_figure(figure: ParetoFigure, repo: Path) -> None:
    """Draw the figure (:func:`mtpeft_bench.report.plots.plot_pareto`) and write its points beside it."""
    from mtpeft_bench.atomic import write_text_atomic
    from mtpeft_bench.report.plots import plot_pareto

    plot_pareto(figure.rows, repo / figure.png, figure.title)
    write_text_atomic(repo / figure.points_path, figure.points_csv())


def stale_items(text: str, repo: Path, expected: Mapping[str, Block] | None = None) -> list[str]:
    """The keys of the blocks (and ``figure <path>`` of the figures) that are out of date."""
    expected = expected if expected is not None else expected_blocks(text, repo)
    stale = []
    for key, body in blocks(text).items():
        block = expected[key]
        if body != block.body:
            stale.append(key)
        if block.figure is not None and not figure_is_current(block.figure, repo):
            stale.append(f"figure {block.figure.png.as_posix()}")
    return stale


def main(argv: Sequence[str] | None = None) -> int:
    """Rewrite (or, ``--check``, verify) the generated blocks of ``README.md`` and their figures."""
    parser = argparse.ArgumentParser(prog="python -m mtpeft_bench.report.readme", description=__doc__.split("\n")[0])
    parser.add_argument("--readme", default="README.md", help="the README to update (default: README.md); "
                        "results/ and docs/figures/ are taken beside it")
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if a block or figure is out of date")
    args = parser.parse_args(argv)
    readme = Path(args.readme)
    repo = readme.parent
    text = readme.read_text(encoding="utf-8")
    expected = expected_blocks(text, repo)
    stale = stale_items(text, repo, expected)
    if args.check:
        for item in stale:
            print(f"{readme}: {item} is out of date; run python -m mtpeft_bench.report.readme", file=sys.stderr)
        return 1 if stale else 0
    for block in expected.values():
        if block.figure is not None and not figure_is_current(block.figure, repo):
            write_figure(block.figure, repo)
    new = regenerate(text, repo, expected)
    if new != text:
        from mtpeft_bench.atomic import write_text_atomic

        write_text_atomic(readme, new)
    print(f"{readme}: {len(blocks(text))} generated blocks; rewritten: {', '.join(stale) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
