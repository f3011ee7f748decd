"""Leaderboard protocols: the file that says what ``mtbench sweep --protocol NAME`` runs, and the
run configuration of each of its runs.

A protocol (``mtpeft_bench/protocols/<name>.yaml``, or any YAML file given by path) names a dataset,
a preset, the seeds, the method rows (each a method and its options), the single-task baselines
that Δm needs, extra tagged rows, and how each row's learning rate is chosen: a grid of multipliers
of the preset's shared ``base_lr``, scored at one seed on training images held out of training
(``data.holdout``; running/lr_selection.py). docs/leaderboard.md describes the format.

A multiplier scales the whole schedule (``base_lr``, ``warmup_lr`` and ``min_lr``), so every rate
of a grid has the same warm-up and decay shape. Every configuration made here carries
``lr_selection`` (its protocol, row, rule and multiplier): it is stored in the result record, is
not part of the run's identity, and names the protocol in the record's ``recipe_key`` in place of
the rate (running/record.py), so all rows share the protocol's single-task baselines.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from mtpeft_bench.errors import UserError

#: Where a configuration's rate came from (``lr_selection["rule"]``).
RULES = ("selection", "chosen", "baseline", "default")


@dataclass(frozen=True)
class Row:
    """One method row: ``name`` (unique), ``method`` and its options (``--set method.<key>``)."""

    name: str
    method: str
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Extra:
    """A row run again under a ``tag``: at the shared rate (``rate: default``) or at the row's chosen
    one (``rate: chosen``), with extra ``settings`` (e.g. ``weights: none``)."""

    row: str
    tag: str
    rate: str
    settings: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Selection:
    """How rates are chosen: the ``multipliers`` of the shared base rate, scored at ``seed`` on the
    last ``holdout`` training images against the ``reference`` row's run at multiplier 1; a best rate
    on a grid edge extends the grid that way, at most ``max_extensions`` times."""

    seed: int
    holdout: int
    multipliers: tuple[float, ...]
    max_extensions: int
    reference: str


@dataclass(frozen=True)
class Protocol:
    """A loaded, checked protocol file (``source``: where it was read from)."""

    name: str
    dataset: str
    preset: str
    seeds: tuple[int, ...]
    settings: Mapping[str, Any]
    selection: Selection
    baseline_method: str
    baseline_rate_of: str
    rows: tuple[Row, ...]
    extras: tuple[Extra, ...]
    source: str
    close_seeds: tuple[int, ...] = ()  # more seeds for rows within one interval of another (running/close_rows.py)

    def row(self, name: str) -> Row:
        return next(r for r in self.rows if r.name == name)

    def to_dict(self) -> dict[str, Any]:
        """The protocol as its file states it (the realised protocol file repeats it)."""
        sel = self.selection
        return {
            "name": self.name, "dataset": self.dataset, "preset": self.preset, "seeds": list(self.seeds),
            "settings": dict(self.settings),
            "selection": {"seed": sel.seed, "holdout": sel.holdout, "multipliers": list(sel.multipliers),
                          "max_extensions": sel.max_extensions, "reference": sel.reference},
            "baselines": {"method": self.baseline_method, "rate_of": self.baseline_rate_of},
            "rows": [{"name": r.name, "method": r.method, "options": dict(r.options)} for r in self.rows],
            "extras": [{"row": e.row, "tag": e.tag, "rate": e.rate, "settings": dict(e.settings)} for e in self.extras],
            **({"close_rows": {"seeds": list(self.close_seeds)}} if self.close_seeds else {}),
        }


def packaged_protocols() -> list[str]:
    """The names of the protocols shipped with mtbench."""
    from importlib import resources

    folder = resources.files("mtpeft_bench").joinpath("protocols")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def read_protocol_text(name_or_path: str) -> tuple[str, str]:
    """The text of a protocol given by packaged name or by path, and where it was read from.

    Raises:
        UserError: neither a packaged protocol nor a readable file.
    """
    from importlib import resources

    from mtpeft_bench.registry import unknown_name

    path = Path(name_or_path).expanduser()
    if path.suffix in (".yaml", ".yml") or path.is_file():
        try:
            return path.read_text(encoding="utf-8"), str(path)
        except OSError as exc:
            raise UserError(f"cannot read protocol file {path}: {exc.strerror or exc}") from None
    if name_or_path in packaged_protocols():
        text = resources.files("mtpeft_bench").joinpath("protocols", f"{name_or_path}.yaml").read_text("utf-8")
        return text, f"mtpeft_bench/protocols/{name_or_path}.yaml"
    raise UserError(unknown_name("protocol", name_or_path, packaged_protocols())
                    + " (or give the path of a protocol .yaml file)")


def load_protocol(name_or_path: str) -> Protocol:
    """Read and check a protocol (see the module docstring).

    Raises:
        UserError: the file cannot be read or parsed, or a key is missing or wrong (one line naming it).
    """
    import yaml

    text, source = read_protocol_text(name_or_path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UserError(f"protocol {source} is not valid YAML ({' '.join(str(exc).split())})") from None
    return parse_protocol(data, source)


def _need(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str, default: Any = ...) -> Any:
    if key not in data or data[key] is None:
        if default is not ...:
            return default
        raise UserError(f"{where} has no '{key}'")
    value = data[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise UserError(f"{where}: '{key}' has the wrong type ({type(value).__name__}: {value!r})")
    return value


def parse_protocol(data: Any, source: str) -> Protocol:
    """Check a parsed protocol file and turn it into a :class:`Protocol` (``source`` names it in errors)."""
    where = f"protocol {source}"
    if not isinstance(data, Mapping):
        raise UserError(f"{where} is not a mapping of settings")
    sel = _need(data, "selection", Mapping, where)
    multipliers = tuple(float(m) for m in _need(sel, "multipliers", list, f"{where} selection"))
    if len(multipliers) < 2 or any(m <= 0 for m in multipliers) or len(set(multipliers)) != len(multipliers):
        raise UserError(f"{where}: selection.multipliers must list at least two distinct positive numbers")
    if 1.0 not in multipliers:
        raise UserError(f"{where}: selection.multipliers must include 1 (the shared rate, the reference's run)")
    selection = Selection(seed=_need(sel, "seed", int, f"{where} selection", 0),
                          holdout=_need(sel, "holdout", int, f"{where} selection"),
                          multipliers=tuple(sorted(multipliers)),
                          max_extensions=_need(sel, "max_extensions", int, f"{where} selection", 3),
                          reference=_need(sel, "reference", str, f"{where} selection", "full"))
    if selection.holdout < 1 or selection.max_extensions < 0:
        raise UserError(f"{where}: selection.holdout must be at least 1 and max_extensions at least 0")
    rows = []
    for i, item in enumerate(_need(data, "rows", list, where)):
        if not isinstance(item, Mapping):
            raise UserError(f"{where}: rows[{i}] is not a mapping with name, method and options")
        rows.append(Row(_need(item, "name", str, f"{where} rows[{i}]"), _need(item, "method", str, f"{where} rows[{i}]"),
                        dict(_need(item, "options", Mapping, f"{where} rows[{i}]", {}))))
    names = [r.name for r in rows]
    if not rows or len(set(names)) != len(names):
        raise UserError(f"{where}: rows must name at least one row, each name once")
    extras = []
    for i, item in enumerate(_need(data, "extras", list, where, [])):
        if not isinstance(item, Mapping):
            raise UserError(f"{where}: extras[{i}] is not a mapping with row, tag and rate")
        extra = Extra(_need(item, "row", str, f"{where} extras[{i}]"), _need(item, "tag", str, f"{where} extras[{i}]"),
                      _need(item, "rate", str, f"{where} extras[{i}]", "chosen"),
                      dict(_need(item, "settings", Mapping, f"{where} extras[{i}]", {})))
        if extra.row not in names or extra.rate not in ("chosen", "default") or not extra.tag:
            raise UserError(f"{where}: extras[{i}] must name a row ({', '.join(names)}), a non-empty tag and "
                            f"rate chosen or default")
        if any((e.row, e.tag) == (extra.row, extra.tag) for e in extras):
            raise UserError(f"{where}: extras[{i}] repeats row {extra.row} with tag {extra.tag}")
        extras.append(extra)
    base = _need(data, "baselines", Mapping, where, {})
    protocol = Protocol(
        name=_need(data, "name", str, where), dataset=_need(data, "dataset", str, where),
        preset=_need(data, "preset", str, where), seeds=tuple(_need(data, "seeds", list, where)),
        settings=dict(_need(data, "settings", Mapping, where, {})), selection=selection,
        baseline_method=_need(base, "method", str, f"{where} baselines", "full"),
        baseline_rate_of=_need(base, "rate_of", str, f"{where} baselines", selection.reference),
        rows=tuple(rows), extras=tuple(extras), source=source,
        close_seeds=tuple(_need(_need(data, "close_rows", Mapping, where, {}), "seeds", list, f"{where} close_rows", [])))

    def integers(seeds: tuple) -> bool:
        return all(isinstance(s, int) and not isinstance(s, bool) for s in seeds) and len(set(seeds)) == len(seeds)

    if not protocol.seeds or not integers(protocol.seeds):
        raise UserError(f"{where}: seeds must be a list of distinct integers")
    if not integers(protocol.close_seeds) or set(protocol.close_seeds) & set(protocol.seeds):
        raise UserError(f"{where}: close_rows.seeds must be distinct integers other than the protocol's seeds")
    for role, name in (("selection.reference", selection.reference), ("baselines.rate_of", protocol.baseline_rate_of)):
        if name not in names:
            raise UserError(f"{where}: {role} names row '{name}', which the protocol does not have "
                            f"(rows: {', '.join(names)})")
    return protocol


@dataclass(frozen=True)
class RunSpec:
    """One run a protocol asks for: which row (or baseline) with which seed, multiplier and rule."""

    kind: str  # selection | row | baseline | extra
    row: str  # the row's name (for a baseline: the baseline method, for an extra: the row it repeats)
    method: str
    seed: int
    multiplier: float
    rule: str  # one of RULES
    options: Mapping[str, Any] = field(default_factory=dict)
    tasks: tuple[str, ...] | None = None
    tag: str = ""
    settings: Mapping[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        what = {"selection": f"{self.row} ×{self.multiplier:g} (holdout)",
                "row": f"{self.row} ×{self.multiplier:g}",
                "baseline": f"{self.method} on {','.join(self.tasks or ())} ×{self.multiplier:g}",
                "extra": f"{self.row} [{self.tag}] ×{self.multiplier:g}"}[self.kind]
        return f"{what} seed {self.seed}"


def selection_folder(out: Path) -> Path:
    """Where the rate selection's runs go: ``<out>/lr_selection`` (their ``eval_split`` is ``holdout``)."""
    return Path(out) / "lr_selection"


