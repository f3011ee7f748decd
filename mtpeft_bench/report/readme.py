"""The leaderboard blocks of README.md: what ``mtbench compare`` prints for a committed results folder,
kept between markers so a test can tell when the README and the results disagree.

A block ``<!-- leaderboard:NAME:start -->`` … ``<!-- leaderboard:NAME:end -->`` holds exactly what
``mtbench compare --results results/NAME --format md`` prints for the validation-split records
there; while that folder holds no completed run, it holds :func:`empty_text` instead (compare has
no table to print then). Regenerate every block with::

    python -m mtpeft_bench.report.readme            # rewrites README.md in place
    python -m mtpeft_bench.report.readme --check    # exit 1 if a block is out of date

Torch-free.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

START = "<!-- leaderboard:{name}:start -->"
END = "<!-- leaderboard:{name}:end -->"
_BLOCK = re.compile(r"<!-- leaderboard:(?P<name>[\w.-]+):start -->\n(?P<body>.*?)<!-- leaderboard:(?P=name):end -->",
                    re.DOTALL)


def empty_text(label: str) -> str:
    """The block of a results folder (``label``, e.g. ``results/synth``) without completed runs."""
    return f"*No run has been committed to `{label}/` yet, so there is no table to show.*\n"


def leaderboard_markdown(results: Path, label: str) -> str:
    """What ``mtbench compare --results RESULTS --format md`` prints (defaults otherwise), or
    :func:`empty_text` of ``label`` when there is no completed validation-split run under ``results``."""
    from mtpeft_bench.report.rows import leaderboard, render_document
    from mtpeft_bench.results import read_records, select_split

    records = read_records(results, warn=lambda line: None) if Path(results).is_dir() else []
    rows = leaderboard(select_split(records, "val")[0])
    return render_document(rows, "md") if rows else empty_text(label)


def blocks(text: str) -> dict[str, str]:
    """The leaderboard blocks of a README text: name → body."""
    return {match["name"]: match["body"] for match in _BLOCK.finditer(text)}


def regenerate(text: str, repo: Path) -> str:
    """``text`` with every leaderboard block replaced by :func:`leaderboard_markdown` of
    ``<repo>/results/<name>``."""
    def body(match: re.Match) -> str:
        name = match["name"]
        table = leaderboard_markdown(repo / "results" / name, f"results/{name}")
        return f"{START.format(name=name)}\n{table}{END.format(name=name)}"

    return _BLOCK.sub(body, text)


def main(argv: list[str] | None = None) -> int:
    """Rewrite (or, ``--check``, verify) the leaderboard blocks of ``README.md`` in the current folder."""
    parser = argparse.ArgumentParser(prog="python -m mtpeft_bench.report.readme", description=__doc__.split("\n")[0])
    parser.add_argument("--readme", default="README.md", help="the README to update (default: README.md)")
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if a block is out of date")
    args = parser.parse_args(argv)
    readme = Path(args.readme)
    text = readme.read_text(encoding="utf-8")
    new = regenerate(text, readme.parent)
    stale = [name for name, body in blocks(text).items() if blocks(new)[name] != body]
    if args.check:
        for name in stale:
            print(f"{readme}: the leaderboard:{name} block is out of date; run python -m mtpeft_bench.report.readme",
                  file=sys.stderr)
        return 1 if stale else 0
    if stale:
        from mtpeft_bench.atomic import write_text_atomic

        write_text_atomic(readme, new)
    print(f"{readme}: {len(stale)} of {len(blocks(text))} leaderboard blocks rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
