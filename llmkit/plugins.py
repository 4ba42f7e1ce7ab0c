"""Plugin discovery: one ``PluginManager("llmkit")``, entry points of group ``llmkit`` loaded once.

Plugins register light :class:`BackendSpec` descriptors; the engine class behind one is imported on
first use (``llmkit.load``), so listing backends, ``--help`` and the docs never import torch.

Controls, as pytest has them:
- ``LLMKIT_DISABLE_PLUGIN_AUTOLOAD=1``: load no entry points (only plugins named in LLMKIT_PLUGINS).
- ``LLMKIT_PLUGINS=mod_a,mod_b``: import and register these modules as plugins too.
- ``LLMKIT_BLOCK_PLUGINS=name,...``: skip these entry-point names.
"""

from __future__ import annotations

import importlib
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Literal

import pluggy

from llmkit import hookspecs
from llmkit.errors import BackendNotFoundError, BackendUnavailableError, LLMKitError

ENTRY_POINT_GROUP = "llmkit"


@dataclass(frozen=True)
class BackendSpec:
    """What a plugin registers: a name and where its implementation lives."""

    name: str
    target: str  # "module:Class", imported on first use
    kind: Literal["engine", "tuner"] = "engine"
    requires: tuple[str, ...] = ()  # modules the backend needs at run time, checked by `availability`
    install_hint: str | None = None
    description: str = ""
    plugin: str = field(default="", compare=False)  # filled in by the registry

    def load_class(self) -> type:
        module_name, _, attr = self.target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise BackendUnavailableError(self.name, f"{type(exc).__name__}: {exc}", self.install_hint) from exc
        return getattr(module, attr)

    def availability(self) -> tuple[bool, str]:
        """Whether the backend's libraries import here, and the reason when they do not."""
        for module in self.requires:
            try:
                importlib.import_module(module)
            except Exception as exc:  # noqa: BLE001 - any import failure is a reason to report
                return False, f"import {module}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        return True, "ok"


_pm: pluggy.PluginManager | None = None
_lock = threading.Lock()


def _csv(env: str) -> list[str]:
    return [item.strip() for item in os.environ.get(env, "").split(",") if item.strip()]


def get_plugin_manager() -> pluggy.PluginManager:
    """The one plugin manager, with entry points loaded (once)."""
    global _pm
    with _lock:
        if _pm is None:
            pm = pluggy.PluginManager("llmkit")
            pm.add_hookspecs(hookspecs)
            for name in _csv("LLMKIT_BLOCK_PLUGINS"):
                pm.set_blocked(name)
            if not os.environ.get("LLMKIT_DISABLE_PLUGIN_AUTOLOAD"):
                pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
            for module_name in _csv("LLMKIT_PLUGINS"):
                if pm.get_plugin(module_name) is None:
                    pm.register(importlib.import_module(module_name), name=module_name)
            pm.check_pending()
            _pm = pm
        return _pm


def _collect(kind: str) -> dict[str, BackendSpec]:
    pm = get_plugin_manager()
    specs: dict[str, BackendSpec] = {}
    hook = pm.hook.register_engines if kind == "engine" else pm.hook.register_tuners
    for impl in reversed(hook.get_hookimpls()):  # registration order; a later plugin may not shadow silently
        plugin_name = pm.get_name(impl.plugin) or "?"

        def register(spec: BackendSpec, _plugin: str = plugin_name) -> None:
            if not isinstance(spec, BackendSpec):
                raise LLMKitError(f"plugin {_plugin!r} registered {spec!r}, not a BackendSpec")
            if spec.name in specs:
                raise LLMKitError(
                    f"backend {spec.name!r} is registered twice: by {specs[spec.name].plugin!r} and {_plugin!r}"
                )
            specs[spec.name] = BackendSpec(**{**spec.__dict__, "kind": kind, "plugin": _plugin})

        impl.function(**{arg: register for arg in impl.argnames})
    return specs


def engines() -> dict[str, BackendSpec]:
    """Every registered engine backend, by name. Imports no engine library."""
    return _collect("engine")


def tuners() -> dict[str, BackendSpec]:
    return _collect("tuner")


def get_backend(name: str, kind: str = "engine") -> BackendSpec:
    specs = _collect(kind)
    if name not in specs:
        raise BackendNotFoundError(name, list(specs))
    return specs[name]


def plugin_info() -> list[dict[str, Any]]:
    """Name, distribution, version and hooks of each loaded plugin (for ``llmkit plugins``)."""
    pm = get_plugin_manager()
    dists = {id(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
    info = []
    for plugin in pm.get_plugins():
        dist = dists.get(id(plugin))
        info.append(
            {
                "name": pm.get_name(plugin),
                "distribution": dist.metadata["name"] if dist else None,
                "version": dist.version if dist else None,
                "hooks": sorted(h.name for h in pm.get_hookcallers(plugin) or []),
            }
        )
    return info


def reset_plugin_manager() -> None:
    """Forget loaded plugins; the next call loads entry points again (for tests)."""
    global _pm
    with _lock:
        _pm = None
