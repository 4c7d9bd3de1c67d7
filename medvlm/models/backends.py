"""The backend registry: backend name -> the module that implements it, imported only when used.

Built-in backends are listed here; other packages add theirs through the `medvlm.backends` entry
point group (name = "module:attribute" of a BackendKind). Adding a backend is one module with a
`KIND` object plus one line below (or one entry point).
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from ..errors import UsageProblem
from .base import BackendKind

BUILTIN: dict[str, str] = {
    "hf": "medvlm.models.hf:KIND",
    "endpoint": "medvlm.models.endpoint:KIND",
}
ENTRY_POINT_GROUP = "medvlm.backends"
DEFAULT_BACKEND = "hf"


def _targets() -> dict[str, str]:
    found = dict(BUILTIN)
    try:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            found.setdefault(ep.name, ep.value)
    except Exception:  # noqa: BLE001 - a broken third-party package must not break medvlm
        pass
    return found


def backend_names() -> list[str]:
    return sorted(_targets())


def settings_env(name: str) -> tuple[str, ...]:
    """The backend's settings variables (its optional `settings_env`; () where it declares none)."""
    return tuple(getattr(get_kind(name, check_available=False), "settings_env", ()))


def get_kind(name: str, *, check_available: bool = True) -> BackendKind:
    """The registered backend `name`; unknown or not installed -> UsageProblem with one line."""
    targets = _targets()
    if name not in targets:
        raise UsageProblem(f"unknown backend {name!r}; available: {', '.join(sorted(targets))}")
    module_name, _, attr = targets[name].partition(":")
    try:
        kind = getattr(importlib.import_module(module_name), attr or "KIND")
    except ImportError as exc:
        raise UsageProblem(f"backend {name!r} cannot be imported ({exc.name or exc} is missing)") from None
    if check_available:
        problem = kind.is_available()
        if problem:
            raise UsageProblem(problem)
    return kind
