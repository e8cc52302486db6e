"""Name → builder registries, so a config can name a model, a loss or an augmentation preset."""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

from masksmith.errors import ConfigError

T = TypeVar("T", bound=Callable)


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
            raise ConfigError(f"unknown {self.kind} {name!r}; valid names: {valid}") from None

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items
