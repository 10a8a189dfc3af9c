# The two commands a fresh machine needs (see README):
#   make demo   install, then validate the example spec, plan every stack and render one
#   make test   install (with validators and the real-node tools), then lint and run the whole
#               test suite, real nodes included
SHELL := /bin/bash
BP := .venv/bin/blueprints
# The README's `blueprints ...` commands run as printed with .venv/bin on PATH.
PATH_HINT = case ":$$PATH:" in *":$(CURDIR)/.venv/bin:"*) ;; *) echo "blueprints is installed \
in .venv: run 'source .venv/bin/activate' to put it on PATH for the README's commands (or call \
.venv/bin/blueprints)";; esac

.PHONY: setup demo test validators realnode-tools lint bench boot-check drill

setup:
	@scripts/bootstrap
	@$(PATH_HINT)

demo:
	@scripts/bootstrap
	$(BP) validate examples/app.yaml
	$(BP) plan --all
	$(BP) render single-vm-hcloud -o rendered/single-vm-hcloud
	@$(PATH_HINT)

validators:
	@scripts/install-validators

realnode-tools:
	@scripts/install-realnode

lint: setup
	.venv/bin/ruff check .

# The real-node tests run beside the others, which run on one pytest-xdist worker per core
# (scripts/run-tests). The real failover drill runs twice here (one failover each way); `make
# drill` runs it 5 times.
test: setup validators realnode-tools lint
	BLUEPRINTS_FAILOVER_DRILLS=$${BLUEPRINTS_FAILOVER_DRILLS:-2} scripts/run-tests

# The single-VM failover drill on real nodes, 5 times (about 4 minutes; root).
drill: setup realnode-tools
	BLUEPRINTS_FAILOVER_DRILLS=$${BLUEPRINTS_FAILOVER_DRILLS:-5} .venv/bin/python -m pytest -q -s tests/test_realnode_failover.py

bench: setup
	.venv/bin/python scripts/benchmark.py

# Slow (about 5 minutes, first run; root): boot one single-VM node's real user data in a QEMU VM.
boot-check: setup
	.venv/bin/python scripts/boot-check
