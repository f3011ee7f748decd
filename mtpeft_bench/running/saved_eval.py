"""``mtbench eval --checkpoint``: evaluate a saved or exported model with the run's meters and write
a result record.

The model is the run's (running/saved.py), or, with ``form="merged"``, a stock Swin with the
export's merged weights. It is evaluated by the same streaming evaluation as the end of training
(train/evaluation.py: the same meters, the same resizing of predictions, the run's
``limit_eval_batches``), on the run's dataset and data options unless another dataset is named.

The record (``status: evaluated``, run id ``eval-...``) is written atomically into the results
folder beside run records; ``compare``, the Δm baselines and a sweep's "already done" test read
completed runs only, so an evaluation never stands in for a run.
"""

from __future__ import annotations

import datetime as _dt
import secrets
import time
from pathlib import Path
from typing import Any, Mapping

from mtpeft_bench.errors import UserError
from mtpeft_bench.running.saved import MERGED_NAME, SavedModel, build_untrained, config_from_stored, load_trained, load_weights


def model_of(saved: SavedModel, form: str) -> tuple[Any, Any]:
    """The model to evaluate and its resolved run: ``form`` ``model`` (the trained model) or
    ``merged`` (a stock Swin with an export's merged weights of layout ``plain``)."""
    if form == "model":
        return load_trained(saved)
    merged = (saved.card or {}).get("files", {}).get(MERGED_NAME)
    if merged is None or merged.get("layout") != "plain":
        why = (saved.card or {}).get("merged") if saved.card else "it is not an export folder"
        raise UserError(f"--form merged needs an export with plain merged weights; {saved.folder} has none ({why})")
    model, resolved = build_untrained(saved.config, plain=True)
    load_weights(model, saved.folder / MERGED_NAME, in_checkpoint=False)
    return model.eval(), resolved


def eval_loader(resolved: Any, split: str, device: Any) -> Any:
    """The evaluation DataLoader of ``split`` (as running/build.py makes the validation one)."""
    from torch.utils.data import DataLoader

    dataset = resolved.dataset
    if split not in dataset.splits:
        raise UserError(f"dataset '{resolved.cfg.dataset}' has no split '{split}'; splits: {', '.join(dataset.splits)}")
    root = dataset.resolve_root(resolved.data_root)
    data = dataset.build(split, resolved.task_specs, resolved.image_size, root, train=False)
    cfg = resolved.cfg
    batch = getattr(data, "eval_batch_size", None) or cfg.eval_batch_size or cfg.batch_size
    return DataLoader(data, batch_size=batch, shuffle=False, drop_last=False, num_workers=cfg.num_workers,
                      pin_memory=device.type == "cuda")


def evaluation_run(saved: SavedModel, dataset: str | None, data_options: Mapping[str, Any],
                   data_root: str | None, device: str, num_workers: int | None) -> Any:
    """The resolved run to evaluate on: the model's tasks and image size, ``dataset`` (default: the
    run's, with its data options; another one starts from its own defaults) and ``data_options``."""
    from mtpeft_bench.running.setup import prepare

    stored = saved.config
    same = dataset in (None, stored.get("dataset"))
    options = {**(stored.get("data_options", {}) if same else {}), **data_options}
    changes: dict[str, Any] = {"dataset": dataset or stored["dataset"], "data_options": options, "device": device}
    if data_root is not None:
        changes["data_root"] = data_root
    if num_workers is not None:
        changes["num_workers"] = num_workers
    return prepare(config_from_stored(stored, **changes))


def evaluate_saved(saved: SavedModel, out: Path, *, dataset: str | None = None, split: str = "val",
                   data_options: Mapping[str, Any] | None = None, data_root: str | None = None, form: str = "model",
                   device: str = "auto", num_workers: int | None = None, progress: bool = True
                   ) -> tuple[dict[str, Any], Path]:
    """Evaluate ``saved`` and write the record into ``out``; return the record and its path.

    Raises:
        UserError: bad input (unknown dataset or split, tasks or outputs the model lacks, weights
            that do not fit), in one line.
    """
    from mtpeft_bench.results import write_record
    from mtpeft_bench.running.record import environment, task_specs_record
    from mtpeft_bench.running.setup import pick_device, plain_fields
    from mtpeft_bench.train.evaluation import evaluate

    started = time.time()
    target = evaluation_run(saved, dataset, data_options or {}, data_root, device, num_workers)
    model, trained = model_of(saved, form)
    theirs = {s.name: s.num_outputs for s in trained.task_specs}
    for spec in target.task_specs:
        if theirs.get(spec.name) != spec.num_outputs:
            raise UserError(f"task {spec.name} of {target.cfg.dataset} has {spec.num_outputs} outputs, the model's "
                            f"head gives {theirs.get(spec.name)}; evaluate on a dataset with the same tasks")
    torch_device = pick_device(device)
    model.to(torch_device)
    loader = eval_loader(target, split, torch_device)
    cfg = target.cfg
    metrics, timing = evaluate(model, loader, target.task_specs, torch_device, cfg.amp, cfg.amp_dtype,
                               cfg.limit_eval_batches, progress)
    from mtpeft_bench.results import SCHEMA_VERSION

    source = saved.record or {}
    stamp = _dt.datetime.now(_dt.timezone.utc)
    record = {
        "schema_version": SCHEMA_VERSION,
        "run_id": f"eval-{saved.run_id or 'model'}-{stamp.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(2)}",
        "status": "evaluated", "created": stamp.isoformat(timespec="seconds"),
        "wall_time_s": round(time.time() - started, 2),
        "method": cfg.method, "dataset": cfg.dataset, "dataset_version": target.dataset.version,
        "tasks": target.tasks, "seed": cfg.seed, "preset": cfg.preset, "tag": cfg.tag,
        "config": saved.config, "method_config": source.get("method_config", plain_fields(trained.method_cfg)),
        "data_config": plain_fields(target.dataset.config), "config_hash": source.get("config_hash"),
        "task_specs": task_specs_record(target.task_specs),
        "metrics": metrics,
        "evaluation": {"source": str(saved.weights), "source_run_id": saved.run_id, "form": form, "split": split,
                       "images": len(loader.dataset), "limit_eval_batches": cfg.limit_eval_batches,
                       "inference_images_per_s": timing.last_rate},
        "environment": environment(torch_device),
    }
    return record, write_record(out, record)
