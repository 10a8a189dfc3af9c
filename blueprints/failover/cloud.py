"""What a promotion needs from a cloud: a snapshot of the single-vm stack and awaited actions.

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
from typing import TypeVar

NODES = ("primary", "spare")
T = TypeVar("T")


class CloudError(Exception):
    """The cloud refused or failed an operation; the message is for the operator."""


class TransientCloudError(CloudError):
    """Worth retrying: the resource is locked by a running action, a rate limit, a 5xx."""


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
    # Cloud-side promotion record ("<target>.<unix time>.<owner>") or None.
    lock: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def other(self, node: str) -> str:
        return NODES[1 - NODES.index(node)]


class Cloud(ABC):
    """A single-vm stack's two servers, data volume and floating IP on one cloud."""

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

    @abstractmethod
    def write_lock(self, value: str | None) -> None:
        """Store (or clear, with None) the promotion record on the data volume."""


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
) -> T:
    """Run `call`, retrying TransientCloudError with backoff; other errors pass through."""
    for attempt in range(attempts):
        try:
            return call()
        except TransientCloudError as exc:
            if attempt == attempts - 1:
                raise CloudError(f"{what}: still failing after {attempts} attempts: {exc}") from exc
            pause = delay(attempt)
            log(f"{what}: {exc}; retrying in {pause:.1f}s")
            sleep(pause)
    raise AssertionError("unreachable")
