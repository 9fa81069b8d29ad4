"""The plugin manager: built-in plugins, entry points, one-off plugin files.

Built-in features are plugins themselves (``DEFAULT_PLUGINS``), so each doubles as a
template for a third-party package. Third-party packages declare an entry point in the
group ``saezoo``; single ``.py`` files can be loaded with ``--plugins-dir DIR``.

Environment:
  SAEZOO_DISABLE_PLUGIN_AUTOLOAD=1   do not load entry points (tests use this)
  SAEZOO_BLOCK_PLUGINS=a,b           never load the plugins named a and b
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import importlib.util
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pluggy

from saezoo import hookspecs
from saezoo.errors import UsageError, did_you_mean, unknown_name

DEFAULT_PLUGINS: tuple[str, ...] = (
    "saezoo_flat",
    "saezoo_hsae",
    "saezoo_curricula",
    "saezoo_demo",
    "saezoo_topk",
    "saezoo_jumprelu",
    "saezoo_gated",
    "saezoo_matryoshka",
)

# The registries the core keeps, one per register_<kind> hook.
KINDS: tuple[str, ...] = ("architectures", "curricula", "models", "datasets", "metrics")

_SINGULAR = {
    "architectures": "architecture",
    "curricula": "curriculum",
    "models": "model",
    "datasets": "dataset",
    "metrics": "metric",
}


@dataclass
class Entry:
    name: str
    obj: Any
    plugin: str


@dataclass
class Registry:
    """Named objects of one kind, each remembering the plugin that registered it."""

    kind: str
    entries: dict[str, Entry] = field(default_factory=dict)

    def add(self, name: str, obj: Any, plugin: str) -> None:
        if not isinstance(name, str) or not name:
            raise UsageError(f"plugin {plugin!r} registered a {_SINGULAR[self.kind]} with an invalid name {name!r}")
        if name in self.entries:
            other = self.entries[name].plugin
            raise UsageError(
                f"{_SINGULAR[self.kind]} {name!r} is registered by two plugins: {other!r} and {plugin!r}; "
                f"block one with SAEZOO_BLOCK_PLUGINS={plugin}"
            )
        if self.kind in ("architectures", "curricula"):
            _check_config(_SINGULAR[self.kind], name, obj, plugin)
        self.entries[name] = Entry(name, obj, plugin)

    def get(self, name: str) -> Any:
        try:
            return self.entries[name].obj
        except KeyError:
            raise unknown_name(_SINGULAR[self.kind], name, self.entries) from None

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def names(self) -> list[str]:
        return sorted(self.entries)


def _check_config(kind: str, name: str, obj: Any, plugin: str) -> None:
    """A registered class's ``Config`` is a dataclass whose every field has a default: the
    defaults are the run's settings unless the user overrides them."""
    cfg = getattr(obj, "Config", None)
    where = f"plugin {plugin!r}: {kind} {name!r}"
    if not dataclasses.is_dataclass(cfg):
        raise UsageError(
            f"{where} has no Config dataclass (its settings); fix or block it with SAEZOO_BLOCK_PLUGINS={plugin}"
        )
    for f in dataclasses.fields(cfg):
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise UsageError(
                f"{where}: setting {f.name!r} of {cfg.__name__} has no default (every setting needs one); "
                f"fix or block it with SAEZOO_BLOCK_PLUGINS={plugin}"
            )


def _check_hook_names(pm: pluggy.PluginManager) -> None:
    """A hook implementation whose name is no saezoo hook (a misspelling would otherwise be
    ignored): what pluggy's ``check_pending`` finds, as one line naming plugin and hook."""
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        hooks = [n for n in dir(hookspecs) if n.startswith("register_")]
        for hook_name, caller in vars(pm.hook).items():
            for impl in [] if caller.has_spec() else caller.get_hookimpls():
                raise UsageError(
                    f"plugin {impl.plugin_name!r} implements {hook_name!r}, which is not a saezoo hook"
                    f"{did_you_mean(hook_name, hooks)} "
                    f"(hooks: {', '.join(hooks)}); fix or block it with SAEZOO_BLOCK_PLUGINS={impl.plugin_name}"
                ) from exc
        raise UsageError(f"a plugin is invalid: {exc}") from exc


