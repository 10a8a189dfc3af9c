"""What the failover scenarios need from an emulated cloud, for either driver.

A World wraps a Cloud driver talking to a local emulator, plus the test's view of the app:
the app answers on a node exactly when that node runs and holds the data volume (all app
units need /srv/data), unless a scenario breaks the node on purpose.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from blueprints.failover.cloud import Cloud, Snapshot
from blueprints.failover.promote import Options, Promotion
from blueprints.failover.record import write_active_to_file


class Killed(BaseException):
    """The promoter process dies here (not an error it could handle)."""


class FakeClock:
    """Time that passes only when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.001)


@dataclass
class World:
    cloud: Cloud
    # Emulator-side controls, filled in by the driver's fixture:
    inject: Callable[
        [str, str], None
    ]  # inject(operation, kind): next call fails (kind: 5xx|locked)
    set_power: Callable[[str, bool], None]  # flip a server's power behind the promoter's back
    stack_file: Path
    broken: set[str] = field(default_factory=set)  # nodes whose app never answers
    clock: FakeClock = field(default_factory=FakeClock)
    checks: int = 0
    log: list[str] = field(default_factory=list)

    def snapshot(self) -> Snapshot:
        return self.cloud.snapshot()

    def check_invariants(self, where: str) -> Snapshot:
        snap = self.snapshot()
        self.checks += 1
        assert self.attachments() <= 1, f"{where}: the volume has two holders"
        assert snap.ip_holder in (None, snap.volume_holder), (
            f"{where}: the floating IP points at {snap.ip_holder}, the volume is on "
            f"{snap.volume_holder}"
        )
        return snap

    def attachments(self) -> int:
        """How many servers the emulator says hold the volume (not the driver's reading)."""
        raise NotImplementedError

    def probe(self, address: str) -> bool:
        snap = self.snapshot()
        node = snap.ip_holder if address == snap.floating_ip else None
        if node is None:
            node = next((n for n, s in snap.nodes.items() if s.address == address), None)
        return (
            node is not None
            and node not in self.broken
            and snap.nodes[node].running
            and snap.volume_holder == node
        )

    def promotion(self, owner: str = "test-1", after_step=None) -> Promotion:
        def record(node: str) -> str:
            write_active_to_file(self.stack_file, node)
            return f"recorded {node}"

        def after(step: str) -> None:
            self.check_invariants(f"after {step}")
            if after_step:
                after_step(step)

        return Promotion(
            self.cloud,
            self.probe,
            record,
            owner=owner,
            clock=self.clock.time,
            sleep=self.clock.sleep,
            log=self.log.append,
            after_step=after,
            retry_delay=lambda _n: 0.01,
        )

    def options(self, **kw) -> Options:
        kw.setdefault("health_timeout", 60.0)
        kw.setdefault("health_interval", 1.0)
        return Options(**kw)

    def active_in_file(self) -> str:
        for line in self.stack_file.read_text().splitlines():
            if line.strip().startswith("blueprints:active:"):
                return line.split(":", 2)[2].strip()
        return "primary"
