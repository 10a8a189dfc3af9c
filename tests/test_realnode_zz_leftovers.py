"""Runs after the other real-node modules (pytest collects files in order, and their node
fixtures are module-scoped; scripts/run-tests runs this module once the sessions that run the
others side by side have ended): nothing they started or created may still be there. Then the
sweep, which takes down everything of the harness on this machine, so it runs alone."""

from __future__ import annotations

import subprocess
import sys

from tests.realnode.host import PREFIX, WORK_ROOT, leftovers, require_host, run, stop_pid


def test_nothing_left_behind():
    require_host()
    assert leftovers() == []


def test_sweep_removes_what_an_interrupted_run_left():
    # sweep() takes down everything of the harness, so no node may be up: the suites' nodes are
    # module fixtures, gone when this module runs.
    from tests.realnode.host import sweep

    require_host()
    scratch = WORK_ROOT / "fixtures" / "interrupted"
    (scratch / "mnt").mkdir(parents=True)
    image = scratch / "disk.img"
    image.write_bytes(b"\0" * 1024 * 1024)
    run(["ip", "netns", "add", f"{PREFIX}-interrupted-lan"])
    loop = run(["losetup", "--find", "--show", str(image)]).stdout.strip()
    run(["mount", "-t", "tmpfs", "tmpfs", str(scratch / "mnt")])
    # A process whose command line names the scratch space, as a node's nspawn would.
    sleeper = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)", str(scratch)],
        start_new_session=True,
    )
    try:
        found = leftovers()
        assert f"network namespace {PREFIX}-interrupted-lan" in found
        assert f"mount {scratch / 'mnt'}" in found
        assert any(item.startswith(f"loop device {loop} ") for item in found)
        assert any(item.startswith(f"process {sleeper.pid}:") for item in found)
        assert sorted(sweep()) == sorted(found)
        sleeper.wait(timeout=10)
        assert leftovers() == []
        assert not scratch.exists()
    finally:
        stop_pid(sleeper.pid)
        sweep()
