"""Running: one configuration from settings to result record, and grids of them (sweeps).

The path of ``mtbench run`` (and of ``mtpeft_bench.run``), top to bottom::

    setup.py     resolve_config (defaults → preset → options → --set, one way for every entry
                 point), prepare → ResolvedRun (plugins, tasks, image size, data root),
                 run_hash (the run's identity), the device, writable folders
    resume.py    decide: done, resume or new (for one run and for every point of a sweep)
    session.py   RunSession: the run folder, its checkpoint, how the run ends
    folders.py   run folders on disk (run.json, last.safetensors), finding one to resume
    build.py     seeds, model, data loaders, Trainer → Training
    (train/)     FitLoop: the epochs and the final evaluation → FitResult
    record.py    the result record (metrics, cost, environment, Δm) and its writing
    summary.py   the lines a run logs, and the summary ``mtbench`` prints at its end
    pipeline.py  run(): the above in order → RunResult
    sweep.py     grids of runs: expand, classify (resume.py), run one after another

The package is called ``running``: not ``run``, so that ``mtpeft_bench.run``, the public
function, stays a function; not ``runs``, which is the run folders' name (and git-ignored).
"""
