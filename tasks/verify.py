"""``mtbench data verify``: check a real dataset's folder file by file (docs/protocol.md 6).

For every split: the split file exists and lists ids (compared with the official split sizes);
for every id: the image and every task's target file exist, decode completely (a truncated JPEG
or PNG, a broken ``.npy`` or ``.mat`` is found here), have the image's height and width, and hold
values of the task's value set (class ids, binary masks, finite depth >= 0, normals in [-1, 1]).
Every problem is one line that starts with the file's path.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from mtpeft_bench.errors import UserError


@dataclass
class VerifyReport:
    """What :func:`verify` found: ``problems`` (file errors) and ``notes`` (e.g. unofficial split sizes)."""

    folder: Path
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    files_checked: int = 0
    samples: dict[str, int] = field(default_factory=dict)

    def ok(self, strict: bool = False) -> bool:
        return not self.problems and not (strict and self.notes)


def verify(plugin: Any, root: Path | None, splits: Sequence[str] | None = None,
           progress: Callable[[str, int], Any] | None = None) -> VerifyReport:
    """Check ``plugin``'s dataset under ``root``; see the module docstring.

    Args:
        plugin: a real-dataset plugin instance (``resolve_root``, ``layout``, ``split_sizes``).
        root: the data root (None: ``$MTBENCH_DATA``).
        splits: the splits to check (default: all).
        progress: ``progress(split, n)`` returns an object with ``update(k)`` / ``close()`` (a tqdm).
    """
    from mtpeft_bench.tasks.nyud_layout import DataFileError, check_target_values

    folder = plugin.resolve_root(root)
    layout = plugin.layout(folder)
    specs = plugin.task_specs(list(plugin.tasks))
    report = VerifyReport(folder)
    skipped: set[str] = set()

    def problem(exc: Exception | str) -> None:
        # A broken file can surface twice (PASCAL's part masks are checked against the image size).
        if str(exc) not in report.problems:
            report.problems.append(str(exc))

    for split in splits or plugin.splits:
        if split not in plugin.splits:
            raise UserError(f"dataset '{plugin.name}' has no split {split!r}; splits: {', '.join(plugin.splits)}")
        try:
            ids = layout.ids(split)
        except DataFileError as exc:
            problem(exc)
            continue
        report.samples[split] = len(ids)
        expected = getattr(plugin, "split_sizes", {}).get(split)
        if expected is not None and len(ids) != expected:
            report.notes.append(f"split '{split}' lists {len(ids)} images, the official split has {expected:,} "
                                "(a subset or another version?)")
        for sid, count in Counter(ids).items():
            if count > 1:
                problem(f"{layout.split_file(split)}: id {sid!r} is listed {count} times")
        bar = progress(split, len(ids)) if progress else None
        for sid in ids:
            try:
                image = layout.read_image(sid)
                report.files_checked += 1
            except DataFileError as exc:
                problem(exc)
                image = None
            for spec in specs:
                if spec.name in skipped:
                    continue
                path = layout.path(spec.name, sid)
                try:
                    target = layout.read_target(spec, sid)
                    report.files_checked += 1
                    if image is not None and target.shape[-2:] != image.shape[:2]:
                        raise DataFileError(path, f"{spec.name} is {target.shape[-2]}x{target.shape[-1]}, its image "
                                            f"{layout.image_path(sid).name} is {image.shape[0]}x{image.shape[1]}")
                    check_target_values(spec, target, path)
                except DataFileError as exc:
                    problem(exc)
                except UserError as exc:  # e.g. an optional dependency is missing: say so once
                    skipped.add(spec.name)
                    report.notes.append(f"{spec.name} not checked: {exc}")
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
    return report
