"""Name -> object registries: tasks, model aliases, cost terms, architecture families, importance criteria.

Every lookup of a name the user typed goes through one, so every unknown name gets the same one-line
:class:`~econlm.errors.UserError`: the valid names and the closest one ("Did you mean 'stsb'?").
"""

from __future__ import annotations

from collections.abc import ItemsView, Iterator, Mapping, ValuesView
from typing import Generic, TypeVar

from econlm.errors import UserError, unknown_name

T = TypeVar("T")


class Registry(Generic[T]):
    """A read-only, ordered name -> object mapping whose unknown names raise a :class:`UserError`.

    Reads like a dict: ``REGISTRY[name]``, ``name in REGISTRY``, iteration over the names in registration
    order, ``len``, ``items()`` and ``values()``.

    Example::

        COLOURS = Registry("colour", {"red": 1, "green": 2})
        COLOURS["gren"]  # UserError: unknown colour 'gren'; valid: green, red. Did you mean 'green'?
    """

    def __init__(self, kind: str, items: Mapping[str, T]):
        self.kind = kind
        self._items = dict(items)

    def __getitem__(self, name: str) -> T:
        if name not in self._items:
            raise self.unknown(name)
        return self._items[name]

    def unknown(self, name: str, note: str = "") -> UserError:
        """The error for a name that is not registered (``note`` is appended to the message)."""
        return unknown_name(self.kind, name, self._items, note)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def items(self) -> ItemsView[str, T]:
        return self._items.items()

    def values(self) -> ValuesView[T]:
        return self._items.values()

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._items)})"
