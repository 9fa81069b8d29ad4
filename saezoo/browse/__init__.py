"""``saezoo browse``: a static feature browser (top contexts, quantile samples, density and
histogram, output tokens, neighbours, the latent index, the tree, two SAEs side by side).

:mod:`~saezoo.browse.load` reads what can be browsed, :mod:`~saezoo.browse.stats` gathers the
per-latent statistics in one streaming pass, :mod:`~saezoo.browse.features` reads the
weights, and :mod:`~saezoo.browse.site` runs the pass and writes the site; the page itself is
``static/`` (plain HTML, CSS and JavaScript).
"""
