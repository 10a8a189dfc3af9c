"""The promotion lock: one uniquely named cloud resource per stack, created atomically.

Creating a resource whose name must be unique is the compare-and-swap: of two runs creating
it at the same moment, the cloud lets exactly one succeed (Hetzner: a placement group,
uniqueness_error for the second; AWS: an EC2 key pair, InvalidKeyPair.Duplicate). The record
lives in the resource's labels or tags: target, owner, beat, state and action.

The rules:
  * A run takes the lock before it probes or changes anything, and reads it back after a
    short settle (again, a few times, while the read finds no lock at all: EC2 may not list
    a key pair created a moment ago): if the id or owner found is not its own, it lost,
    deletes its own lock by its id and changes nothing.
  * Before every step the run writes a heartbeat (beat = the cloud's clock) to its lock by
    id, then reads the lock back; a promotion does the same every lockTtl/4 while a step
    waits (Cloud.tick). A run that finds its lock gone or another owner (a --takeover) stops
    at once.
  * A lock whose heartbeat is lockTtl old by the cloud API's clock (the Date header of its
    answers, never the local clock) belongs to a dead run; a record marked failed is expired
    too. Either is deleted by its id (never by name: a second contender then cannot delete
    the lock the first one just created) and created afresh.
  * Success and refusals delete the lock; a failure marks it failed and keeps its target, so a
    plain rerun resumes toward it (unless its work is done: blueprints.failover.promote). A
    failed record licenses nothing: the "app is healthy" refusal runs as for any promotion.
  * park replaces a failed record and writes it back into its own lock (by id) at the end:
    if another run took park's lock over meanwhile, the old record stays gone.
"""

from __future__ import annotations

import re
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TypeVar

from blueprints.failover.cloud import (
    NODES,
    Cloud,
    CloudError,
    PromotionRefused,
    PromotionTakenOver,
    retrying,
)

T = TypeVar("T")

STATES = ("running", "failed")
ACTIONS = ("promote", "park")
FIELDS = ("target", "owner", "beat", "state", "action")
HOST_CHARS = 20
# How often acquisition may find the lock gone or replaced before it gives up: each round
# means another run created or deleted it in between.
ROUNDS = 4
# How often the read-back after creating the lock is repeated when it finds no lock at all.
READBACK_MISSES = 3


def lock_name(app: str, stack: str) -> str:
    return f"blueprints-lock-{app}-{stack}"


def new_owner(host: str | None = None) -> str:
    """`<host, at most 20 chars>-<12 hex digits of a uuid4>`: unique per run, also between
    machines that share a hostname (CI containers), and a valid Hetzner label value."""
    raw = socket.gethostname() if host is None else host
    name = re.sub(r"[^A-Za-z0-9._-]", "-", raw)
    name = re.sub(r"^[^A-Za-z0-9]+", "", name)[:HOST_CHARS] or "host"
    return f"{name}-{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class LockRecord:
    target: str  # primary | spare: where the promotion goes (for park: the active node)
    owner: str
    beat: int  # unix seconds by the cloud's clock
    state: str = "running"  # running | failed
    action: str = "promote"  # promote | park

    def fields(self) -> dict[str, str]:
        return {
            "target": self.target,
            "owner": self.owner,
            "beat": str(self.beat),
            "state": self.state,
            "action": self.action,
        }

    @classmethod
    def parse(cls, fields: Mapping[str, str]) -> LockRecord | None:
        """The record in a lock's labels or tags; None when it is not one this code wrote."""
        target, owner, beat = fields.get("target"), fields.get("owner"), fields.get("beat", "")
        state, action = fields.get("state"), fields.get("action")
        if target not in NODES or not owner or not beat.isdigit():
            return None
        if state not in STATES or action not in ACTIONS:
            return None
        return cls(target, owner, int(beat), state, action)


@dataclass(frozen=True)
class StoredLock:
    id: str
    record: LockRecord | None  # None: the resource exists, but its labels are not a record


