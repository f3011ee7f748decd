"""The published-table options of ``mtbench compare``: ``--published``, ``--only-published``, ``--proxy``
and the deprecated ``--reference``. Torch-free, like ``compare`` itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import click

from mtpeft_bench.cli.options import split_list
from mtpeft_bench.errors import UserError


def _check_names(names: Sequence[str]) -> list[str]:
    from mtpeft_bench.registry import unknown_name
    from mtpeft_bench.report.published import published_datasets

    available = published_datasets()
    for name in names:
        if name not in available:
            raise UserError(unknown_name("published table", name, available))
    return list(names)


def published_datasets_wanted(published: str | None, reference: bool, dataset: str | None,
                              records: Sequence[dict[str, Any]]) -> list[str]:
    """The datasets whose published rows join the leaderboard (``--published``, or ``--reference``, which
    says so on stderr and stands for the ``--dataset`` name or each dataset of the results)."""
    if published:
        return _check_names(split_list(published) or [])
    if not reference:
        return []
    from mtpeft_bench.report.published import published_datasets

    names = [dataset] if dataset else sorted({r["dataset"] for r in records if r.get("status") == "completed"})
    names = [n for n in names if n in published_datasets()]
    click.echo("warning: --reference is deprecated; use --published DATASET"
               + (f" (here: --published {','.join(names)})" if names else ""), err=True)
    return names


def published_table_text(name: str | None, fmt: str) -> str:
    """``--only-published``: the whole published table of ``name`` and its checks."""
    if not name:
        raise UserError("--only-published needs --published DATASET (e.g. --published pascal_mt)")
    from mtpeft_bench.report.published_view import render_published

    (name,) = _check_names([name])
    return render_published(name, fmt)


def proxy_text(records: Sequence[dict[str, Any]], path: Path, dataset: str | None, proxy: str, fmt: str,
               baseline_method: str, methods: str | None, tags: str | None) -> str:
    """``--proxy``: the measured rows of one dataset paired with the published rows of ``proxy``, and τ."""
    from mtpeft_bench.report.proxy import proxy_validity, render_proxy
    from mtpeft_bench.report.rows import leaderboard

    _check_names([proxy])
    if not records:
        raise UserError(f"no result files under {path}; --proxy compares measured runs with published ones")
    if dataset is None:
        found = sorted({r["dataset"] for r in records if r.get("status") == "completed"})
        if len(found) != 1:
            raise UserError(f"--proxy needs --dataset: the results hold {', '.join(found) or 'no completed run'}")
        dataset = found[0]
    rows = leaderboard(records, dataset=dataset, baseline_method=baseline_method, methods=split_list(methods),
                       tags=split_list(tags))
    if not rows:
        raise UserError(f"no completed runs of {dataset} under {path}")
    return render_proxy(proxy_validity(rows, dataset, proxy), fmt)
