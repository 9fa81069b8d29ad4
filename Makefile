# The two commands of the README. Each does its own set-up first (idempotent, fast when done).
.PHONY: setup train test

setup:
	bash scripts/setup.sh

# The main job: the hierarchical SAE on the embedded default model and corpus, offline.
train: setup
	saezoo train hsae

test: setup
	python3 -m pytest