class PromotionLock:
    """One run's hold on the stack's lock."""

    def __init__(
        self,
        cloud: Cloud,
        owner: str,
        *,
        ttl: float = 120.0,
        settle: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
        log: Callable[[str], None] = lambda _m: None,
        call: Callable[[str, Callable[[], T]], T] | None = None,
    ):
        self.cloud = cloud
        self.owner = owner
        self.ttl = ttl
        self.settle = settle
        self.sleep = sleep
        self.log = log
        # call(what, fn): one cloud request with the caller's retries and budget.
        self._call = call or (lambda what, fn: retrying(what, fn, sleep=sleep, log=log))
        # Deleting or marking the lock at the end runs even when the budget is spent: one
        # short retry, so a run out of time still leaves a lock that says what happened.
        self._final = lambda what, fn: retrying(what, fn, attempts=2, log=log)
        self.id: str | None = None
        self.record: LockRecord | None = None

    @property
    def held(self) -> bool:
        return self.id is not None

    def _now(self) -> int:
        return int(self._call("reading the cloud's clock", self.cloud.now))

    def _read(self) -> StoredLock | None:
        return self._call("reading the promotion lock", self.cloud.read_lock)

    def _busy(self, record: LockRecord, age: int, action: str) -> str:
        since = f"last heartbeat {age}s ago by the cloud's clock"
        if record.action == "park":
            what = f"{record.owner} is parking the standby ({since})"
        else:
            what = (
                f"another promotion to {record.target} is in progress (by {record.owner}, {since})"
            )
        if action == "park":
            return f"{what}; let it finish, then park again"
        return f"{what}; wait for it, or pass --takeover if it died"

    def acquire(
        self, target: str, *, action: str = "promote", takeover: bool = False
    ) -> LockRecord | None:
        """Take the lock or raise PromotionRefused. Returns the record it replaced (a failed
        or expired one, or the live one taken over), which a promotion resumes."""
        replaced: LockRecord | None = None
        for _round in range(ROUNDS):
            record = LockRecord(target, self.owner, self._now(), "running", action)
            lock_id = self._call(
                "taking the promotion lock", lambda r=record: self.cloud.create_lock(r)
            )
            if lock_id is None:
                existing = self._read()
                if existing is None:
                    continue  # released in between: try again
                if not self._ours(existing):
                    replaced = self._judge(existing, action, takeover) or replaced
                    takeover = False  # once: a second live lock belongs to yet another run
                    gone = existing.id
                    self._call("removing the old lock", lambda i=gone: self.cloud.delete_lock(i))
                    continue
                lock_id = existing.id  # ours: the answer to our create was lost
            self.id, self.record = lock_id, record
            if self.settle > 0:
                self.sleep(self.settle)
            back = self._read_back(lock_id)
            if back is None or back.id != lock_id or not self._ours(back):
                self.id = self.record = None
                self._drop(lock_id)
                holder = back.record.owner if back and back.record else "nobody"
                raise PromotionRefused(
                    "another run took the promotion lock at the same moment (it is held by "
                    f"{holder} now); this run changed nothing"
                )
            return replaced
        raise PromotionRefused(
            f"the lock {self.cloud.lock_name} changed hands {ROUNDS} times while this run tried "
            "to take it: other runs are busy; try again in a minute"
        )

    def _read_back(self, lock_id: str) -> StoredLock | None:
        """The lock as read after the settle. A read that finds no lock at all is repeated a
        few times (after another settle each): an eventually consistent API (EC2's describe
        calls) may not list a resource created a moment ago, and a run that gave up on its
        own fresh lock would leave it to block everyone for lockTtl."""
        back = self._read()
        for _ in range(READBACK_MISSES):
            if back is not None:
                break
            self.sleep(max(self.settle, 0.1))
            back = self._read()
        return back

    def _drop(self, lock_id: str) -> None:
        """Delete the lock with our id after losing the read-back, best effort (it may be
        gone already: the winner deleted it). Never deletes another run's lock."""
        try:
            self._final("removing this run's lock", lambda: self.cloud.delete_lock(lock_id))
        except CloudError as exc:
            self.log(
                f"could not remove this run's lock: {exc}; it expires {int(self.ttl)}s after "
                "its heartbeat"
            )

    def _judge(self, existing: StoredLock, action: str, takeover: bool) -> LockRecord | None:
        """Refuse a live lock (unless taking over); else say why it goes and return the
        promotion record it held, for resuming."""
        found = existing.record
        if found is None:
            if not takeover:
                raise PromotionRefused(
                    f"the lock {self.cloud.lock_name} exists but holds no promotion record; "
                    "delete it if no promotion runs, or pass --takeover"
                )
            self.log(f"taking over the unreadable lock {self.cloud.lock_name} (--takeover)")
            return None
        age = max(0, self._now() - found.beat)
        live = found.state == "running" and age < self.ttl
        if live and not takeover:
            raise PromotionRefused(self._busy(found, age, action))
        if live:
            self.log(f"taking over the lock from {found.owner} (--takeover)")
        elif found.state == "failed":
            self.log(f"the {found.action} by {found.owner} failed; replacing its lock")
        else:
            self.log(
                f"the lock of {found.owner} has had no heartbeat for {age}s by the cloud's "
                f"clock (lockTtl {int(self.ttl)}s); replacing it"
            )
        return found if found.action == "promote" else None

    def _ours(self, stored: StoredLock) -> bool:
        return stored.record is not None and stored.record.owner == self.owner

    def check(self, before: str, target: str | None = None) -> None:
        """Write a heartbeat to our lock by its id, then read the lock back; raise
        PromotionTakenOver when it is not ours.

        The write comes first: Hetzner answers 404 for a lock deleted by a takeover, and a
        cloud that accepts the write anyway (EC2 may tag a deleted key pair) is caught by the
        read-back after it. Reading first would leave a window between the read and the write
        in which a takeover goes unnoticed for a whole step."""
        if self.id is None or self.record is None:
            raise PromotionTakenOver(
                f"this run no longer holds the lock; it stopped before {before}"
            )
        lock_id = self.id
        record = replace(self.record, beat=self._now(), target=target or self.record.target)
        written = self._call(
            "writing the lock's heartbeat", lambda: self.cloud.update_lock(lock_id, record)
        )
        back = self._read()  # also after a refused write: to say who holds the lock now
        if not written or back is None or back.id != lock_id or not self._ours(back):
            self.id = None
            holder = back.record.owner if back and back.record and not self._ours(back) else None
            who = f"taken over by {holder}" if holder else "removed by another run"
            raise PromotionTakenOver(
                f"the promotion lock was {who}; this run stopped before {before}"
            )
        self.record = record

    def release(self, restore: LockRecord | None = None) -> None:
        """Delete the lock (success, refusal). With `restore`, write that record into our lock
        instead (park leaves a failed promotion's record as it found it). The restore is a
        write by our lock's id: if another run took the lock over meanwhile, our lock is gone
        and the old record is not brought back over a newer run's work."""
        if self.id is None:
            return
        lock_id, self.id = self.id, None
        try:
            if restore is None:
                self._final("removing the promotion lock", lambda: self.cloud.delete_lock(lock_id))
            elif not self._final(
                "restoring the promotion record",
                lambda: self.cloud.update_lock(lock_id, restore),
            ):
                self.log(
                    "the lock was taken over meanwhile: the record of "
                    f"{restore.owner}'s {restore.action} stays gone"
                )
        except CloudError as exc:  # the work is done; a left-over lock expires after lockTtl
            self.log(
                f"could not remove the lock {self.cloud.lock_name}: {exc}; it expires "
                f"{int(self.ttl)}s after its last heartbeat"
            )

    def fail(self, target: str | None = None, *, attempts: int = 2) -> bool:
        """Mark the lock failed (with `target`, if given): a rerun may replace it at once and
        resumes toward its target. Best effort, `attempts` tries per request; whether the
        lock now says failed."""
        if self.id is None or self.record is None:
            return False
        lock_id, self.id = self.id, None

        def final(what: str, fn: Callable[[], T]) -> T:
            return retrying(what, fn, attempts=attempts, log=self.log)

        try:
            now = int(final("reading the cloud's clock", self.cloud.now))
            target = target or self.record.target
            record = replace(self.record, state="failed", beat=now, target=target)
            return final(
                "marking the promotion failed", lambda: self.cloud.update_lock(lock_id, record)
            )
        except CloudError as exc:
            self.log(
                f"could not mark the lock {self.cloud.lock_name} failed: {exc}; it expires "
                f"{int(self.ttl)}s after its last heartbeat"
            )
            return False
