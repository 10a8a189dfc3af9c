"""What the real-node harness needs from this machine, and how it names and finds what it made.

Everything the harness creates carries the prefix PREFIX: network namespaces (`bpt-...`),
machine names, loop devices' backing files and mounts (under WORK_ROOT). `leftovers()` looks
for any of them, so a test (and the session's end) can prove that nothing was left behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

PREFIX = "bpt"
# Scratch space for nodes, disks and fixtures; removed piece by piece by whoever made it.
WORK_ROOT = Path(os.environ.get("BLUEPRINTS_REALNODE_WORK", "/var/tmp/blueprints-realnode"))
# The cached Debian root (and nothing else) lives here between runs.
CACHE_ROOT = Path(os.environ.get("BLUEPRINTS_REALNODE_CACHE", "/var/cache/blueprints-realnode"))

# Set in the environment of every node's init (systemd-nspawn --setenv), so leftovers() finds a
# node even when the nspawn process that started it is gone.
NODE_MARKER = "BPT_NODE"
# Held (flock) for a whole pytest session that uses the harness; a second session on the same
# machine would collide on every name, so it is refused instead of sweeping the first one away.
SESSION_LOCK = WORK_ROOT.parent / "blueprints-realnode.lock"
# scripts/run-tests runs the real-node modules in several sessions side by side: it holds
# SESSION_LOCK and sweeps once itself, and gives each session a stream letter, which every
# network, disk and image directory name starts with (see scoped), so that the sessions'
# names never meet. Unset: a session of its own, which locks and sweeps (tests/conftest.py).
STREAM_ENV = "BLUEPRINTS_REALNODE_STREAM"
STREAM = os.environ.get(STREAM_ENV, "")
if STREAM and not (STREAM.isascii() and STREAM.isalpha() and STREAM.islower() and len(STREAM) <= 2):
    raise RuntimeError(f"{STREAM_ENV}={STREAM!r}: must be one or two lowercase letters")


def scoped(name: str) -> str:
    """A harness name made unique to this session's stream (the name itself without one)."""
    return f"{STREAM}{name}" if STREAM else name


INSTALL_HINT = "run scripts/install-realnode (make test does)"
TOOLS = ("systemd-nspawn", "mmdebstrap", "ip", "losetup", "nsenter", "mount", "curl", "sshd")


class HarnessError(RuntimeError):
    """Something the harness could not do; the message says what and what to check."""


# Set by the test session (tests/conftest.py) once it holds the harness lock, or why it does not.
session_refused: str | None = None


def require_host() -> None:
    """Root, the tools the harness drives and the harness lock, or one sentence on what is wrong."""
    if os.geteuid() != 0:
        raise HarnessError("real-node tests need root (network namespaces, loop devices, mounts)")
    if session_refused is not None:
        raise HarnessError(session_refused)
    missing = [tool for tool in TOOLS if shutil.which(tool) is None and not _sbin(tool)]
    if missing:
        raise HarnessError(f"missing {', '.join(missing)}; {INSTALL_HINT}")


def _sbin(tool: str) -> bool:
    return any(Path(d, tool).exists() for d in ("/usr/sbin", "/sbin"))


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float = 120,
    input: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a host command; a failure raises HarnessError with its output."""
    proc = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
        env=None if env is None else {**os.environ, **env},
        check=False,
    )
    if check and proc.returncode != 0:
        raise HarnessError(
            f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}".rstrip()
        )
    return proc


def wait_for(what: str, predicate, timeout: float, interval: float = 0.5):
    """Poll predicate() until it returns something truthy; raise after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise HarnessError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def stop_pid(pid: int, *, signal_first: int = 15, grace: float = 20) -> None:
    """Send signal_first to pid, wait up to grace seconds, then SIGKILL; reap if it is ours."""
    try:
        os.kill(pid, signal_first)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not _alive(pid):
            return
        time.sleep(0.1)
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        return
    wait_for(f"pid {pid} to exit after SIGKILL", lambda: not _alive(pid), 10, 0.1)


def _alive(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def leftovers() -> list[str]:
    """Every network namespace, mount, loop device and process the harness may have left."""
    found: list[str] = []
    netns = Path("/run/netns")
    if netns.is_dir():
        found += [
            f"network namespace {p.name}"
            for p in netns.iterdir()
            if p.name.startswith(PREFIX + "-")
        ]
    work = str(WORK_ROOT)
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4]
        if point == work or point.startswith(work + "/"):
            found.append(f"mount {point}")
    loops = run(["losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE"], check=False)
    for line in loops.stdout.splitlines():
        if work in line:
            found.append(f"loop device {line.split()[0]} ({line.split(None, 1)[1]})")
    netns_files = Path("/etc/netns")
    if netns_files.is_dir():
        found += [
            f"directory {p}" for p in netns_files.iterdir() if p.name.startswith(PREFIX + "-")
        ]
    mine = {os.getpid(), os.getppid()}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) in mine:
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        cmdline = b" ".join(args).decode(errors="replace").strip()
        ours = any(
            a.decode(errors="replace").startswith(work + "/")
            or a.decode(errors="replace").startswith(f"--machine={PREFIX}-")
            for a in args
        )
        if ours or any(e.startswith(f"{NODE_MARKER}={PREFIX}-".encode()) for e in environ):
            found.append(f"process {proc.name}: {cmdline[:160]}")
    return found


def lock_session():
    """Take the machine-wide harness lock for this process; None if another session holds it.

    Keep the returned file open for as long as nodes may run (the lock goes with it).
    """
    SESSION_LOCK.parent.mkdir(parents=True, exist_ok=True)
    handle = open(SESSION_LOCK, "w")  # noqa: SIM115 - held open for the session
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def sweep() -> list[str]:
    """Remove what an earlier, interrupted run left (see leftovers); returns what it found.

    Call it only while holding lock_session() and before this session made anything: it takes
    down every node, namespace and fixture of the harness on this machine.
    """
    found = leftovers()
    for item in found:
        if item.startswith("process "):
            pid = int(item.split()[1].rstrip(":"))
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
    work = str(WORK_ROOT)
    points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    for point in sorted(
        (p for p in points if p == work or p.startswith(work + "/")), key=len, reverse=True
    ):
        run(["umount", "--lazy", point], check=False)
    for item in found:
        if item.startswith("loop device "):
            run(["losetup", "--detach", item.split()[2]], check=False)
        elif item.startswith("network namespace "):
            run(["ip", "netns", "del", item.split()[2]], check=False)
        elif item.startswith("directory "):
            shutil.rmtree(item.split(None, 1)[1], ignore_errors=True)
    for sub in ("nodes", "disks", "fixtures", "images"):
        shutil.rmtree(WORK_ROOT / sub, ignore_errors=True)
    return found
