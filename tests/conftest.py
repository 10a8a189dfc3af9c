"""Shared pytest configuration."""

from __future__ import annotations

from pathlib import Path

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite the golden files under tests/golden/ from the current output instead of "
        "comparing against them",
    )


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-golden"))


@pytest.fixture(scope="module")
def s3():
    """moto's S3 on 127.0.0.1, one per test module, for tests that run the real restic."""
    import validators
    from emulators import MotoServer

    validators.require("restic")
    with MotoServer() as server:
        yield server


# --- real nodes (tests/realnode) -------------------------------------------------------------


def pytest_collection_finish(session: pytest.Session) -> None:
    """Only a session that will run node tests takes the machine's node lock (and sweeps what an
    interrupted run left), so a unit-test run beside `make test` neither waits nor blocks it."""
    import gc
    import os

    # The modules and test objects collected so far live as long as the session: the cyclic
    # collector need not walk them again and again, nor run every 700 allocations (planning
    # allocates millions). In-process tests use about a fifth less CPU time this way.
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)

    if os.geteuid() != 0:
        return
    if not any(Path(str(item.fspath)).name.startswith("test_realnode") for item in session.items):
        return
    from tests.realnode import host

    if host.STREAM:
        # One of several sessions of scripts/run-tests, which holds the lock and swept.
        return
    lock = host.lock_session()
    if lock is None:
        # Another session runs nodes on this machine: leave it alone, refuse the node tests.
        host.session_refused = (
            f"another test session holds {host.SESSION_LOCK} and runs real nodes on this "
            "machine; the names would collide, so run the node tests after it ends"
        )
        return
    session.config._realnode_lock = lock  # released when the process ends
    stale = host.sweep()
    if stale:
        print(f"\nreal-node harness: removed {len(stale)} leftovers of an interrupted run")


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    import sys

    if "tests.realnode.node" not in sys.modules:
        return
    from tests.realnode import node, rootfs
    from tests.realnode.host import leftovers

    tr = terminalreporter
    tr.section("real nodes: measured here")
    if rootfs.build_seconds is not None:
        tr.write_line(f"{'build the node root (mmdebstrap)':<66} {rootfs.build_seconds:7.1f} s")
    else:
        tr.write_line("build the node root: cached from an earlier run")
    for what, seconds in node.TIMINGS:
        tr.write_line(f"{what:<66} {seconds:7.1f} s")
    from tests.realnode.host import STREAM

    if STREAM:
        # The sessions beside this one still have their nodes up: scripts/run-tests checks
        # for leftovers once every session has ended (test_realnode_zz_leftovers.py).
        return
    left = leftovers()
    if left:
        tr.write_line("LEFT BEHIND: " + "; ".join(left), red=True)


# -- the failover tests' emulated clouds (test_failover.py, test_failover_lock.py) ----------


@pytest.fixture(scope="module")
def moto():
    """moto's EC2 server on 127.0.0.1, one per test module."""
    from emulators import MotoServer

    with MotoServer() as server:
        yield server


@pytest.fixture(params=["aws", "hcloud"])
def world(request, moto, tmp_path):
    """A single-vm stack on either emulator (tests/failover_world.py): moto behind a fault
    proxy, or the fake Hetzner API. test_failover_cli.py and test_preview_gitlab.py have a
    `world` of their own."""
    from emulators import FaultProxy
    from failover_world import aws_world, hcloud_world
    from fakes import FakeHcloud

    if request.param == "aws":
        proxy = FaultProxy(moto.url)
        try:
            yield aws_world(moto, tmp_path, proxy)
        finally:
            proxy.close()
    else:
        with FakeHcloud(action_polls=2) as fake:
            yield hcloud_world(fake, tmp_path)
