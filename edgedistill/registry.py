"""Registries: a recipe key names a registered class (torchdistill-style).

Each extension family (pool sources, teacher formats, selection strategies, losses) keeps one Registry beside
its implementations; adding one is one class and one `@REGISTRY.register("name")`. edgedistill.extensions
reads every registry to check a recipe's names and to write the recipe's JSON Schema.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from .errors import BadInput, did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
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

    def get(self, name: str, where: str = "") -> T:
        """The entry, or a BadInput that lists the registered names and the closest one."""
        if name not in self._entries:
            prefix = f"{where}: " if where else ""
            raise BadInput(f"{prefix}{self.what}: unknown {name!r}{did_you_mean(name, self.names())}; available: {', '.join(self.names())}")
        return self._entries[name]

    def names(self) -> list[str]:
        return list(self._entries)

    def items(self) -> Iterator[tuple[str, T]]:
        return iter(self._entries.items())

    def __contains__(self, name: object) -> bool:
        return name in self._entries
