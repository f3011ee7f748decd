"""From result records to what a reader sees; never imports torch.

    rows.py       leaderboard rows: runs grouped per method and recipe, means over seeds, Pareto front
    stats.py      confidence intervals over seeds and paired t-tests (scipy)
    significance.py  which rows are tested against which: the reference row, the best row, missing seeds
    tables.py     the rows as Markdown, CSV, LaTeX or HTML (``mtbench compare``)
    document.py   the table with its notes, per dataset: what ``mtbench compare`` prints
    readme.py     the generated blocks of README.md: table, Pareto figure, proxy check (``python -m mtpeft_bench.report.readme``)
    plots.py      figures: Pareto, per-task metrics, cost, training curves (``mtbench plot``)
    baselines.py  which single-task baselines a run's Δm is computed against (the suite's or published)
    delta.py      Δm itself, from per-task primary metrics and their baselines
    published.py  the published tables (tasks/reference/<dataset>.yaml): validation, Δm recomputed, checks
    published_view.py  those tables as leaderboard rows and as one checked table (``compare --published``)
    proxy.py      proxy validity: Kendall's τ between a measured and the published Δm ranking

Records are read and written by :mod:`mtpeft_bench.results`.
"""
