# The two commands a fresh machine needs (see README):
#   make demo   install, then validate the example spec, plan every stack and render one
#   make test   install (with validators), then lint and run the whole test suite
SHELL := /bin/bash
BP := .venv/bin/blueprints

.PHONY: setup demo test validators lint bench

setup:
	@scripts/bootstrap

demo: setup
	$(BP) validate examples/app.yaml
	$(BP) plan --all
	$(BP) render single-vm-hcloud -o rendered/single-vm-hcloud

validators:
	@scripts/install-validators

lint: setup
	.venv/bin/ruff check .

test: setup validators lint
	.venv/bin/python -m pytest -q

bench: setup
	.venv/bin/python scripts/benchmark.py
