"""Error types: invalid settings (every rule lives with the object it constrains), infrastructure, missing extras.

The core's typed objects (``ModelConfig``, ``TrainConfig``, ``PairSettings``, dataset options)
check themselves and raise :class:`SettingError` with every problem at once, each tied to the
name of the offending setting. The sweep's config loader reuses those checks and only puts the
key path of the YAML file in front (``models[1].width: ...``); it never re-states a rule.
"""

from __future__ import annotations

import difflib
import numbers
from collections.abc import Iterable, Sequence


class SettingError(ValueError):
    """One or more invalid settings; ``problems`` holds ``(setting, message)`` pairs.

    ``setting`` is the name of the offending field as the object calls it (``width``,
    ``epochs``, ``options.shape``); ``message`` says what was expected and what was given.
    """

    def __init__(self, problems: Iterable[tuple[str, str]], *, owner: str = "") -> None:
        self.problems: list[tuple[str, str]] = list(problems)
        self.owner = owner
        prefix = f"{owner}." if owner else ""
        super().__init__("; ".join(f"{prefix}{key}: {message}" for key, message in self.problems))


class Problems:
    """Collects problems while an object checks itself; :meth:`raise_if_any` raises them together."""

    def __init__(self, owner: str = "") -> None:
        self.owner = owner
        self.items: list[tuple[str, str]] = []

    def add(self, setting: str, message: str) -> None:
        self.items.append((setting, message))

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self) -> None:
        if self.items:
            raise SettingError(self.items, owner=self.owner)


def is_int(value: object, *, numpy: bool = False) -> bool:
    """Whether ``value`` is an integer; a bool is not (``epochs: true`` is a slip). With ``numpy``,
    numpy's integers count too (settings that never reach JSON)."""
    return isinstance(value, numbers.Integral if numpy else int) and not isinstance(value, bool)


def is_real(value: object) -> bool:
    """Whether ``value`` is a Python int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def unknown_choice(kind: str, value: object, known: Sequence[str]) -> str:
    """``unknown arch 'mpl'; did you mean 'mlp'?`` (or the known values when nothing is close)."""
    hint = difflib.get_close_matches(str(value), [str(k) for k in known], n=1)
    suggestion = f"; did you mean {hint[0]!r}?" if hint else f"; expected one of {', '.join(map(str, known))}"
    return f"unknown {kind} {value!r}{suggestion}"


class InfrastructureError(RuntimeError):
    """Storage, the Ray cluster or the network failed: not the config, not the science.

    The message names the place in one line (``storage s3://bucket/prefix unreachable: ...``,
    ``no Ray cluster at 10.0.0.1:6379``, ``Ray dashboard at http://head:8265 not reachable``);
    the CLI prints it and exits with status 3, which schedulers can tell from a failed trial (1)
    and a bad config (2).
    """


class MissingExtraError(RuntimeError):
    """An optional dependency that this command needs here is not installed; the message names the
    extra that brings it (``pip install 'repair-ray[gcs]'``). The CLI exits with status 2: like a bad
    config, it is fixed by a change of the user's (an install), never by retrying later (3)."""
