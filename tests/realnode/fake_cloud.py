"""The fake Hetzner API in front of real nodes: a cloud whose actions happen to the nodes.

    cloud = NodeCloud(network, app="shop", stack="single-vm-hcloud")
    cloud.add_machine("primary", primary)                  # a Node, labelled node=primary
    cloud.add_machine("spare", spare)
    cloud.add_data_volume(disk, holder="primary")         # the DataDisk, attached to primary
    cloud.add_address(floating_ip, holder="primary")      # routed to primary on the network
    with cloud:                                            # serves inside the network's lan side
        ...  # HCLOUD_ENDPOINT=cloud.url for a process run with network.run / ip netns exec

`FakeHcloud` (tests/fakes/hcloud_api.py) keeps the API's model and answers the SDK. Here every
action it accepts also happens to the nodes, in a thread of its own, and the action finishes
(status success, its effect in the model) only once that is done, as a cloud's action finishes
once the machine did it:
- poweroff and reset: the node's power is cut (Node.kill), reset then boots it again; shutdown:
  a clean poweroff (Node.stop);
- poweron: the node boots, with the network as after a power cycle, and with the volume if the
  cloud has it attached to that server;
- volume attach: hot-plugged into the running node (Node.attach_volume: the device appears and
  the units its device unit wants start, as udev would make systemd do); detach: the device goes;
- floating IP assign and unassign: the route to the address on the network's client side.

The API listens on 127.0.0.1 inside the network's lan namespace (where the clients of the
network run, e.g. the watchdog), served by threads of this process, so actions drive the nodes
from the host side. Nothing here talks to anything but that address and the nodes.

`hang(node)` makes a node die the way a hung VM does (nothing answers, the cloud still says
running); `power_on(node)` is an operator pressing the console's power button. `samples()` and
`violations` come from `HolderWatch`, which checks, several times a second, that at most one
node holds the volume.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from tests.fakes.hcloud_api import FakeHcloud
from tests.realnode.host import HarnessError
from tests.realnode.net import TestNetwork
from tests.realnode.node import DataDisk, Node

CLONE_NEWNET = 0x40000000
T = TypeVar("T")
TEST_ONLY = (
    "the Hetzner API is FakeHcloud; its actions are carried out on the nodes by the test process "
    "(power: the node's systemd-nspawn; volume: the loop device's nodes; floating IP: a route)",
)


def in_netns(netns: str, call: Callable[[], T]) -> T:
    """call() in a thread of its own that entered network namespace `netns` (named, /run/netns).

    setns() changes the namespace of the calling thread only: sockets made by call() live in
    `netns`, and so do threads it starts (a thread begins in the namespace of the one that
    started it), whatever other threads of the process do.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise HarnessError(f"cannot enter namespace {netns}: {os.strerror(err)}")
            finally:
                os.close(fd)
            box["value"] = call()
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=work, name=f"in-{netns}")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


@dataclass
class Machine:
    label: str  # primary | spare: the server's node label
    node: Node
    server: int  # the server's id in the fake API


@dataclass(frozen=True)
class Event:
    at: float  # time.monotonic()
    kind: str  # request | begin | end | hang | power-on | note
    what: str
    detail: str = ""


@dataclass
class Sample:
    at: float
    mounted: tuple[str, ...]  # nodes with /srv/data mounted
    devices: tuple[str, ...]  # nodes in which the volume's device exists
    cloud: str | None  # the server the fake API has the volume attached to
    driver: tuple[str, ...]  # nodes the driver made the device appear in