class Plugins:
    """A loaded set of plugins and the registries their hooks filled."""

    def __init__(self, pm: pluggy.PluginManager):
        self.pm = pm
        _check_hook_names(pm)
        self.registries: dict[str, Registry] = {kind: Registry(kind) for kind in KINDS}
        for kind in KINDS:
            self._collect(kind)

    def _collect(self, kind: str) -> None:
        registry = self.registries[kind]
        hook = getattr(self.pm.hook, f"register_{kind}")
        # Implementations are called one at a time (not through hook()) so that every
        # registered name is attributed to its plugin, for duplicate-name errors.
        for impl in reversed(hook.get_hookimpls()):
            plugin = impl.plugin_name

            def register(name: str, obj: Any, _plugin: str = plugin) -> None:
                registry.add(name, obj, _plugin)

            try:
                impl.function(register=register)
            except UsageError:
                raise
            except Exception as exc:  # a third-party bug must not look like ours
                raise UsageError(
                    f"plugin {plugin!r} failed in register_{kind}: {type(exc).__name__}: {exc}; "
                    f"fix or block it with SAEZOO_BLOCK_PLUGINS={plugin}"
                ) from exc

    def __getattr__(self, kind: str) -> Registry:
        registries = self.__dict__.get("registries", {})
        if kind in registries:
            return registries[kind]
        raise AttributeError(kind)

    def describe(self) -> list[dict[str, Any]]:
        """One row per plugin: name, where it comes from, hooks, registered names."""
        rows = []
        for name, plugin in self.pm.list_name_plugin():
            if plugin is None:
                continue
            hooks = sorted(h.name for h in self.pm.get_hookcallers(plugin) or [])
            registered = {
                kind: sorted(e.name for e in reg.entries.values() if e.plugin == name)
                for kind, reg in self.registries.items()
            }
            rows.append(
                {
                    "name": name,
                    "source": _source_of(name, plugin),
                    "hooks": hooks,
                    "registers": {k: v for k, v in registered.items() if v},
                }
            )
        return rows


def _source_of(name: str, plugin: Any) -> str:
    for dist, _ in _entry_point_plugins:
        if dist == name:
            return "entry point"
    if name in DEFAULT_PLUGINS:
        return "built-in"
    path = getattr(plugin, "__file__", None)
    return f"file {path}" if path else "registered in code"


_entry_point_plugins: list[tuple[str, str]] = []


def blocked_names() -> set[str]:
    return {n.strip() for n in os.environ.get("SAEZOO_BLOCK_PLUGINS", "").split(",") if n.strip()}


def make_plugin_manager(plugins_dir: str | Path | None = None) -> pluggy.PluginManager:
    """A fresh plugin manager with built-ins, entry points and the files in ``plugins_dir``."""
    pm = pluggy.PluginManager("saezoo")
    pm.add_hookspecs(hookspecs)
    for name in blocked_names():
        pm.set_blocked(name)
    for module_name in DEFAULT_PLUGINS:
        if pm.is_blocked(module_name):
            continue
        _register(pm, importlib.import_module(module_name), module_name)
    if not os.environ.get("SAEZOO_DISABLE_PLUGIN_AUTOLOAD"):
        _entry_point_plugins.clear()
        for ep in importlib.metadata.entry_points(group="saezoo"):
            if pm.is_blocked(ep.name):
                continue
            try:
                module = ep.load()
            except Exception as exc:
                raise UsageError(
                    f"plugin {ep.name!r} (entry point {ep.value}) failed to import: {type(exc).__name__}: {exc}; "
                    f"block it with SAEZOO_BLOCK_PLUGINS={ep.name}"
                ) from exc
            _entry_point_plugins.append((ep.name, ep.value))
            _register(pm, module, ep.name)
    if plugins_dir is not None:
        for path in _plugin_files(Path(plugins_dir)):
            if pm.is_blocked(path.stem):
                continue
            _register(pm, _import_file(path), path.stem)
    return pm


def _register(pm: pluggy.PluginManager, plugin: Any, name: str | None) -> None:
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:
        raise UsageError(f"plugin {name!r} is invalid: {exc}") from exc
    except ValueError as exc:  # pluggy: the same name twice
        raise UsageError(f"plugin name {name!r} is used twice: {exc}") from exc


def _plugin_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise UsageError(f"--plugins-dir {directory}: not a directory")
    return sorted(p for p in directory.glob("*.py") if not p.name.startswith("_"))


def _import_file(path: Path) -> Any:
    module_name = f"saezoo_file_plugin_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise UsageError(f"plugin file {path} failed to import: {type(exc).__name__}: {exc}") from exc
    return module


_current: Plugins | None = None
_plugins_dir: Path | None = None
# Plugins added in code (tests, notebooks): kept across rebuilds of the registries.
_extra: list[tuple[Any, str | None]] = []


def set_plugins_dir(path: str | Path | None) -> None:
    """Where ``--plugins-dir`` points; takes effect on the next :func:`get_plugins`."""
    global _plugins_dir, _current
    new = Path(path) if path else None
    if new != _plugins_dir:
        _plugins_dir, _current = new, None


def get_plugins() -> Plugins:
    """The process-wide plugins, loaded on first use."""
    global _current
    if _current is None:
        pm = make_plugin_manager(_plugins_dir)
        for plugin, name in _extra:
            _register(pm, plugin, name)
        _current = Plugins(pm)
    return _current


def register_plugin(plugin: Any, name: str | None = None) -> None:
    """Add a plugin object in code; the registries are rebuilt (and checked) at once."""
    global _current
    _extra.append((plugin, name))
    _current = None
    try:
        get_plugins()
    except Exception:
        _extra.pop()
        _current = None
        raise


def unregister_plugin(plugin: Any) -> None:
    global _current
    _extra[:] = [(p, n) for p, n in _extra if p is not plugin]
    _current = None
