"""Name → builder registries, so a config can name a model, a loss or an augmentation preset."""

from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterable, TypeVar

from masksmith.errors import ConfigError

T = TypeVar("T", bound=Callable)


def did_you_mean(name: str, valid: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest valid name, or '' when none is close (a typo's likely fix)."""
    close = difflib.get_close_matches(str(name), list(valid), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class Registry(Generic[T]):
    """A mapping from names to builders; an unknown name fails with the list of valid ones."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: `@MODELS.register("unet")`."""

        def add(builder: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = builder
            return builder

        return add

    def get(self, name: str) -> T:
        """Return the builder registered under `name`, or raise ConfigError listing the valid names."""
        try:
            return self._items[name]
        except KeyError:
            valid = ", ".join(sorted(self._items))
            raise ConfigError(f"unknown {self.kind} {name!r}; valid names: {valid}"
                              f"{did_you_mean(name, self._items)}") from None

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items
