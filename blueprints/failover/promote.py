"""Promote the standby: fence, move the volume, boot, move the floating IP, record.

Which node is active is the cloud's answer (the data volume's holder, else the floating IP's
holder); the stack file's `blueprints:active` is only the fallback, and a file that disagrees
is reported. Every step reads the cloud's state first and does only what is missing, so
running the promotion again after a crash at any point finishes it. At every moment:
  * the data volume is attached to at most one server (detach is awaited before attach), and
  * the floating IP never points at a server that does not hold the volume (it is taken off the
    old node while fencing and put on the new one only once the app answers there).

The run holds the stack's promotion lock (blueprints.failover.lock) from before its first
probe to its end, and checks it before every step: a run taken over stops there.

The target is booted first, before the old node is fenced: a node without the volume starts no
app unit (they all need /srv/data), and its boot, the longest step, overlaps the rest.

Where to go (`Promotion._decide`), in this order:
  * `--to` (or the watchdog, which passes the node it did not judge dead) names the target;
  * else a replaced record (a failed run's, or a dead run's expired lock) is resumed, unless
    its work is done: if its target already holds the data volume and the floating IP, the
    record is spent. The app answering there, the run only records; not answering (a node
    that is off, crashed or hung since), it is a new failure of that node, handled as without
    a record;
  * else the node that is not active (the cloud's answer).
Whatever the target, the run refuses (unless --force) when the node it would fence serves the
app: it holds the data volume, runs, and answers on the floating IP, or on its own address
while the floating IP points at no server (a promotion that stopped after taking the IP off).
A record therefore never makes a run fence a node that serves the app, and never sends it
toward a node that is off while the other one serves.

The app is probed on the floating IP, unless the floating IP is an address of this machine
(the warm spare on Hetzner has it on eth0): then on the IP holder's own public address.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from blueprints.failover import health
from blueprints.failover.cloud import (
    NODES,
    Cloud,
    CloudError,
    OutOfTime,
    PromotionFailed,
    PromotionRefused,
    PromotionTakenOver,
    Snapshot,
    no_limit,
    no_tick,
    retrying,
)
from blueprints.failover.lock import LockRecord, PromotionLock, new_owner

__all__ = [
    "STEPS",
    "Options",
    "Promotion",
    "PromotionFailed",
    "PromotionRefused",
    "PromotionTakenOver",
    "Result",
    "active_node",
    "front_address",
    "park",
]

STEPS = ("boot", "fence", "detach", "attach", "healthy", "address", "record")
T = TypeVar("T")


def active_node(snap: Snapshot, configured: str) -> str:
    """The node the cloud runs the app on: the volume's holder, else the floating IP's holder,
    else `configured` (the stack file's blueprints:active)."""
    return snap.volume_holder or snap.ip_holder or configured


def front_address(snap: Snapshot, configured: str, local: Callable[[str], bool]) -> str:
    """Where the app is probed as its users reach it: the floating IP, unless `local` says it
    is an address of this machine (on Hetzner the floating IP is configured on eth0 of both
    nodes, so on the warm spare it leads to the spare itself); then the IP holder's own public
    address (the probe connects there with the domain as TLS name)."""
    if not snap.floating_ip or not local(snap.floating_ip):
        return snap.floating_ip
    holder = snap.ip_holder or active_node(snap, configured)
    return snap.nodes[holder].address or snap.floating_ip


def _stale_note(snap: Snapshot, configured: str) -> str:
    active = active_node(snap, configured)
    if active == configured:
        return ""
    holds = "the data volume" if snap.volume_holder == active else "the floating IP"
    return f"the stack file says blueprints:active is {configured}, but {active} holds {holds}"


@dataclass
class Options:
    target: str | None = None  # None: resume a recorded promotion, else the non-active node
    force: bool = False  # promote although the app is healthy / the old node is not confirmed off
    takeover: bool = False  # take the lock from a live run (it stops before its next step)
    health_timeout: float = 300.0  # how long the new node may take to answer its health check
    health_interval: float = 2.0
    lock_ttl: float = 120.0  # a lock without a heartbeat this long (cloud clock) is expired
    budget: float | None = None  # seconds for the whole run, None: unbounded


@dataclass
class Result:
    target: str
    done: list[str]  # steps that changed something
    recorded: str  # how the new active node was recorded
    already: bool = False  # the cloud was already promoted; only the record was (re)written
    source: str = ""  # the node promoted away from
    note: str = ""  # e.g. a stack file that disagreed with the cloud


class Promotion:
    def __init__(
        self,
        cloud: Cloud,
        probe: Callable[[str], bool],
        record: Callable[[str], str],
        *,
        owner: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        log: Callable[[str], None] = lambda _m: None,
        after_step: Callable[[str], None] = lambda _s: None,
        retry_delay: Callable[[int], float] | None = None,
        settle: float = 0.5,
        local: Callable[[str], bool] | None = None,
    ):
        self.cloud = cloud
        self.probe = probe  # probe(address) -> the app answers its health check there
        self.record = record  # record(target) -> a sentence saying where it was recorded
        self.owner = owner or new_owner()
        self.clock = clock  # durations only (budget, health timeout); the lock uses the cloud's
        self.sleep = sleep
        self.log = log
        self.after_step = after_step  # test hook: called after each step completes
        self.retry_delay = retry_delay
        self.settle = settle
        # local(address) -> an address of this machine; None: health.is_local_address
        self.local = local
        self._deadline: float | None = None
        self._budget: float | None = None
        self._step = "lock"
        self._target: str | None = None  # the run's target, once chosen under the lock
        self._lock: PromotionLock | None = None
        self._beat_at = 0.0  # self.clock() of the last heartbeat
        self._ticking = False
        self._lock_ttl = 120.0

    # -- helpers ---------------------------------------------------------------------------

    def _time_left(self) -> float | None:
        return None if self._deadline is None else self._deadline - self.clock()

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        kwargs = {"sleep": self.sleep, "log": self.log, "time_left": self._time_left}
        if self.retry_delay is not None:
            kwargs["delay"] = self.retry_delay
        return retrying(what, fn, **kwargs)  # type: ignore[arg-type]

    def _snap(self) -> Snapshot:
        return self._call("reading the stack's state", self.cloud.snapshot)

    def _pause(self, seconds: float) -> None:
        left = self._time_left()
        if left is not None and left <= seconds:
            raise OutOfTime(f"no time left to wait {seconds:g}s more")
        self.sleep(seconds)

    def _front(self, snap: Snapshot, configured: str) -> str:
        return front_address(snap, configured, self.local or health.is_local_address)

    def _heartbeat(self) -> None:
        """The lock's heartbeat while a step waits (for the cloud, for the app): at most every
        lockTtl/4 by the local clock (durations only), so a slow step never outlives the lock
        and a takeover stops the run during the wait, not after it."""
        lock = self._lock
        if lock is None or not lock.held or self._ticking:
            return
        if self.clock() - self._beat_at < self._lock_ttl / 4:
            return
        self._ticking = True
        try:
            lock.check(f"the {self._step} step finished", target=self._target)
        finally:
            self._ticking = False
        self._beat_at = self.clock()

    def abandon(self, attempts: int = 1) -> str:
        """After the command's hard deadline stopped this run where it was: mark its lock
        failed (or delete it, before a target was chosen), best effort, one try per request.
        Returns what happened to the lock, for the command's last line."""
        lock, self._lock = self._lock, None
        self.cloud.time_left = no_limit
        self.cloud.tick = no_tick
        expires = f"its lock expires after lockTtl ({self._lock_ttl:g}s)"
        if lock is None or not lock.held:
            return f"any lock it left expires after lockTtl ({self._lock_ttl:g}s)"
        if self._target is None:
            lock.release()
            return "it had chosen no target yet; its lock is removed"
        if lock.fail(self._target, attempts=attempts):
            return "its lock is marked failed, so a rerun resumes at once"
        return expires

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

    def run(self, opts: Options, configured: str = "primary") -> Result:
        """Promote; `configured` is the stack file's blueprints:active (only a fallback)."""
        self._budget = opts.budget
        self._deadline = None if opts.budget is None else self.clock() + opts.budget
        self.cloud.time_left = self._time_left
        self.cloud.tick = self._heartbeat
        self._step = "lock"
        self._target = None
        self._lock_ttl = opts.lock_ttl
        self._beat_at = self.clock()
        lock = self._lock = PromotionLock(
            self.cloud,
            self.owner,
            ttl=opts.lock_ttl,
            settle=self.settle,
            sleep=self._pause,
            log=self.log,
            call=self._call,
        )
        # The lock comes first: no probe, no action before it is ours. Its target is settled
        # once the cloud has been read under the lock.
        provisional = opts.target or NODES[1 - NODES.index(configured)]
        done: list[str] = []
        try:
            replaced = lock.acquire(provisional, takeover=opts.takeover)
            return self._locked(lock, replaced, opts, configured, done)
        except PromotionTakenOver as exc:
            raise PromotionTakenOver(f"{exc}. Done so far: {', '.join(done) or 'nothing'}") from exc
        except PromotionRefused as exc:
            if not done:
                lock.release()
                raise
            self._give_up(lock)  # something changed: no longer "refused, nothing changed"
            raise PromotionFailed(
                f"promotion stopped: {exc}. Done so far: {', '.join(done)}; rerun promote to finish"
            ) from exc
        except PromotionFailed:
            self._give_up(lock)
            raise
        except OutOfTime as exc:
            self._give_up(lock)
            raise PromotionFailed(
                f"the promotion ran out of its {self._budget:g}s budget at step {self._step}: "
                f"{exc}. Done so far: {', '.join(done) or 'nothing'}; rerun promote to finish"
            ) from exc
        except CloudError as exc:
            self._give_up(lock)
            raise PromotionFailed(
                f"the promotion stopped at step {self._step}: {exc}. Done so far: "
                f"{', '.join(done) or 'nothing'}; rerun promote to finish"
            ) from exc
        finally:
            self.cloud.time_left = no_limit
            self.cloud.tick = no_tick

    def _give_up(self, lock: PromotionLock) -> None:
        """A failure: mark the lock failed with the chosen target, so a rerun resumes toward
        it; before a target was chosen there is nothing to resume, so the lock goes."""
        if self._target is None:
            lock.release()
        else:
            lock.fail(self._target)

    def _decide(
        self, snap: Snapshot, opts: Options, configured: str, replaced: LockRecord | None
    ) -> str:
        """The target (the rules are in the module's docstring)."""
        if opts.target:
            return opts.target
        if replaced is None:
            return snap.other(active_node(snap, configured))
        target = replaced.target
        if snap.volume_holder == target and snap.ip_holder == target:
            # The recorded promotion is complete in the cloud: its record is spent.
            front = self._front(snap, configured)
            if snap.nodes[target].running and self.probe(front):
                self.log(f"the promotion to {target} that {replaced.owner} started is complete")
                return target
            self.log(
                f"the promotion to {target} that {replaced.owner} started is complete, but "
                f"{target} does not serve the app now (status {snap.nodes[target].status}): "
                f"promoting away from it"
            )
            return snap.other(target)
        self.log(f"resuming the promotion to {target} that {replaced.owner} started")
        return target

    def _serving(self, snap: Snapshot, node: str, configured: str) -> str | None:
        """Where `node` serves the app, or None: it holds the data volume, runs, and its app
        answers on the floating IP (which points at it), or on its own address while the
        floating IP points at no server."""
        if snap.volume_holder != node or not snap.nodes[node].running:
            return None
        if snap.ip_holder == node:
            front = self._front(snap, configured)
            return front if self.probe(front) else None
        own = snap.nodes[node].address
        if snap.ip_holder is None and own and self.probe(own):
            return own
        return None

    def _locked(
        self,
        lock: PromotionLock,
        replaced: LockRecord | None,
        opts: Options,
        configured: str,
        done: list[str],
    ) -> Result:
        snap = self._snap()
        target = self._decide(snap, opts, configured, replaced)
        self._target = target
        source = snap.other(target)
        active = active_node(snap, configured)
        note = _stale_note(snap, configured)
        if note:
            self.log(note)

        def finish(steps: list[str], already: bool) -> Result:
            self._step = "record"
            lock.check("record", target=target)
            try:
                recorded = self.record(target)
            except Exception as exc:  # a file or the Pulumi CLI: report it, the cloud is done
                raise PromotionFailed(
                    f"the app now runs on {target}, but recording it failed: {exc}. Rerun "
                    "promote (it will only record), or set blueprints:active yourself"
                ) from exc
            if not already:
                steps.append("record")
                self.after_step("record")
            lock.release()
            return Result(target, steps, recorded, already, source, note)

        if self._in_place(snap, target):
            self.log(f"the cloud already runs the app on {target}")
            return finish([], already=True)

        serving = self._serving(snap, source, configured)
        stale = active != configured and snap.ip_holder == source
        if serving and stale and not opts.target and replaced is None:
            # The promotion happened, the stack file was not updated (not committed): the app
            # is healthy where the cloud says, so only the record is missing.
            target, source = active, snap.other(active)
            self._target = target
            self.log(f"the app is healthy on {target}; recording it")
            return finish([], already=True)
        if serving and not opts.force:
            if snap.ip_holder == source:
                raise PromotionRefused(
                    f"the app is healthy on {source} at {serving}; a promotion means "
                    "downtime. Pass --force for a planned switchover"
                )
            raise PromotionRefused(
                f"the app is healthy on {source} at its own address {serving} and {source} "
                "holds the data volume, but the floating IP points at no server (a promotion "
                f"stopped after taking it off): `promote --to {source}` puts the IP back, "
                f"--force promotes to {target} anyway"
            )

        self._steps(lock, source, target, opts, done)
        return finish(done, already=False)

    @staticmethod
    def _in_place(snap: Snapshot, target: str) -> bool:
        """The target holds the volume and the address and runs. The other node holds
        neither, so it cannot write the data, whether it is off or a running standby."""
        return (
            snap.volume_holder == target and snap.ip_holder == target and snap.nodes[target].running
        )

    def _begin(self, lock: PromotionLock, step: str, target: str) -> None:
        """Before each step: the budget, then the lock (heartbeat by id, read back)."""
        self._step = step
        left = self._time_left()
        if left is not None and left <= 0:
            raise OutOfTime("no time left")
        lock.check(step, target=target)
        self._beat_at = self.clock()

    def _steps(
        self, lock: PromotionLock, source: str, target: str, opts: Options, done: list[str]
    ) -> None:
        # 1. Boot the target first: the OS boot is the longest step, and a node without the
        # volume starts no app unit (they all need /srv/data) and holds no address.
        self._begin(lock, "boot", target)
        snap = self._snap()
        if not snap.nodes[target].running:
            self.log(f"boot: powering {target} on")
            self._call(f"powering {target} on", lambda: self.cloud.power_on(target))
            done.append("boot")
        self.after_step("boot")

        # 2. Fence: the old node goes off, and the address comes off it with its data.
        self._begin(lock, "fence", target)
        snap = self._fence(source, opts.force, done)
        if snap.ip_holder == source:
            self.log(f"fence: taking the floating IP off {source}")
            self._call("unassigning the floating IP", self.cloud.unassign_ip)
            if "fence" not in done:
                done.append("fence")
        self.after_step("fence")

        # 3. Detach from the old node, which must still be off (it may have come back).
        self._begin(lock, "detach", target)
        snap = self._fence(source, opts.force, done)
        if snap.volume_holder == source:
            self.log(f"detach: data volume from {source}")
            self._call("detaching the data volume", lambda: self.cloud.detach_volume(source))
            done.append("detach")
        self.after_step("detach")

        # 4. Attach to the target, once nothing holds it.
        self._begin(lock, "attach", target)
        snap = self._fence(source, opts.force, done)
        if snap.volume_holder is None:
            self.log(f"attach: data volume to {target}")
            self._call("attaching the data volume", lambda: self.cloud.attach_volume(target))
            done.append("attach")
        elif snap.volume_holder != target:
            raise PromotionFailed(f"the data volume is attached to {snap.volume_holder} again")
        self.after_step("attach")

        # 5. Wait for the app on the target's own address.
        self._begin(lock, "healthy", target)
        self._wait_healthy(target, opts)
        done.append("healthy")
        self.after_step("healthy")

        # 6. Move the address, only onto the node holding the data; the old node stays fenced.
        self._begin(lock, "address", target)
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
            self._heartbeat()
            self._pause(min(opts.health_interval, max(0.0, deadline - self.clock())) or 0.001)


def park(
    cloud: Cloud,
    configured: str,
    *,
    owner: str | None = None,
    log: Callable[[str], None] = lambda _m: None,
    lock_ttl: float = 120.0,
    settle: float = 0.5,
    sleep: Callable[[float], None] = time.sleep,
    budget: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> str:
    """Power the standby (the node that does not hold the data volume) off, e.g. after a
    failback. `configured` is the stack file's blueprints:active, only reported when the cloud
    disagrees. Takes the promotion lock; leaves a failed promotion's record as it was. With
    `budget` (seconds), no call or retry starts once it is spent."""
    end = None if budget is None else clock() + budget

    def time_left() -> float | None:
        return None if end is None else end - clock()

    def call(what: str, fn: Callable[[], T]) -> T:
        return retrying(what, fn, sleep=sleep, log=log, time_left=time_left)

    cloud.time_left = time_left
    lock = PromotionLock(
        cloud, owner or new_owner(), ttl=lock_ttl, settle=settle, sleep=sleep, log=log, call=call
    )
    beat = [clock()]

    def tick() -> None:  # the heartbeat while the power-off is awaited (see Promotion)
        if lock.held and clock() - beat[0] >= lock_ttl / 4:
            beat[0] = clock()
            lock.check("the power-off finished")

    try:
        replaced = lock.acquire(configured, action="park")
    except BaseException:
        cloud.time_left = no_limit
        raise
    cloud.tick = tick
    restore = replaced  # a failed or dead promotion's record stays, so promote can resume it
    try:
        snap = call("reading the stack's state", cloud.snapshot)
        if snap.volume_holder is None:
            raise PromotionRefused(
                "no node holds the data volume: a promotion was left half done; finish it "
                "with `blueprints promote` before parking"
            )
        active = snap.volume_holder
        standby = snap.other(active)
        if snap.ip_holder == standby:
            raise PromotionRefused(
                f"the floating IP points at {standby}, but the data volume is on {active}: a "
                "promotion was left half done; finish it with `blueprints promote` before parking"
            )
        note = _stale_note(snap, configured)
        suffix = f" ({note})" if note else ""
        if snap.nodes[standby].off:
            return f"{standby} is already parked (off){suffix}"
        lock.check("park")
        beat[0] = clock()
        log(f"parking {standby}")
        call(f"powering {standby} off", lambda: cloud.power_off(standby))
        return f"{standby} parked (powered off){suffix}"
    finally:
        cloud.tick = no_tick
        lock.release(restore=restore)
        cloud.time_left = no_limit
