"""Correspondence between our state-dict keys and the upstream DCLS-Audio ones.

Each backbone family builds an :class:`UpstreamLayout` from a model instance: a map from
each of our state-dict keys to its upstream key, plus the keys whose upstream tensor is a
``nn.Linear`` weight ``(out, in)`` where ours is a 1x1 convolution ``(out, in, 1, 1)``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

import torch

__all__ = ["Rule", "UpstreamLayout", "build_layout", "rename_by_rules"]

Rule = tuple[str, str]


def rename_by_rules(key: str, rules: Iterable[Rule]) -> str:
    """Apply the first regex rule ``(pattern, replacement)`` that matches ``key``.

    Raises KeyError when no rule matches: the key belongs to a structure the layout
    does not know, so it cannot be saved in (or loaded from) the upstream format.
    """
    for pattern, replacement in rules:
        new, count = re.subn(pattern, replacement, key, count=1)
        if count:
            return new
    raise KeyError(f"no upstream name for state-dict key '{key}'")


@dataclass(frozen=True)
class UpstreamLayout:
    """``names``: our key -> upstream key; ``linear``: our keys stored 2-D upstream."""

    names: Mapping[str, str]
    linear: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        seen: dict[str, str] = {}
        for ours, theirs in self.names.items():
            if theirs in seen:
                raise ValueError(f"keys '{seen[theirs]}' and '{ours}' both map to upstream key '{theirs}'")
            seen[theirs] = ours

    @property
    def from_upstream_names(self) -> dict[str, str]:
        """Upstream key -> our key."""
        return {theirs: ours for ours, theirs in self.names.items()}

    def to_upstream_tensor(self, key: str, value: torch.Tensor) -> torch.Tensor:
        """Our tensor for ``key`` in the upstream shape."""
        if key in self.linear and value.ndim == 4:
            return value[:, :, 0, 0]
        return value

    def from_upstream_tensor(self, key: str, value: torch.Tensor) -> torch.Tensor:
        """An upstream tensor for our ``key`` in our shape."""
        if key in self.linear and value.ndim == 2:
            return value[:, :, None, None]
        return value


def build_layout(
    state_keys: Iterable[str],
    rename: Callable[[str], str],
    linear_pattern: str | None = None,
) -> UpstreamLayout:
    """Layout from our state-dict keys, a key renaming function and a regex for Linear keys."""
    keys = list(state_keys)
    names = {key: rename(key) for key in keys}
    linear = frozenset(k for k in keys if linear_pattern and re.search(linear_pattern, k))
    return UpstreamLayout(names=names, linear=linear)
