"""Lazy package exports: names imported from their submodule on first attribute access."""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_exports(
    package: str, exports: dict[str, str | None], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package`` that import ``name`` from ``.exports[name]``
    (``None``: ``name`` is itself a submodule)."""

    def __getattr__(name: str) -> Any:
        if name in exports:
            module = importlib.import_module(f".{exports[name] or name}", package)
            value = module if exports[name] is None else getattr(module, name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
