"""Promote the parked spare: fence, move the volume, boot, move the floating IP, record.

Every step reads the cloud's state first and does only what is missing, so running the
promotion again after a crash at any point finishes it. At every moment:
  * the data volume is attached to at most one server (detach is awaited before attach), and
  * the floating IP never points at a server that does not hold the volume (it is taken off the
    old node while fencing and put on the new one only once the app answers there).

The target is booted first, before the old node is fenced: a node without the volume starts no
app unit (they all need /srv/data), and its boot, the longest step, overlaps the rest.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from blueprints.failover.cloud import NODES, Cloud, CloudError, Snapshot, retrying

STEPS = ("boot", "fence", "detach", "attach", "healthy", "address", "record")


class PromotionRefused(CloudError):
    """Nothing was changed: the situation needs a decision by a person (or --force)."""


class PromotionFailed(CloudError):
    """A step could not complete; what was moved so far is consistent and a rerun resumes."""


@dataclass(frozen=True)
class Lock:
    target: str
    since: float
    owner: str

    @classmethod
    def parse(cls, value: str | None) -> Lock | None:
        if not value:
            return None
        parts = value.split(".", 2)
        if len(parts) != 3 or parts[0] not in NODES or not parts[1].isdigit():
            return None
        return cls(parts[0], float(parts[1]), parts[2])

    def render(self) -> str:
        return f"{self.target}.{int(self.since)}.{self.owner}"


def default_owner() -> str:
    """Who holds the lock, as a label value (letters, digits, - and _; at most 40 chars)."""
    host = "".join(c if c.isalnum() or c in "-_" else "-" for c in socket.gethostname())
    return f"{host[:28]}-{os.getpid()}"


@dataclass
class Options:
    target: str | None = None  # None: resume a recorded promotion, else the non-active node
    force: bool = False  # promote although the app is healthy / the old node is not confirmed off
    takeover: bool = False  # continue a promotion another process started and abandoned
    health_timeout: float = 300.0  # how long the new node may take to answer its health check
    health_interval: float = 2.0
    lock_ttl: float = 600.0  # a lock not refreshed for this long belongs to a dead promoter


@dataclass
class Result:
    target: str
    done: list[str]  # steps that changed something
    recorded: str  # how the new active node was recorded
    already: bool = False  # the cloud was already promoted; only the record was (re)written


class Promotion:
    def __init__(
        self,
        cloud: Cloud,
        probe: Callable[[str], bool],
        record: Callable[[str], str],
        *,
        owner: str | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        log: Callable[[str], None] = lambda _m: None,
        after_step: Callable[[str], None] = lambda _s: None,
        retry_delay: Callable[[int], float] | None = None,
    ):
        self.cloud = cloud
        self.probe = probe  # probe(address) -> the app answers its health check there
        self.record = record  # record(target) -> a sentence saying where it was recorded
        self.owner = owner or default_owner()
        self.clock = clock
        self.sleep = sleep
        self.log = log
        self.after_step = after_step  # test hook: called after each step completes
        self._retry_kwargs = {"sleep": sleep, "log": log}
        if retry_delay is not None:
            self._retry_kwargs["delay"] = retry_delay

    # -- helpers ---------------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[[], object]) -> None:
        retrying(what, fn, **self._retry_kwargs)  # type: ignore[arg-type]

    def _snap(self) -> Snapshot:
        return retrying("reading the stack's state", self.cloud.snapshot, **self._retry_kwargs)  # type: ignore[arg-type]

    def _lock(self, target: str) -> None:
        value = Lock(target, self.clock(), self.owner).render()
        self._call("recording the promotion on the volume", lambda: self.cloud.write_lock(value))

    def _fence(self, node: str, force: bool, done: list[str]) -> Snapshot:
        """Make sure `node` is off (it may have come back since the last look)."""
        snap = self._snap()
        if not snap.nodes[node].off:
            self.log(f"fence: powering {node} off (status {snap.nodes[node].status})")
            self._call(f"powering {node} off", lambda: self.cloud.power_off(node))
            if "fence" not in done:
                done.append("fence")
            snap = self._snap()
        if not snap.nodes[node].off:
            if not force:
                raise PromotionRefused(
                    f"cannot confirm that {node} is off (the cloud says "
                    f"{snap.nodes[node].status}); moving its data now could corrupt it. "
                    "Fence it yourself, then rerun with --force"
                )
            self.log(f"fence: {node} is {snap.nodes[node].status}, going on because of --force")
        return snap

    # -- the promotion ---------------------------------------------------------------------

    def choose_target(self, snap: Snapshot, active_in_config: str, opts: Options) -> str:
        lock = Lock.parse(snap.lock)
        if opts.target:
            return opts.target
        if lock:
            return lock.target
        return snap.other(active_in_config)

    def run(self, active_in_config: str, opts: Options) -> Result:
        snap = self._snap()
        target = self.choose_target(snap, active_in_config, opts)
        source = snap.other(target)
        lock = Lock.parse(snap.lock)
        now = self.clock()

        if lock and lock.owner != self.owner:
            age = now - lock.since
            if lock.target != target and not opts.takeover:
                raise PromotionRefused(
                    f"a promotion to {lock.target} is recorded on the volume (by {lock.owner}); "
                    f"finish it first, or pass --takeover to promote to {target} instead"
                )
            if age < opts.lock_ttl and not opts.takeover:
                raise PromotionRefused(
                    f"another promotion to {lock.target} is in progress (by {lock.owner}, last "
                    f"step {int(age)}s ago); wait for it, or pass --takeover if it died"
                )
            self.log(f"resuming the promotion to {lock.target} that {lock.owner} started")

        t = snap.nodes[target]
        if (
            snap.volume_holder == target
            and snap.ip_holder == target
            and t.running
            and snap.nodes[source].off
        ):
            self.log(f"the cloud already runs the app on {target}")
            recorded = self.record(target)
            if snap.lock:
                self._call("clearing the promotion record", lambda: self.cloud.write_lock(None))
            return Result(target, [], recorded, already=True)

        if (
            lock is None
            and not opts.force
            and snap.volume_holder == source
            and snap.ip_holder == source
            and snap.nodes[source].running
            and self.probe(snap.floating_ip)
        ):
            raise PromotionRefused(
                f"the app is healthy on {source} at {snap.floating_ip}; a promotion means "
                "downtime. Pass --force for a planned switchover"
            )

        done: list[str] = []
        self._lock(target)
        try:
            self._steps(source, target, opts, done)
        except CloudError as exc:
            # Leave a record that any later run may resume at once (time 0 = long abandoned).
            self._mark_abandoned(target)
            if isinstance(exc, (PromotionRefused, PromotionFailed)):
                raise
            raise PromotionFailed(
                f"promotion to {target} stopped: {exc}. Done so far: "
                f"{', '.join(done) or 'nothing'}; rerun promote to finish"
            ) from exc
        try:
            recorded = self.record(target)
        except Exception as exc:  # a file or the Pulumi CLI: report it, the cloud is done
            self._mark_abandoned(target)
            raise PromotionFailed(
                f"the app now runs on {target}, but recording it failed: {exc}. Rerun promote "
                "(it will only record), or set blueprints:active yourself"
            ) from exc
        done.append("record")
        self.after_step("record")
        self._call("clearing the promotion record", lambda: self.cloud.write_lock(None))
        return Result(target, done, recorded)

    def _mark_abandoned(self, target: str) -> None:
        try:
            self.cloud.write_lock(Lock(target, 0, self.owner).render())
        except CloudError as exc:
            self.log(f"could not mark the promotion as resumable: {exc}")

    def _steps(self, source: str, target: str, opts: Options, done: list[str]) -> None:
        # 1. Boot the target first: the OS boot is the longest step, and a node without the
        # volume starts no app unit (they all need /srv/data) and holds no address.
        snap = self._snap()
        if not snap.nodes[target].running:
            self.log(f"boot: powering {target} on")
            self._call(f"powering {target} on", lambda: self.cloud.power_on(target))
            done.append("boot")
        self.after_step("boot")

        # 2. Fence: the old node goes off, and the address comes off it with its data.
        snap = self._fence(source, opts.force, done)
        if snap.ip_holder == source:
            self.log(f"fence: taking the floating IP off {source}")
            self._call("unassigning the floating IP", self.cloud.unassign_ip)
            if "fence" not in done:
                done.append("fence")
        self.after_step("fence")

        # 3. Detach from the old node, which must still be off (it may have come back).
        snap = self._fence(source, opts.force, done)
        if snap.volume_holder == source:
            self.log(f"detach: data volume from {source}")
            self._call("detaching the data volume", lambda: self.cloud.detach_volume(source))
            done.append("detach")
        self._lock(target)
        self.after_step("detach")

        # 4. Attach to the target, once nothing holds it.
        snap = self._fence(source, opts.force, done)
        if snap.volume_holder is None:
            self.log(f"attach: data volume to {target}")
            self._call("attaching the data volume", lambda: self.cloud.attach_volume(target))
            done.append("attach")
        elif snap.volume_holder != target:
            raise PromotionFailed(f"the data volume is attached to {snap.volume_holder} again")
        self._lock(target)
        self.after_step("attach")

        # 5. Wait for the app on the target's own address.
        self._wait_healthy(target, opts)
        done.append("healthy")
        self.after_step("healthy")

        # 6. Move the address, only onto the node holding the data; the old node stays fenced.
        snap = self._fence(source, opts.force, done)
        if snap.volume_holder != target:
            raise PromotionFailed(f"the data volume left {target} before the IP moved")
        if snap.ip_holder != target:
            if snap.ip_holder is not None:
                self._call("unassigning the floating IP", self.cloud.unassign_ip)
            self.log(f"address: floating IP {snap.floating_ip} to {target}")
            self._call("assigning the floating IP", lambda: self.cloud.assign_ip(target))
            done.append("address")
        self.after_step("address")

    def _wait_healthy(self, target: str, opts: Options) -> None:
        deadline = self.clock() + opts.health_timeout
        refreshed = self.clock()
        while True:
            snap = self._snap()
            node = snap.nodes[target]
            if node.running and self.probe(node.address):
                self.log(f"healthy: the app answers on {target} ({node.address})")
                return
            if self.clock() >= deadline:
                raise PromotionFailed(
                    f"{target} did not become healthy within {int(opts.health_timeout)}s "
                    f"(status {node.status}, address {node.address}); the volume is on {target}, "
                    "the floating IP on no server. Fix the app there and rerun promote, or "
                    f"promote --to {snap.other(target)} to go back"
                )
            if self.clock() - refreshed > opts.lock_ttl / 4:
                self._lock(target)
                refreshed = self.clock()
            self.sleep(opts.health_interval)


def park(cloud: Cloud, active: str, *, log: Callable[[str], None] = lambda _m: None) -> str:
    """Power the standby (the node that is not active) off again, e.g. after a failback."""
    snap = cloud.snapshot()
    standby = snap.other(active)
    if snap.volume_holder == standby or snap.ip_holder == standby:
        raise PromotionRefused(
            f"{standby} holds the data volume or the floating IP, so it is the node in use; "
            f"the stack config says {active} is active. Promote first, or fix the config"
        )
    if snap.lock:
        raise PromotionRefused("a promotion is recorded on the volume; let it finish first")
    if snap.nodes[standby].off:
        return f"{standby} is already parked (off)"
    log(f"parking {standby}")
    retrying(f"powering {standby} off", lambda: cloud.power_off(standby), log=log)
    return f"{standby} parked (powered off)"