class NodeCloud(FakeHcloud):
    """FakeHcloud whose actions happen to real nodes on `network` (see the module doc)."""

    def __init__(self, network: TestNetwork, *, app: str, stack: str, location: str = "fsn1"):
        # Actions finish when their effect on the nodes is done, not after a number of polls.
        super().__init__(action_polls=None, action_delay=None)
        self.network = network
        self.labels = {"app": app, "blueprint": "single-vm", "stack": stack}
        self.location = location
        self.machines: dict[str, Machine] = {}
        self.disk: DataDisk | None = None
        self.volume: int | None = None
        self.address: str | None = None
        self.address_id: int | None = None
        self.events: list[Event] = []
        # (when, seconds) the fake took to answer each request: the drill's API latency.
        self.request_seconds: list[tuple[float, float]] = []
        self.effect_errors: list[str] = []
        # Nodes the driver made the volume's device appear in (it keeps this at most one).
        self.driver_holders: set[str] = set()
        self.violations: list[str] = []
        self._workers: list[threading.Thread] = []
        self._effects: queue.Queue = queue.Queue()  # (action, what, effect), None to end
        self._dispatcher: threading.Thread | None = None
        self._node_lock = threading.Lock()  # one effect on the nodes at a time

    # --- seeding ---------------------------------------------------------------------------

    def add_machine(self, label: str, node: Node, status: str = "running") -> int:
        sid = self.add_server(
            f"{self.labels['app']}-{self.labels['stack']}-{label}",
            location=self.location,
            labels={**self.labels, "node": label},
            status=status,
            ipv4=node.address,
        )
        self.machines[label] = Machine(label, node, sid)
        return sid

    def add_data_volume(self, disk: DataDisk, holder: str | None) -> int:
        self.disk = disk
        server = self.machines[holder].server if holder else None
        self.volume = self.add_volume(
            f"{self.labels['app']}-{self.labels['stack']}-data",
            location=self.location,
            labels=dict(self.labels),
            server=server,
        )
        if holder:
            self.driver_holders = {holder}
        return self.volume

    def add_address(self, ip: str, holder: str | None) -> int:
        self.address = ip
        server = self.machines[holder].server if holder else None
        self.address_id = self.add_floating_ip(
            f"{self.labels['app']}-{self.labels['stack']}-ip",
            home_location=self.location,
            labels=dict(self.labels),
            server=server,
            ip=ip,
        )
        if holder:
            self.network.assign(ip, self.machines[holder].node.address)
        return self.address_id

    # --- serving inside the lan namespace ----------------------------------------------------

    def start(self) -> NodeCloud:
        # Effects run in threads started from here (the host's namespace): they drive the nodes.
        self._dispatcher = threading.Thread(target=self._run_effects, name="node-cloud-effects")
        self._dispatcher.start()
        # The API's socket and its serving threads live on the network's client side.
        try:
            in_netns(self.network.lan, super().start)
        except BaseException:
            self._effects.put(None)
            self._dispatcher.join()
            raise
        return self

    def stop(self) -> None:
        try:
            super().stop()  # no new actions after this
        finally:
            self._effects.put(None)
            if self._dispatcher is not None:
                self._dispatcher.join(timeout=10)
            for worker in list(self._workers):
                worker.join(timeout=120)

    def _run_effects(self) -> None:
        while (job := self._effects.get()) is not None:
            worker = threading.Thread(target=self._carry_out, args=job, name=f"action-{job[1]}")
            self._workers.append(worker)
            worker.start()

    # --- what a test does to the world ---------------------------------------------------------

    def note(self, kind: str, what: str, detail: str = "") -> None:
        with self._lock:
            self.events.append(Event(time.monotonic(), kind, what, detail))

    def hang(self, label: str) -> float:
        """The node hangs (Node.hang); the cloud still says running. Returns when it died."""
        machine = self.machines[label]
        with self._node_lock:
            died = time.monotonic()
            machine.node.hang()
            self.driver_holders.discard(label)
        self.note("hang", label)
        return died

    def power_on(self, label: str) -> None:
        """An operator powers the server on (console or API): the node boots, the cloud says
        running once it does."""
        sid = self.machines[label].server
        with self._lock:
            self._servers[sid].status = "starting"
        with self._node_lock:
            self._power_on(label)
        with self._lock:
            self._servers[sid].status = "running"
        self.note("power-on", label)

    # --- the model, read -----------------------------------------------------------------------

    def _label_of(self, server: int | None) -> str | None:
        return next((m.label for m in self.machines.values() if m.server == server), None)

    def volume_holder(self) -> str | None:
        with self._lock:
            assert self.volume is not None
            return self._label_of(self._volumes[self.volume].server)

    def address_holder(self) -> str | None:
        with self._lock:
            assert self.address_id is not None
            return self._label_of(self._floating_ips[self.address_id].server)

    def status(self, label: str) -> str:
        with self._lock:
            return self._servers[self.machines[label].server].status

    def sample(self) -> Sample:
        mounted = tuple(
            sorted(m.label for m in self.machines.values() if m.node.holds_data_mount())
        )
        devices = tuple(
            sorted(m.label for m in self.machines.values() if m.node.has_volume_device())
        )
        return Sample(
            time.monotonic(),
            mounted,
            devices,
            self.volume_holder(),
            tuple(sorted(self.driver_holders)),
        )

    # --- FakeHcloud hooks --------------------------------------------------------------------

    def _handle(self, method: str, raw_path: str, headers: Any, body: bytes):
        at = time.monotonic()
        response = super()._handle(method, raw_path, headers, body)
        status = getattr(response, "status", None)
        with self._lock:
            self.events.append(
                Event(at, "request", f"{method} {urlsplit(raw_path).path}", str(status))
            )
            self.request_seconds.append((at, time.monotonic() - at))
        return response

    def _start_action(
        self,
        command: str,
        resources: list[tuple[str, int]],
        *,
        on_success: Callable[[], None] | None = None,
        on_error: Callable[[], None] | None = None,
        noop: bool = False,
    ) -> tuple[int, dict[str, Any]]:
        # Runs under self._lock (inside a request's dispatch).
        status, payload = super()._start_action(
            command, resources, on_success=on_success, on_error=on_error, noop=noop
        )
        action = self._actions[payload["action"]["id"]]
        servers = [rid for rtype, rid in resources if rtype == "server"]
        label = self._label_of(servers[0]) if servers else None
        what = f"{command} {label or '-'}"
        self.events.append(Event(time.monotonic(), "begin", what, "noop" if noop else ""))
        if action.status != "running":
            self.events.append(Event(time.monotonic(), "end", what, action.status))
            return status, payload
        self._effects.put((action, what, self._effect(command, label)))
        return status, payload

    def _carry_out(self, action, what: str, effect: Callable[[], None]) -> None:
        error = None
        try:
            with self._node_lock:
                effect()
        except Exception as exc:  # the action fails with it, the test sees effect_errors
            error = f"{what}: {exc.__class__.__name__}: {exc}"
        with self._lock:
            if error is not None:
                self.effect_errors.append(error)
                action.fail_with = ("action_failed", error[:200])
            self._finish(action)
            self.events.append(Event(time.monotonic(), "end", what, action.status))

    # --- the effects on the nodes ------------------------------------------------------------

    def _effect(self, command: str, label: str | None) -> Callable[[], None]:
        def nothing() -> None:
            pass

        if label is None:
            return self._unassign if command == "unassign_floating_ip" else nothing
        effects: dict[str, Callable[[], None]] = {
            "stop_server": lambda: self._power_off(label),
            "shutdown_server": lambda: self._shutdown(label),
            "start_server": lambda: self._power_on(label),
            "reset_server": lambda: (self._power_off(label), self._power_on(label)),
            "attach_volume": lambda: self._attach(label),
            "detach_volume": lambda: self._detach(label),
            "assign_floating_ip": lambda: self._assign(label),
            "unassign_floating_ip": self._unassign,
        }
        return effects.get(command, nothing)

    def _power_off(self, label: str) -> None:
        self.machines[label].node.kill()
        self.driver_holders.discard(label)

    def _shutdown(self, label: str) -> None:
        self.machines[label].node.stop()
        self.driver_holders.discard(label)

    def _power_on(self, label: str) -> None:
        node = self.machines[label].node
        if node.proc is not None:
            return
        with self._lock:
            holder = self._label_of(self._volumes[self.volume].server) if self.volume else None
        node.disk = self.disk if holder == label else None
        if node.disk is not None:
            self._check_free(label)
            self.driver_holders.add(label)
        node.reset_network()
        node.start()

    def _attach(self, label: str) -> None:
        assert self.disk is not None
        self._check_free(label)
        self.driver_holders.add(label)
        units = self.machines[label].node.attach_volume(self.disk)
        self.note("note", f"volume attached to {label}", "starts " + " ".join(units))

    def _detach(self, label: str) -> None:
        self.machines[label].node.detach_volume()
        self.driver_holders.discard(label)

    def _check_free(self, label: str) -> None:
        """Before the volume appears in `label`: no other node may have it, and its filesystem
        must be mounted nowhere (a dead node's mount goes with its last process)."""
        others = sorted(self.driver_holders - {label})
        if others:
            self.violations.append(f"volume made to appear in {label} while {others} had it")
        assert self.disk is not None and self.disk.loop is not None
        if Path("/proc/fs/ext4", Path(self.disk.loop).name).exists():
            self.violations.append(
                f"the volume's filesystem was still mounted somewhere when attached to {label}"
            )

    def _assign(self, label: str) -> None:
        assert self.address is not None
        self.network.assign(self.address, self.machines[label].node.address)

    def _unassign(self) -> None:
        assert self.address is not None
        self.network.unassign(self.address)


@dataclass
class HolderWatch:
    """Samples NodeCloud.sample() every `interval` seconds in a thread; collects violations:
    two nodes with /srv/data mounted, or with the volume's device, at the same moment, or a node
    with it mounted while the cloud has the volume attached to the other."""

    cloud: NodeCloud
    interval: float = 0.25
    samples: list[Sample] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="holder-watch", daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):  # a node going away mid-read: next sample
                s = self.cloud.sample()
                self.samples.append(s)
                if len(s.mounted) > 1:
                    self.violations.append(f"{s.at:.1f}: /srv/data mounted on {s.mounted}")
                if len(s.devices) > 1 or len(s.driver) > 1:
                    self.violations.append(
                        f"{s.at:.1f}: the volume's device in {s.devices} (driver: {s.driver})"
                    )
                strays = [n for n in s.mounted if s.cloud not in (None, n)]
                if strays:
                    self.violations.append(
                        f"{s.at:.1f}: /srv/data mounted on {strays}, the cloud has the volume "
                        f"on {s.cloud}"
                    )
            self._stop.wait(self.interval)

    def __enter__(self) -> HolderWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
