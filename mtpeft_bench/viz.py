"""Pictures of dataset samples, to check data and labels by eye.

:func:`draw_samples` lays out one row per sample: the image, then every task target
(segmentation in a categorical palette, depth in a perceptual colormap with a colour bar, normals
as RGB = (n + 1) / 2, saliency and edges in grey; ignored pixels black).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mtpeft_bench.task_kinds import TASK_KIND_TABLE


def target_to_rgb(target: Any, spec: Any) -> tuple[np.ndarray, tuple[float, float] | None]:
    """Colour one target tensor of ``spec`` (format of tasks/base.py) by its kind's rule
    (:mod:`mtpeft_bench.task_kinds`).

    Returns:
        float[H, W, 3] in [0, 1] (ignored pixels black) and, for depth, the (min, max) shown by
        the colour map (else None).
    """
    t = target.detach().cpu().numpy() if hasattr(target, "detach") else np.asarray(target)
    return TASK_KIND_TABLE[spec.kind].to_rgb(t, spec)


def draw_samples(plugin: Any, task_specs: Sequence[Any], root: Path | str | None, n: int, out_path: Path | str,
                 split: str = "val") -> Path:
    """Draw the first ``n`` samples of ``split`` (evaluation transforms) into a PNG at ``out_path``.

    Args:
        plugin: a dataset plugin instance (``tasks/base.py``).
        task_specs: the tasks to show, one column each after the image.
        root: the data folder given to ``plugin.resolve_root``.
        n: number of rows (fewer if the split is smaller).
        out_path: the PNG to write; written to a temporary file beside it and renamed into place.

    Returns:
        ``out_path`` as a Path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize as ColourNorm
    from matplotlib.figure import Figure

    from mtpeft_bench.tasks.transforms import denormalize

    out_path = Path(out_path)
    folder = plugin.resolve_root(Path(root) if root is not None else None)
    dataset = plugin.build(split, list(task_specs), plugin.image_size, folder, train=False)
    rows = min(int(n), len(dataset))
    if rows < 1:
        raise ValueError(f"nothing to draw: n={n}, split {split!r} has {len(dataset)} samples")
    cols = 1 + len(task_specs)
    h, w = plugin.image_size
    cell = 2.2
    fig = Figure(figsize=(cols * cell * max(w / h, 0.5), rows * cell + 0.4), layout="constrained")
    FigureCanvasAgg(fig)  # render with Agg whatever pyplot's backend is
    axes = fig.subplots(rows, cols, squeeze=False)
    for r in range(rows):
        sample = dataset[r]
        axes[r, 0].imshow(denormalize(sample["image"]).permute(1, 2, 0).numpy())
        axes[r, 0].set_ylabel(sample["meta"]["id"], fontsize=7)
        for c, spec in enumerate(task_specs, start=1):
            rgb, span = target_to_rgb(sample[spec.name], spec)
            axes[r, c].imshow(rgb, interpolation="nearest")
            if span is not None:
                bar = ScalarMappable(ColourNorm(*span), "viridis")
                fig.colorbar(bar, ax=axes[r, c], fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    for c, title in enumerate(["image", *(f"{s.name} ({s.kind})" for s in task_specs)]):
        axes[0, c].set_title(title, fontsize=8)
    fig.suptitle(f"{plugin.name} / {split}: {rows} samples", fontsize=9)

    out_path.parent.mkdir(parents=True, exist_ok=True)
    # same folder, so os.replace is an atomic rename; open() (not mkstemp) keeps umask permissions
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.png.tmp")
    try:
        with open(tmp, "wb") as f:
            fig.savefig(f, format="png", dpi=110)
        os.replace(tmp, out_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out_path
