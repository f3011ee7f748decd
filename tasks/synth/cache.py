"""The ``synth`` dataset on disk: rendering it into the NYUD_MT-style layout, its manifest, the cache folder.

Generation writes into a temporary sibling folder renamed into place at the end; the work is spread
over a process pool (:mod:`mtpeft_bench.tasks.synth.pool`), and every file depends only on its
own (seed, split, index), so the output is the same for any number of workers.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from mtpeft_bench.errors import UserError
from mtpeft_bench.tasks.synth.config import GENERATOR_VERSION, SynthConfig
from mtpeft_bench.tasks.synth.pool import default_workers, progress_bar, run_chunks
from mtpeft_bench.tasks.synth.render import render_scene
from mtpeft_bench.tasks.synth.sampling import sample_rng, sample_scene
from mtpeft_bench.tasks.synth.scene import CLASS_NAMES, PART_NAMES


def sample_id(split: str, index: int) -> str:
    return f"{split}_{index:05d}"


def generate_sample(config: SynthConfig, split: str, index: int) -> dict[str, np.ndarray]:
    """Render image ``index`` of ``split`` (arrays of :func:`render_scene`)."""
    return render_scene(sample_scene(sample_rng(config.seed, split, index)), config.height, config.width)


SYNTH_FOLDERS = ("images", "segmentation", "parts", "saliency", "depth", "normals", "edge", "gt_sets")
MANIFEST = "synth.json"


def write_sample(folder: Path, sid: str, s: dict[str, np.ndarray]) -> None:
    """Write one rendered sample into the NYUD_MT-style ``folder`` (labels stored as k+1)."""
    from PIL import Image

    rgb = np.round(s["image"] * 255).astype(np.uint8)
    # 4:4:4 chroma: the default 4:2:0 subsampling would smear colour edges that the labels keep sharp
    Image.fromarray(rgb).save(folder / "images" / f"{sid}.jpg", quality=95, subsampling=0)
    Image.fromarray(s["semseg"] + np.uint8(1)).save(folder / "segmentation" / f"{sid}.png")
    Image.fromarray(s["parts"] + np.uint8(1)).save(folder / "parts" / f"{sid}.png")
    Image.fromarray((s["sal"] * 255).astype(np.uint8)).save(folder / "saliency" / f"{sid}.png")
    for name, key in (("depth", "depth"), ("normals", "normals"), ("edge", "edge")):
        with open(folder / name / f"{sid}.npy", "wb") as f:
            np.save(f, s[key].astype(np.float32))


def manifest_for(config: SynthConfig) -> dict[str, Any]:
    return {
        "dataset": "synth",
        "generator_version": GENERATOR_VERSION,
        "config": config.generation(),
        "counts": config.counts(),
        "classes": {"semseg": list(CLASS_NAMES), "parts": list(PART_NAMES)},
        "storage": "NYUD_MT layout; segmentation/parts PNG store class k as k+1; saliency PNG 0/255; "
                   "depth metres (z-depth); normals camera frame x right, y up, z towards the viewer",
        "created_by": " ".join([os.path.basename(sys.argv[0] or "python"), *sys.argv[1:]]),
    }


def manifest_matches(folder: Path, config: SynthConfig) -> bool:
    try:
        found = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return found.get("generator_version") == GENERATOR_VERSION and found.get("config") == config.generation()


def generate_dataset(folder: Path, config: SynthConfig, progress: bool = True, workers: int | None = None) -> None:
    """Render every image of ``config`` into ``folder`` (which must exist and be empty).

    Args:
        workers: processes rendering in parallel (default: one per available core, at most 8,
            on Linux and for 64 images or more). Every file depends only on its own (seed, split,
            index), so the output is the same for any number of workers.
    """
    for name in SYNTH_FOLDERS:
        (folder / name).mkdir()
    jobs = [(split, i) for split, n in config.counts().items() for i in range(n)]
    workers = default_workers(len(jobs)) if workers is None else max(1, int(workers))
    size = 1 if workers == 1 else 16  # in one process, one image per chunk moves the bar smoothly
    chunks = [(folder, config, jobs[k:k + size]) for k in range(0, len(jobs), size)]
    bar = progress_bar(len(jobs), f"synth: generating {len(jobs)} images into {folder.parent}", enabled=progress)
    try:
        for done in run_chunks(_render_chunk, chunks, workers):
            bar.update(done)
    finally:
        bar.close()
    for split, n in config.counts().items():
        (folder / "gt_sets" / f"{split}.txt").write_text("".join(sample_id(split, i) + "\n" for i in range(n)))
    (folder / MANIFEST).write_text(json.dumps(manifest_for(config), indent=2, sort_keys=True) + "\n")


def _render_chunk(args: tuple[Path, SynthConfig, list[tuple[str, int]]]) -> int:
    """Render and write the (split, index) jobs of one chunk; returns how many were written."""
    folder, config, jobs = args
    for split, i in jobs:
        write_sample(folder, sample_id(split, i), generate_sample(config, split, i))
    return len(jobs)


def check_dataset_folder(folder: Path, config: SynthConfig) -> bool:
    """Whether ``folder`` already holds the dataset of ``config`` (False: it is free for generating
    it); reads the manifest only, so a run can ask before any slow work.

    Raises:
        UserError: ``folder`` holds something else (another configuration or unrelated files).
    """
    folder = Path(folder).expanduser()
    if manifest_matches(folder, config):
        return True
    if (folder / MANIFEST).is_file():
        raise UserError(f"{folder} holds a synth dataset made with other settings or generator version; "
                        "delete it or choose another --data-root")
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise UserError(f"{folder} exists and is not a synth dataset; choose an empty or new --data-root")
    return False


def ensure_dataset(folder: Path, config: SynthConfig, progress: bool = True) -> Path:
    """Make ``folder`` hold the dataset of ``config``: reuse it if its manifest matches, else generate.

    Generation writes into a temporary sibling folder that is renamed into place at the end, so a
    killed run never leaves a half-written dataset behind under the final name.

    Raises:
        UserError: ``folder`` holds something else (another configuration or unrelated files).
    """
    folder = Path(folder).expanduser()
    if check_dataset_folder(folder, config):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        generate_dataset(tmp, config, progress)
        try:
            os.replace(tmp, folder)  # atomic; replaces an empty folder, fails on a non-empty one
        except OSError:
            if not manifest_matches(folder, config):  # not a concurrent run that finished first
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def default_cache_root() -> Path:
    """``$MTBENCH_CACHE``, else ``$XDG_CACHE_HOME/mtbench``, else ``~/.cache/mtbench``."""
    if os.environ.get("MTBENCH_CACHE"):
        return Path(os.environ["MTBENCH_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "mtbench"
    return Path.home() / ".cache" / "mtbench"

