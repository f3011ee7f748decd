"""Write miniature PASCAL_MT and NYUD_MT folders under one data root, for runs without the real data.

The files have the exact on-disk formats of the real archives (``mtpeft_bench.tasks.miniature``,
the writers the tests use), with simple shapes instead of scenes and small, unequal image sizes,
so a run on them goes through the real loaders, augmentations, evaluation at the original size and
meters; its metrics mean nothing. ``benchmarks/gpu_check.sh`` trains on them on a GPU:

    python benchmarks/make_mini_datasets.py /tmp/mini --train 128 --val 8
    mtbench run --method ditask --dataset pascal_mt --data-root /tmp/mini --preset paper --weights none ...

Image ids follow each dataset's naming (``2008_000001`` …, ``0001`` …); the train ids come first.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mtpeft_bench.tasks.miniature import write_nyud, write_pascal

DATASETS = ("pascal_mt", "nyud")


def split_ids(train: int, val: int, name: str) -> dict[str, list[str]]:
    """``{"train": [...], "val": [...]}``: ``train + val`` distinct ids in the dataset's style."""
    if train < 1 or val < 1:
        raise ValueError(f"need at least one train and one val image, got train={train}, val={val}")
    style = (lambda i: f"2008_{i:06d}") if name == "pascal_mt" else (lambda i: f"{i:04d}")
    ids = [style(i + 1) for i in range(train + val)]
    return {"train": ids[:train], "val": ids[train:]}


def write(root: Path, datasets=DATASETS, train: int = 64, val: int = 8) -> dict[str, Path]:
    """Write each dataset's miniature folder under ``root``; returns ``{dataset: folder}``."""
    folders = {}
    for name in datasets:
        if name == "pascal_mt":
            folders[name] = write_pascal(root / "PASCAL_MT", ids=split_ids(train, val, name))
        elif name == "nyud":
            folders[name] = write_nyud(root / "NYUD_MT", ids=split_ids(train, val, name))
        else:
            raise ValueError(f"no miniature writer for {name!r}; choose from {', '.join(DATASETS)}")
    return folders


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, help="the data root to write PASCAL_MT/ and NYUD_MT/ into")
    parser.add_argument("--datasets", default=",".join(DATASETS), help="comma list of pascal_mt, nyud")
    parser.add_argument("--train", type=int, default=64, help="train images per dataset")
    parser.add_argument("--val", type=int, default=8, help="val images per dataset")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    unknown = [n for n in names if n not in DATASETS]
    if unknown or not names:
        parser.error(f"--datasets: choose from {', '.join(DATASETS)}, got {args.datasets!r}")
    if args.train < 1 or args.val < 1:
        parser.error("--train and --val must be at least 1")
    for name, folder in write(args.root, names, args.train, args.val).items():
        print(f"{name}: {folder} ({args.train} train, {args.val} val)")
    print(f"use --data-root {args.root}")


if __name__ == "__main__":
    main()
