"""The embedded default, offline: the SmolLM2-135M model and two English corpora.

Registers the model ``smollm2-135m`` and the datasets ``python-docs`` and ``austen``, exactly as
a third-party plugin would. See ``README.md`` beside this file.
"""

from saezoo.hookspecs import hookimpl
from saezoo_demo.assets import load_smollm2
from saezoo_demo.corpora import austen, python_docs


@hookimpl
def register_models(register):
    register("smollm2-135m", load_smollm2)


@hookimpl
def register_datasets(register):
    register("python-docs", python_docs)
    register("austen", austen)
