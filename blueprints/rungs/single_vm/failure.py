"""The single-vm rung's failure model: the watchdog notices the primary's death, `blueprints
promote` moves the volume and the floating IP to the spare (warm: running; cold: booted first).

`single_vm_recovery` is the one recovery figure: `blueprints compare`, the README,
scripts/drill.py and the real-node drill (with the operation times it measured) all take it from
here, with the cloud operation times of blueprints.failure.CLOUD_TIMES.
"""

from __future__ import annotations

from collections.abc import Mapping

from blueprints.failure import (
    FailureModel,
    Scenario,
    Step,
    _tenths,
    cloud_times,
    health_wait,
)
from blueprints.settings import StackSettings
from blueprints.spec import AppSpec

# The promotion's own calls to the cloud while the app is down, each costing `api`, as
# blueprints/failover/promote.py and lock.py make them: taking the lock (the cloud's clock,
# create, read back after LOCK_SETTLE seconds) 3; the first state read 1; before each of its
# six steps (boot, fence, detach, attach, healthy, address) the lock checked (read, the
# cloud's clock, heartbeat) and the state read, 4 each; the state read again after the
# power-off, 1. The actions themselves (power, volume, IP) are priced by their own times.
# tests/test_failover.py counts a promotion's calls on both clouds against this number.
LOCK_SETTLE = 0.5
PROMOTION_CALLS = 3 + 1 + 6 * 4 + 1


def single_vm_recovery(
    settings: StackSettings, app: AppSpec, times: Mapping[str, float] | None = None
) -> Scenario:
    """The primary dies: the app's downtime until it answers from the spare, step by step.

    The spare is `settings.spare` (warm: running without the volume, the release's images
    pulled; cold: powered off). `times` replaces any of the cloud's operation times (see
    OPERATIONS), e.g. with those a drill measured. The worst case of the watchdog's rule and
    the promotion as written: the primary dies just after a good probe (a cycle starts every
    `watchInterval`, or when the previous one ends if a probe takes longer), its VM hangs (the
    cloud still reports it running, so the promotion probes it once more before acting), and
    the promotion's own cloud calls (PROMOTION_CALLS) are counted in one step.
    """
    t = cloud_times(settings.cloud, times)
    cold = settings.spare == "cold"
    interval, failures, timeout = (
        settings.watch_interval,
        settings.watch_failures,
        settings.probe_timeout,
    )
    fence_and_move = t["power_off"] + t["detach"] + t["attach"]
    steps = [
        Step(
            f"watchdog: {failures} failed probes, {interval}s apart, {timeout}s timeout",
            interval + (failures - 1) * max(interval, timeout) + timeout,
        ),
        Step(
            f"host checked on several paths at once, each up to the {timeout}s timeout",
            max(timeout, t["api"]),
        ),
        Step(
            f"the promotion's own cloud calls: {PROMOTION_CALLS} of {t['api']:g}s (lock taken, "
            f"read back after {LOCK_SETTLE:g}s, checked before each step; the state read)",
            _tenths(PROMOTION_CALLS * t["api"] + LOCK_SETTLE),
        ),
        Step("the promotion probes the primary once more (a hung VM reports running)", timeout),
    ]
    if cold:
        # The promotion powers the spare on first and fences/moves the volume while it boots.
        steps += [
            Step(
                "spare boots while the primary is fenced and the volume moves",
                max(t["boot"], fence_and_move),
            ),
            Step("images released since the spare was parked are pulled on it", t["pull"]),
        ]
    else:
        steps += [
            Step("primary fenced (powered off)", t["power_off"]),
            Step("volume detached from the primary", t["detach"]),
            Step("volume attached to the running spare", t["attach"]),
        ]
    steps += [
        Step("app starts on the spare (mount, release activation, containers)", t["app_start"]),
        Step("first passing health check", health_wait(app)),
        Step("floating IP moves to the spare", t["ip_move"]),
    ]
    return Scenario("primary", tuple(steps), True, "app unreachable until the spare answers")


def failure_model(
    settings: StackSettings, app: AppSpec, times: Mapping[str, float]
) -> FailureModel:
    """The primary or the spare dies: who notices, who recovers, and how long the app is down."""
    mode = settings.spare
    if mode == "cold":
        recovers = (
            "`blueprints promote` (boot the parked spare, fence the primary, move the volume, "
            "start the app, move the IP)"
        )
        spare = Scenario("spare (cold, parked)", (), True, "nothing; the spare was off")
        watchdog = "a service on any machine but the primary"
    else:
        recovers = (
            "`blueprints promote` (fence the primary, move the volume to the running spare, "
            "start the app there, move the IP)"
        )
        spare = Scenario(
            "spare (warm)",
            (),
            True,
            "nothing for users; no standby (nor a watchdog running there) until it is back",
        )
        watchdog = "a service on the warm spare or any machine but the primary"
    return FailureModel(
        detects="`blueprints watch`: failed health probes, then the host checked on several "
        "paths (public address, private network, floating IP, cloud status)",
        recovers=recovers,
        scenarios=(single_vm_recovery(settings, app, times), spare),
        single_points=(
            "the watchdog process (run it anywhere but the primary)",
            "the data volume (one location, no replica)",
            "the cloud API during a promotion",
        ),
        outside=(f"blueprints watch (the watchdog: {watchdog})",),
    )
