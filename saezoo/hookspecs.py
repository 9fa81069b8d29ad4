"""Every hook a saezoo plugin can implement.

Each hook receives a ``register(name, obj)`` callable; the core owns the storage, so a
plugin never touches a global table. Parameter names are public API: pluggy rejects an
implementation whose parameter is misnamed. ``plugins/README.md`` documents each hook
with an example, and ``tests/test_docs.py`` fails when one is missing there.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("saezoo")
hookimpl = pluggy.HookimplMarker("saezoo")


@hookspec
def register_architectures(register):
    """Register SAE architectures: ``register("flat", FlatSAE)``.

    The class subclasses :class:`saezoo.SAE` and carries a ``Config`` dataclass whose
    field docstrings become the help of ``--set`` keys.
    """


@hookspec
def register_curricula(register):
    """Register curriculum strategies: ``register("tier-unlock", TierUnlock)``.

    The class subclasses :class:`saezoo.Curriculum`; it maps a training step to knobs.
    """


@hookspec
def register_models(register):
    """Register named language models: ``register("smollm2-135m", load_fn)``.

    ``load_fn()`` returns ``(model, tokenizer)``. Names not registered fall through to
    ``transformers`` loading by hub id or local path.
    """


@hookspec
def register_datasets(register):
    """Register named text corpora: ``register("python-docs", texts_fn)``.

    ``texts_fn()`` returns an iterable of strings. Names not registered fall through to
    ``datasets`` loading by hub id or local files.
    """


@hookspec
def register_metrics(register):
    """Register extra evaluation metrics: ``register("my_metric", metric_fn)``.

    ``metric_fn(batch)`` receives an :class:`saezoo.evaluation.EvalBatch` for every
    evaluation batch and returns a dict of floats, averaged over batches (weighted by
    token count) in the report.
    """
