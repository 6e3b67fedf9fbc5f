"""Registries: a recipe key names a registered entry (torchdistill-style), and plugins add entries.

Every extension point (runtimes, pool sources, teacher formats, selection strategies, losses) keeps one Registry
beside its implementations; adding one is one class (or runtime row) and one `REGISTRY.register("name")`.
edgedistill.extensions reads every registry to check a recipe's names and to write the recipe's JSON Schema.

Plugins: a Python package adds entries without an edit to edgedistill by declaring entry points in the group
`edgedistill.plugins` (PLUGIN_GROUP). Each entry point names a module, whose import registers its entries, or a
callable, called once with no arguments, that registers them. They are loaded once, on the first read of any
registry (so edgedistill's own entries always come first); EDGEDISTILL_NO_PLUGINS=1 skips them.
"""

from __future__ import annotations

import importlib.metadata
import os
import warnings
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Generic, TypeVar

from .errors import BadInput, did_you_mean

T = TypeVar("T")
PLUGIN_GROUP = "edgedistill.plugins"
PLUGINS: dict[str, str] = {}  # entry point name -> what it loaded ("package.module" or "package.module:function")
PLUGIN_ERRORS: dict[str, str] = {}  # entry point name -> why it did not load (doctor shows them)
_plugins_state = {"loaded": False}


def load_plugins() -> list[str]:
    """Loads every `edgedistill.plugins` entry point once; returns their names. A plugin that fails to load is a
    warning and a line in PLUGIN_ERRORS, never a failure of edgedistill itself (doctor is what people run then)."""
    if _plugins_state["loaded"] or os.environ.get("EDGEDISTILL_NO_PLUGINS"):
        return []
    _plugins_state["loaded"] = True  # before loading: a plugin that reads a registry must not load them again
    names = []
    for entry in importlib.metadata.entry_points(group=PLUGIN_GROUP):
        try:
            loaded = entry.load()
            if callable(loaded) and not isinstance(loaded, ModuleType):
                loaded()
        except Exception as exc:  # a plugin can fail in any way; it is reported, and the rest still load
            dist = getattr(entry, "dist", None)
            where = f"{entry.name} = {entry.value}" + (f" (from {dist.name})" if dist is not None else "")
            PLUGIN_ERRORS[entry.name] = f"{type(exc).__name__}: {exc}"
            warnings.warn(f"edgedistill plugin {where} did not load: {type(exc).__name__}: {exc}", stacklevel=2)
            continue
        PLUGINS[entry.name] = entry.value
        names.append(entry.name)
    return names


class Registry(Generic[T]):
    """Named entries of one extension point. Reading it (get, names, items, `in`, iteration, `[name]`) loads the
    plugins first; registering does not, so edgedistill's own modules register at import."""

    def __init__(self, what: str):
        self.what = what  # how a message names the recipe field, e.g. "select.strategy"
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.what} {name!r} is registered twice")
            self._entries[name] = entry
            return entry

        return add

    def unregister(self, name: str) -> T:
        """Removes an entry (tests that register one for a while)."""
        return self._entries.pop(name)

    def get(self, name: str, where: str = "") -> T:
        """The entry, or a BadInput that lists the registered names and the closest one."""
        if name not in self:
            prefix = f"{where}: " if where else ""
            raise BadInput(f"{prefix}{self.what}: unknown {name!r}{did_you_mean(name, self.names())}; available: {', '.join(self.names())}")
        return self._entries[name]

    def names(self) -> list[str]:
        load_plugins()
        return list(self._entries)

    def items(self) -> Iterator[tuple[str, T]]:
        load_plugins()
        return iter(list(self._entries.items()))

    def values(self) -> Iterator[T]:
        load_plugins()
        return iter(list(self._entries.values()))

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __contains__(self, name: object) -> bool:
        load_plugins()
        return name in self._entries
