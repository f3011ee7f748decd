"""From result records to what a reader sees; never imports torch.

    rows.py       leaderboard rows: runs grouped per method and recipe, means over seeds, Pareto front
    tables.py     the rows as Markdown, CSV, LaTeX or HTML (``mtbench compare``)
    plots.py      figures: Pareto, per-task metrics, cost, training curves (``mtbench plot``)
    baselines.py  which single-task baselines a run's Δm is computed against (the suite's or published)
    delta.py      Δm itself, from per-task primary metrics and their baselines
    published.py  the published tables (tasks/reference/<dataset>.yaml): validation, Δm recomputed, checks
    published_view.py  those tables as leaderboard rows and as one checked table (``compare --published``)
    proxy.py      proxy validity: Kendall's τ between a measured and the published Δm ranking

Records are read and written by :mod:`mtpeft_bench.results`.
"""
