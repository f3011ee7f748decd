"""Registries of method and dataset plugins.

A plugin is a class decorated with ``@register_method("name")`` or ``@register_dataset("name")``.
The registries find plugins without importing them: the built-in ones by reading the source files
of ``mtpeft_bench.methods`` / ``mtpeft_bench.tasks`` (an ``ast`` scan for the decorator), the
out-of-tree ones through the entry-point groups ``mtpeft_bench.methods`` and
``mtpeft_bench.datasets``. So ``mtbench ls`` lists names and one-line descriptions without
importing torch; a plugin module is imported only when :meth:`Registry.get` asks for it.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable

from mtpeft_bench.errors import UserError


_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*[a-z0-9]$|^[a-z]$")


@dataclass(frozen=True)
class Entry:
    """What the registry knows about a plugin before importing it."""

    name: str
    description: str
    module: str
    source: str  # "builtin", "entry-point <distribution>", or "runtime"


def _first_line(doc: str | None) -> str:
    if not doc:
        return ""
    for line in doc.strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


def _scan_source(path: Path, decorator: str) -> list[tuple[str, str]]:
    """Return ``(name, description)`` for every class in ``path`` decorated with ``decorator("name")``."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (OSError, SyntaxError):
        return []
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ClassDef):
            continue
        for dec in node.decorator_list:
            if not isinstance(dec, ast.Call):
                continue
            func = dec.func
            func_name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if func_name != decorator or not dec.args or not isinstance(dec.args[0], ast.Constant):
                continue
            description = _first_line(ast.get_docstring(node))
            for kw in dec.keywords:
                if kw.arg == "description" and isinstance(kw.value, ast.Constant):
                    description = str(kw.value.value)
            found.append((str(dec.args[0].value), description))
    return found