def build_config(protocol: Protocol, spec: RunSpec, out: Path, options: Mapping[str, Any],
                 sets: Mapping[str, Any], provenance: Mapping[str, Any] | None = None) -> Any:
    """The run configuration of ``spec``: the protocol's preset and settings, the row's options, the
    command line's ``options``/``sets`` (settings outside a run's identity: device, data root...),
    then the whole schedule scaled by the multiplier; ``lr_selection`` says where the rate came from.

    Selection runs set ``data.holdout`` and write into :func:`selection_folder`; every run shares
    one runs folder (``runs/`` beside ``out``, unless ``runs_dir`` is set), so their locks meet.
    """
    from mtpeft_bench.running.setup import resolve_config

    merged: dict[str, Any] = {**protocol.settings, **{f"method.{k}": v for k, v in spec.options.items()},
                              **spec.settings, **sets}
    if spec.kind == "selection":
        merged["data.holdout"] = protocol.selection.holdout
    if spec.tasks:  # a single-task baseline: its task, whatever task set the protocol's settings name
        merged["tasks"] = ",".join(spec.tasks)
    fields = {**{k: v for k, v in options.items() if v is not None}, "dataset": protocol.dataset,
              "method": spec.method, "seed": spec.seed, "tag": spec.tag,
              "out": str(selection_folder(out) if spec.kind == "selection" else out)}
    cfg = resolve_config(protocol.preset, fields, merged)
    if not cfg.runs_dir:  # relative when out is: records name no folder of this machine
        cfg.runs_dir = str(Path(out).parent / "runs")
    shared = cfg.base_lr
    cfg.base_lr, cfg.warmup_lr, cfg.min_lr = (cfg.base_lr * spec.multiplier, cfg.warmup_lr * spec.multiplier,
                                              cfg.min_lr * spec.multiplier)
    cfg.lr_selection = {"protocol": protocol.name, "row": spec.row, "rule": spec.rule,
                        "multiplier": spec.multiplier, "shared_base_lr": shared, **(provenance or {})}
    return cfg
