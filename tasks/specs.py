"""Task-spec factories shared by every dataset plugin.

The metric names, directions and loss weights of docs/protocol.md 3 and 4.3 live here once, so that
``semseg`` or ``normals`` means the same thing in ``nyud``, ``pascal_mt`` and ``synth``.
"""

from __future__ import annotations

from mtpeft_bench.tasks.base import MetricSpec, TaskSpec


def segmentation_metrics() -> tuple[MetricSpec, ...]:
    return (
        MetricSpec("mIoU", True, primary=True, unit="%",
                   description="mean over classes of IoU from the dataset-pooled confusion matrix"),
        MetricSpec("pixAcc", True, unit="%", description="share of valid pixels given the right class"),
    )


def segmentation_task(name: str, num_classes: int, loss_weight: float, description: str) -> TaskSpec:
    """Cross-entropy segmentation into ``num_classes`` classes, ignore 255, nearest resize."""
    return TaskSpec(name, "segmentation", num_classes, "cross_entropy", loss_weight, segmentation_metrics(),
                    interpolation="nearest", description=description)


def depth_task(description: str = "depth in metres (z along the optical axis)") -> TaskSpec:
    """L1 depth regression in metres; 0 (missing) becomes ignore 255."""
    metrics = (
        MetricSpec("rmse", False, primary=True, unit="m",
                   description="root mean squared depth error over all valid pixels"),
        MetricSpec("log_rmse", False, description="root mean squared error of log depth over valid pixels"),
    )
    return TaskSpec("depth", "depth", 1, "depth_l1", 1.0, metrics, interpolation="nearest",
                    description=description)


def normals_task(description: str = "surface normals (unit vectors)") -> TaskSpec:
    """L1 on unit normals; angular-error metrics in degrees over valid pixels."""
    metrics = (
        MetricSpec("mean", False, primary=True, unit="deg", description="mean angular error over valid pixels"),
        MetricSpec("median", False, unit="deg", description="median angular error over valid pixels"),
        MetricSpec("rmse", False, unit="deg", description="root mean square angular error over valid pixels"),
        MetricSpec("11.25", True, unit="%", description="share of valid pixels within 11.25 degrees"),
        MetricSpec("22.5", True, unit="%", description="share of valid pixels within 22.5 degrees"),
        MetricSpec("30", True, unit="%", description="share of valid pixels within 30 degrees"),
    )
    return TaskSpec("normals", "normals", 3, "normals_l1", 10.0, metrics, interpolation="normals",
                    description=description)


def saliency_task(description: str = "salient-object mask") -> TaskSpec:
    """Balanced BCE saliency; MTLoRA's max-over-thresholds 'mIoU' plus maxF."""
    metrics = (
        MetricSpec("mIoU", True, primary=True, unit="%",
                   description="max over 15 thresholds in [0.2, 0.9] of the image-averaged IoU"),
        MetricSpec("maxF", True, unit="%",
                   description="max over thresholds of the pixel-pooled F-measure with beta^2 = 0.3"),
    )
    return TaskSpec("sal", "saliency", 1, "balanced_bce", 5.0, metrics, interpolation="nearest",
                    description=description)


def edge_task(metric: str, max_dist: float, description: str = "object boundaries") -> TaskSpec:
    """Edge detection with BCE; ``metric`` is ``odsF`` (SEISM-style matching) or ``F_tol``.

    Args:
        metric: ``odsF``: optimal-dataset-scale F with bipartite matching of edge pixels;
            ``F_tol``: max over thresholds of dataset-pooled F1 where a pixel counts as matched if
            the other map has an edge within the tolerance (no one-to-one matching).
        max_dist: the match tolerance as a fraction of the image diagonal.
    """
    descriptions = {
        "odsF": f"optimal-dataset-scale F-measure, edge pixels matched within {max_dist} x diagonal",
        "F_tol": f"max over thresholds of pooled F1, matches within {max_dist} x diagonal (no bipartite matching)",
    }
    if metric not in descriptions:
        raise ValueError(f"edge metric must be one of {tuple(descriptions)}, not {metric!r}")
    metrics = (MetricSpec(metric, True, primary=True, unit="%", description=descriptions[metric]),)
    return TaskSpec("edge", "edge", 1, "edge_bce", 50.0, metrics, interpolation="nearest",
                    description=description, options={"max_dist": max_dist})
