"""``python -m saezoo_demo``: convert the fetched assets (run by ``scripts/fetch_assets.sh``)."""

from saezoo_demo.assets import main

main()
