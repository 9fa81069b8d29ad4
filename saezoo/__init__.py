"""saezoo: a plugin-based zoo of sparse autoencoder variants.

The public API: what a plugin imports (hookimpl, SAE, ...), and the functions a notebook
calls (train, load, evaluate, compare, pull, reproduce; docs/python.md).
"""

import importlib
import sys
import types

from saezoo.curriculum import Curriculum
from saezoo.errors import SaezooError, UsageError
from saezoo.hookspecs import hookimpl
from saezoo.sae import SAE, SAEOutput
from saezoo.api import load, pull, reproduce

__version__ = "0.1.0"

__all__ = [
    "SAE",
    "Curriculum",
    "SAEOutput",
    "SaezooError",
    "UsageError",
    "__version__",
    "compare",
    "evaluate",
    "hookimpl",
    "load",
    "pull",
    "reproduce",
    "train",
]

# saezoo.train, saezoo.evaluate and saezoo.compare are modules of the core (the training
# loop, the metrics, the comparison) and the API functions of saezoo.api. Importing a
# submodule binds it on the package, over any function of that name, so each of the three is
# its module, made callable: saezoo.train(...) is saezoo.api.train(...), and saezoo.train.X
# is still the module's X.
_MODULE_AND_FUNCTION = ("train", "evaluate", "compare")


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from saezoo import api

        return getattr(api, self.__name__.rpartition(".")[2])(*args, **kwargs)


class _Package(types.ModuleType):
    def __setattr__(self, name, value):
        if name in _MODULE_AND_FUNCTION and isinstance(value, types.ModuleType):
            value.__class__ = _CallableModule
        super().__setattr__(name, value)


def __getattr__(name):
    if name in _MODULE_AND_FUNCTION:  # not imported yet: the import binds it (see _Package)
        return importlib.import_module(f"saezoo.{name}")
    raise AttributeError(f"module 'saezoo' has no attribute {name!r}")


sys.modules[__name__].__class__ = _Package
for _module in [m for name, m in list(globals().items()) if name in _MODULE_AND_FUNCTION]:
    _module.__class__ = _CallableModule  # bound by an import above, before the package's class changed
