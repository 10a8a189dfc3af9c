"""The heartbeat watchdog: probe the app on its floating IP, promote after K failures in a row."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from blueprints.failover.cloud import retrying
from blueprints.failover.promote import Options, Promotion, Result


@dataclass
class WatchResult:
    probes: int
    failures_in_a_row: int
    promoted: Result | None


def watch(
    promotion: Promotion,
    active_in_config: Callable[[], str],
    *,
    interval: float,
    failures: int,
    duration: float | None = None,
    options: Options | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    log: Callable[[str], None] = lambda _m: None,
) -> WatchResult:
    """Probe every `interval` seconds; after `failures` consecutive failures, promote.

    With `duration`, stop after that long (a scheduled CI job); otherwise run until a promotion
    happened. The server's status from the cloud API is logged beside each failure, but only
    the app's own health check decides: a hung VM still reports "running".
    """
    cloud = promotion.cloud
    started = clock()
    probes = 0
    in_a_row = 0
    while True:
        snap = retrying("reading the stack's state", cloud.snapshot, sleep=sleep, log=log)
        probes += 1
        if promotion.probe(snap.floating_ip):
            if in_a_row:
                log(f"healthy again at {snap.floating_ip} after {in_a_row} failed probe(s)")
            in_a_row = 0
        else:
            in_a_row += 1
            holder = snap.ip_holder or "no server"
            status = snap.nodes[snap.ip_holder].status if snap.ip_holder else "-"
            log(
                f"probe {probes}: no healthy answer at {snap.floating_ip} ({holder}, cloud "
                f"status {status}); {in_a_row}/{failures}"
            )
            if in_a_row >= failures:
                log(f"{failures} failed probes in a row: promoting")
                result = promotion.run(active_in_config(), options or Options())
                return WatchResult(probes, in_a_row, result)
        # A fixed cadence: a probe that waited for its timeout does not delay the next one.
        next_probe = started + probes * interval
        if duration is not None and next_probe - started >= duration:
            return WatchResult(probes, in_a_row, None)
        sleep(max(0.0, next_probe - clock()))