class Registry:
    """Name → plugin class, with lazy discovery and did-you-mean errors.

    Args:
        kind: singular noun used in messages ("method", "dataset").
        package: the package whose modules hold the built-in plugins.
        group: the entry-point group for out-of-tree plugins.
        decorator: the decorator's name as written in plugin sources (for the source scan).
    """

    def __init__(self, kind: str, package: str, group: str, decorator: str):
        self.kind = kind
        self.package = package
        self.group = group
        self.decorator = decorator
        self._classes: dict[str, type] = {}
        self._runtime: dict[str, Entry] = {}
        self._index: dict[str, Entry] | None = None

    # -- registration -------------------------------------------------------------------------
    def register(self, name: str, *, description: str | None = None) -> Callable[[type], type]:
        """Class decorator: register ``cls`` under ``name`` and set ``cls.name``."""
        if not _NAME_RE.match(name):
            raise ValueError(
                f"invalid {self.kind} name {name!r}: use lowercase letters, digits and '_', "
                "starting with a letter and not ending with '_'"
            )

        def decorate(cls: type) -> type:
            known = self._classes.get(name)
            if known is not None and known is not cls and _qualname(known) != _qualname(cls):
                raise ValueError(f"{self.kind} {name!r} is registered twice: {_qualname(known)} and {_qualname(cls)}")
            cls.name = name
            if description is not None:
                cls.description = description
            elif "description" not in cls.__dict__:
                cls.description = _first_line(cls.__doc__)
            self._classes[name] = cls
            if name not in self.index():
                self._runtime[name] = Entry(name, cls.description, cls.__module__, "runtime")
            return cls

        return decorate

    # -- discovery ----------------------------------------------------------------------------
    def _package_dir(self) -> Path | None:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            return None
        return Path(next(iter(spec.submodule_search_locations)))

    def _scan_builtin(self) -> dict[str, Entry]:
        index: dict[str, Entry] = {}
        root = self._package_dir()
        if root is None:
            return index
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root).with_suffix("")
            if any(part.startswith("_") and part != "__init__" for part in rel.parts):
                continue
            parts = [p for p in rel.parts if p != "__init__"]
            module = ".".join([self.package, *parts])
            for name, description in _scan_source(path, self.decorator):
                index.setdefault(name, Entry(name, description, module, "builtin"))
        return index

    def _scan_entry_points(self) -> dict[str, Entry]:
        index: dict[str, Entry] = {}
        for ep in metadata.entry_points(group=self.group):
            module = ep.value.split(":", 1)[0].strip()
            description = ""
            try:
                spec = importlib.util.find_spec(module)
                if spec is not None and spec.origin and spec.origin.endswith(".py"):
                    for name, desc in _scan_source(Path(spec.origin), self.decorator):
                        if name == ep.name:
                            description = desc
            except (ImportError, ValueError):
                pass
            dist = getattr(ep, "dist", None)
            source = f"entry-point {dist.name}" if dist is not None else "entry-point"
            index.setdefault(ep.name, Entry(ep.name, description, module, source))
        return index

    def index(self) -> dict[str, Entry]:
        """All known plugins (built-in, entry points, registered at run time), without importing them."""
        if self._index is None:
            index = self._scan_entry_points()
            index.update(self._scan_builtin())  # built-ins win over a same-named entry point
            self._index = index
        return {**self._runtime, **self._index}

    def refresh(self) -> None:
        """Forget the cached index (after installing a plugin in a running process)."""
        self._index = None

    def names(self) -> list[str]:
        return sorted(self.index())

    # -- lookup -------------------------------------------------------------------------------
    def unknown(self, name: str) -> UserError:
        return UserError(unknown_name(self.kind, name, self.names()))

    def get(self, name: str) -> Any:
        """Import (if needed) and return the plugin class registered as ``name``."""
        if name in self._classes:
            return self._classes[name]
        entry = self.index().get(name)
        if entry is None:
            raise self.unknown(name)
        importlib.import_module(entry.module)
        if name not in self._classes and entry.source.startswith("entry-point"):
            for ep in metadata.entry_points(group=self.group):
                if ep.name == name:
                    loaded = ep.load()
                    if isinstance(loaded, type) and name not in self._classes:
                        self.register(name)(loaded)
        if name not in self._classes:
            raise UserError(f"{self.kind} '{name}' was expected in {entry.module}, but importing it registered no such {self.kind}")
        return self._classes[name]


def did_you_mean(name: str, names: Iterable[str]) -> str:
    """``"did you mean 'full'?"`` for the name of ``names`` closest to ``name``; ``""`` when none is close."""
    close = difflib.get_close_matches(name, list(names), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else ""


def with_hint(hint: str, rest: str) -> str:
    """``rest`` after a did-you-mean ``hint`` as its own sentence (capitalised), or alone without one."""
    return f"{hint} {rest[:1].upper()}{rest[1:]}" if hint else rest


def unknown_name(what: str, name: str, names: Iterable[str]) -> str:
    """The one line for a name that is not among ``names``: ``unknown method 'ful'; did you mean
    'full'? Available: ...`` (``what`` says what kind of name it is)."""
    names = list(names)
    hint = did_you_mean(name, names)
    available = ", ".join(names) or "(none)"
    return f"unknown {what} '{name}'; " + with_hint(hint, f"available: {available}")


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


method_registry = Registry("method", "mtpeft_bench.methods", "mtpeft_bench.methods", "register_method")
dataset_registry = Registry("dataset", "mtpeft_bench.tasks", "mtpeft_bench.datasets", "register_dataset")


def register_method(name: str, *, description: str | None = None) -> Callable[[type], type]:
    """Register a method plugin class under ``name`` (see ``methods/base.py`` for the interface)."""
    return method_registry.register(name, description=description)


def register_dataset(name: str, *, description: str | None = None) -> Callable[[type], type]:
    """Register a dataset plugin class under ``name`` (see ``tasks/base.py`` for the interface)."""
    return dataset_registry.register(name, description=description)


def get_method(name: str) -> Any:
    return method_registry.get(name)


def get_dataset(name: str) -> Any:
    return dataset_registry.get(name)
