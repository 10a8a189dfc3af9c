"""What a promotion needs from a cloud: a snapshot of the single-vm stack, awaited actions, the
cloud's clock and one uniquely named resource that serves as the promotion lock.

Every action method returns only once the cloud reports it finished, and is safe to call when
its effect is already in place. Transient API failures (rate limits, locks held by a running
action, 5xx) are retried with backoff by `retrying`; anything else surfaces as CloudError.
"""

from __future__ import annotations

import random
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from blueprints.failover.lock import LockRecord, StoredLock

NODES = ("primary", "spare")
T = TypeVar("T")


class CloudError(Exception):
    """The cloud refused or failed an operation; the message is for the operator."""


class TransientCloudError(CloudError):
    """Worth retrying: the resource is locked by a running action, a rate limit, a 5xx."""


class OutOfTime(CloudError):
    """The command's time budget ran out while waiting for the cloud or before a retry."""


class PromotionRefused(CloudError):
    """Nothing was changed: the situation needs a decision by a person (or --force)."""


class PromotionTakenOver(PromotionRefused):
    """Another run took the promotion lock (--takeover); this run stops before its next step."""


class PromotionFailed(CloudError):
    """A step could not complete; what was moved so far is consistent and a rerun resumes."""


@dataclass(frozen=True)
class Node:
    name: str  # primary | spare
    id: str
    # "running" or "off"; anything in between ("starting", "stopping", "pending") as reported.
    status: str
    address: str  # public IPv4 of the server itself (not the floating IP)

    @property
    def running(self) -> bool:
        return self.status == "running"

    @property
    def off(self) -> bool:
        return self.status in ("off", "stopped")


@dataclass(frozen=True)
class Snapshot:
    nodes: dict[str, Node]
    volume_holder: str | None  # node the data volume is attached to
    ip_holder: str | None  # node the floating IP points at
    floating_ip: str
    extra: dict[str, str] = field(default_factory=dict)

    def other(self, node: str) -> str:
        return NODES[1 - NODES.index(node)]


def no_limit() -> float | None:
    return None


def no_tick() -> None:
    return None


class Cloud(ABC):
    """A single-vm stack's two servers, data volume and floating IP on one cloud."""

    #: Seconds left for the running command (None: unbounded). A promotion with a budget sets
    #: it; the drivers' waits for an action stop with OutOfTime when it reaches zero.
    time_left: Callable[[], float | None] = staticmethod(no_limit)
    #: Called by the drivers on every poll while they wait for an action (a force-stop of a
    #: hung EC2 instance can take minutes). A promotion points it at its rate-limited lock
    #: heartbeat, so a long wait neither lets the lock expire nor hides a takeover: a
    #: PromotionTakenOver raised here ends the wait and the run.
    tick: Callable[[], None] = staticmethod(no_tick)

    @abstractmethod
    def snapshot(self) -> Snapshot: ...

    @abstractmethod
    def power_off(self, node: str) -> None:
        """Hard power-off (fencing: the node may be hung); returns once it is off."""

    @abstractmethod
    def power_on(self, node: str) -> None:
        """Returns once the cloud reports the server running (the OS may still be booting)."""

    @abstractmethod
    def detach_volume(self, node: str) -> None: ...

    @abstractmethod
    def attach_volume(self, node: str) -> None: ...

    @abstractmethod
    def unassign_ip(self) -> None: ...

    @abstractmethod
    def assign_ip(self, node: str) -> None: ...

    # -- the promotion lock (blueprints.failover.lock) ---------------------------------------

    @property
    @abstractmethod
    def lock_name(self) -> str:
        """The lock resource's name, unique per stack: blueprints-lock-<app>-<stack>."""

    @abstractmethod
    def now(self) -> float:
        """The cloud API's clock (the Date header of a fresh response), in unix seconds."""

    @abstractmethod
    def create_lock(self, record: LockRecord) -> str | None:
        """Create the lock resource, atomically: its id, or None when the name is taken."""

    @abstractmethod
    def read_lock(self) -> StoredLock | None:
        """The lock resource by name (None when there is none)."""

    @abstractmethod
    def update_lock(self, lock_id: str, record: LockRecord) -> bool:
        """Rewrite the record of the lock with this id; False when the cloud says that lock is
        gone. (EC2 may accept tags for a deleted key pair: the read-back before every step,
        not this answer, is what tells a run it lost the lock.)"""

    @abstractmethod
    def delete_lock(self, lock_id: str) -> None:
        """Delete the lock with this id (never another one); a lock already gone is fine."""


def date_header(value: str, api: str) -> float:
    """Unix seconds from an HTTP Date header; CloudError naming `api` when it is no date."""
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise CloudError(
            f"{api} answered with a Date header that is not a date ({value[:40]!r}); the "
            "promotion lock needs the cloud's clock"
        )
    return parsed.timestamp()


def backoff(attempt: int, base: float = 0.5, cap: float = 20.0) -> float:
    """Exponential backoff with full jitter: spreads retries of two clients apart."""
    return random.uniform(0, min(cap, base * 2**attempt))


def retrying(
    what: str,
    call: Callable[[], T],
    *,
    attempts: int = 8,
    sleep: Callable[[float], None] = time.sleep,
    delay: Callable[[int], float] = backoff,
    log: Callable[[str], None] = lambda _m: None,
    time_left: Callable[[], float | None] = no_limit,
) -> T:
    """Run `call`, retrying TransientCloudError with backoff; other errors pass through.

    With `time_left`, no attempt starts after it reached zero and no pause outlasts it: the
    caller's budget ends the retries with OutOfTime."""
    for attempt in range(attempts):
        left = time_left()
        if left is not None and left <= 0:
            raise OutOfTime(f"{what}: no time left")
        try:
            return call()
        except TransientCloudError as exc:
            if attempt == attempts - 1:
                raise CloudError(f"{what}: still failing after {attempts} attempts: {exc}") from exc
            pause = delay(attempt)
            left = time_left()
            if left is not None and left <= pause:
                raise OutOfTime(f"{what}: {exc}; no time left to retry") from exc
            log(f"{what}: {exc}; retrying in {pause:.1f}s")
            sleep(pause)
    raise AssertionError("unreachable")
