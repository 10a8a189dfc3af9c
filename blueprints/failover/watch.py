"""The watchdog: probe the app on its floating IP; on repeated failure, ask the host itself.

The rule (README: Failover):
1. Every `interval` seconds, probe the app's health URL on the floating IP (on the IP holder's
   own public address when the floating IP is an address of this machine: on Hetzner the warm
   spare has it on eth0, and a probe of it would never leave the spare).
2. After `failures` failed probes in a row, check the active node's host on several paths
   (blueprints.failover.hostcheck) and read the cloud afresh. The active node is the cloud's
   (the volume's holder: `active_node`), never only the stack file's.
3. At least two paths say the host is unreachable: fence and promote away from it (the
   `promote(dead)` callable wraps blueprints.failover.promote with its budget and lock, and
   promotes to the other node: the watchdog's judgement, not a stale record or a second look
   at the app, decides the direction; a late second watchdog finds that done and only
   records). Otherwise it is an **alert**:
   the app fails on a live host (a bad release, a stopped unit), which the spare would share;
   one log line and one notification per incident, one more when the app recovers. While the
   app keeps failing the host is checked again every cycle, so a host that dies during an
   alert is still promoted away from.
4. Keep watching: after a promotion the watchdog watches the new active node.

Bounds: a cycle is one probe (at most probeTimeout) and, at the threshold, the host checks and
one cloud read at the same time (at most max(probeTimeout, apiTimeout)); a cloud read that is
slower is abandoned (its vote is "unknown"), never waited for. In steady state the watchdog
makes no cloud API request at all: the floating IP does not change, so one read at start
suffices until a probe fails. Output: one line per state change, never one per probe.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from blueprints.failover import health
from blueprints.failover.cloud import CloudError, PromotionTakenOver, Snapshot
from blueprints.failover.hostcheck import HostCheck, Verdict, Vote, cloud_vote
from blueprints.failover.promote import PromotionRefused, active_node, front_address

# After a promotion was refused or failed, wait this long before trying again (another
# promoter may hold the lock; a failed one is resumed, not hammered).
PROMOTE_RETRY = 60.0
# While the cloud cannot be read at start, retry with backoff up to this.
BLIND_RETRY_MAX = 60.0

# Exit status of a bounded watch (`--for`), most severe first.
EXIT_OK = 0
EXIT_FAILED = 1  # the stack could not be read, or a promotion failed
EXIT_REFUSED = 3  # a promotion was refused (another promotion holds the lock, ...) or stopped
EXIT_ALERT = 4  # the app failed on a live host: a person must look; nothing was moved


@dataclass
class WatchResult:
    probes: int = 0
    failures_in_a_row: int = 0
    promotions: list[Any] = field(default_factory=list)  # promote.Result, in order
    alerts: int = 0
    refusals: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    blind: str | None = None  # the cloud was never read: why

    @property
    def promoted(self) -> Any | None:
        return self.promotions[-1] if self.promotions else None

    @property
    def exit_code(self) -> int:
        if self.blind is not None or self.failures:
            return EXIT_FAILED
        if self.alerts:
            return EXIT_ALERT
        if self.refusals:
            return EXIT_REFUSED
        return EXIT_OK


def bounded(call: Callable[[], Any], timeout: float) -> tuple[Any, str | None]:
    """(result, None), or (None, why) when `call` raised or took longer than `timeout`.

    The call runs in a daemon thread; one that overruns is abandoned (its own socket timeouts
    end it later) and never delays the caller or the process's exit."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = call()
        except CloudError as exc:
            box["error"] = str(exc)
        except Exception as exc:  # reported as a sentence; the watch goes on
            box["error"] = f"{exc.__class__.__name__}: {exc}"

    t = threading.Thread(target=run, daemon=True, name="bounded cloud read")
    t.start()
    t.join(timeout)
    if "value" in box:
        return box["value"], None
    return None, box.get("error") or f"no answer within {timeout:g}s"


class Watchdog:
    def __init__(
        self,
        cloud: Any,
        check: Callable[[str], tuple[bool, str]],
        promote: Callable[[str], Any],
        hostcheck: HostCheck,
        *,
        configured: str,
        interval: float,
        failures: int,
        api_timeout: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        log: Callable[[str], None] = lambda _m: None,
        notify: Callable[[str, str], None] = lambda _event, _text: None,
        on_promoted: Callable[[Any], None] = lambda _r: None,
        local: Callable[[str], bool] | None = None,
    ):
        self.cloud = cloud
        self.check = check  # check(address) -> (healthy, what was seen)
        # promote(dead node) runs one promotion away from it; raises PromotionRefused /
        # CloudError (anything else is reported as a failure too)
        self.promote = promote
        self.hostcheck = hostcheck
        self.configured = configured  # the stack file's blueprints:active (fallback only)
        self.interval = interval
        self.failures = failures
        self.api_timeout = api_timeout
        self.clock = clock
        self.sleep = sleep
        self.log = log
        self.notify = notify  # notify(event, text): alert|recovered|promoted|failed|refused|...
        self.on_promoted = on_promoted
        # local(address) -> an address of this machine; None: health.is_local_address
        self.local = local
        self._local_seen: dict[str, bool] = {}
        self.result = WatchResult()
        self.snap: Snapshot | None = None
        self.in_a_row = 0
        self.incident: set[str] = set()  # what was said in the current incident
        self.verdict: str | None = None  # "alert" | "dead" in the current incident
        self.next_promotion = 0.0
        self.blind_why: str | None = None

    # -- cloud -----------------------------------------------------------------------------

    def _read(self) -> tuple[Snapshot | None, str | None]:
        return bounded(self.cloud.snapshot, self.api_timeout)

    def _active(self, snap: Snapshot) -> str:
        return active_node(snap, self.configured)

    def _is_local(self, address: str) -> bool:
        """Whether `address` is one of this machine's (asked once per address)."""
        if address not in self._local_seen:
            self._local_seen[address] = (self.local or health.is_local_address)(address)
        return self._local_seen[address]

    def _front(self, snap: Snapshot) -> str:
        """Where the app is probed: the floating IP, or the holder's own address when the
        floating IP is an address of this machine."""
        return front_address(snap, self.configured, self._is_local)

    def _first_read(self) -> bool:
        snap, why = self._read()
        if snap is None:
            if self.blind_why is None:
                self.log(f"cloud: cannot read the stack ({why}); retrying")
                self.notify("blind", f"the watchdog cannot read the stack from the cloud: {why}")
            self.blind_why = why
            return False
        if self.blind_why is not None:
            self.log("cloud: the stack can be read again")
            self.notify("sighted", "the watchdog reads the stack from the cloud again")
        self.blind_why = None
        self.snap = snap
        active = self._active(snap)
        front = self._front(snap)
        if front != snap.floating_ip:
            self.log(
                f"watching the app at {front}, the own address of {snap.ip_holder or active} "
                f"(the floating IP {snap.floating_ip} is an address of this machine; the cloud "
                f"says {active} is active)"
            )
        else:
            self.log(
                f"watching the app at {front} (floating IP on "
                f"{snap.ip_holder or 'no server'}; the cloud says {active} is active)"
            )
        if active != self.configured:
            holds = "the data volume" if snap.volume_holder == active else "the floating IP"
            self.log(
                f"note: the stack file says {self.configured} is active, the cloud says "
                f"{active} (it holds {holds}); the cloud is followed"
            )
        return True

    # -- one cycle -------------------------------------------------------------------------

    def _host_verdict(self, snap: Snapshot) -> tuple[Snapshot, Verdict]:
        """Check the active node's host and read the cloud at the same time (both bounded)."""
        box: dict[str, Any] = {}
        reader = threading.Thread(
            target=lambda: box.update(zip(("snap", "why"), self._read(), strict=True)),
            daemon=True,
        )
        reader.start()
        node = snap.nodes[self._active(snap)]
        votes = self._votes(snap, node.name)
        reader.join(self.api_timeout + 1)
        fresh: Snapshot | None = box.get("snap")
        if fresh is not None and self._active(fresh) != node.name:
            # The cloud moved on (someone promoted): check the node that is active now.
            node = fresh.nodes[self._active(fresh)]
            votes = self._votes(fresh, node.name)
        if fresh is not None:
            self.snap = fresh
            votes.append(cloud_vote(fresh.nodes[node.name]))
        else:
            votes.append(cloud_vote(None, box.get("why") or "not read in time"))
        return (fresh or snap), Verdict(node.name, tuple(votes))

    def _votes(self, snap: Snapshot, name: str) -> list[Vote]:
        """The TCP paths to `name`'s host; the floating IP is left out when it is an address
        of this machine (it would answer from here, whatever the host does). The other node is
        the control (hostcheck) when it is not this machine. Its status in `snap` may be old (the
        watchdog reads the cloud beside these checks, not before them): a control that is off
        simply does not answer, so it is asked whatever that status says."""
        fip = "" if self._is_local(snap.floating_ip) else snap.floating_ip
        other = snap.nodes[snap.other(name)]
        usable = other.address and not self._is_local(other.address)
        standby = other if usable else None
        return self.hostcheck.votes(snap.nodes[name], fip, snap.ip_holder == name, standby)

    def _event(self, key: str, line: str, *, every: bool = False) -> None:
        """Log `line` and notify it, once per incident for `key` (with `every`, log each
        time but still notify once)."""
        first = key not in self.incident
        self.incident.add(key)
        if first or every:
            self.log(line)
        if first:
            self.notify(key, line)

    def _healthy(self, address: str) -> None:
        if self.incident:
            line = f"recovered: the app answers at {address} again"
            self.log(line)
            if self.incident & {"alert", "failed", "refused", "stopped", "promoted"}:
                self.notify("recovered", line)
        elif self.in_a_row:
            self.log(f"healthy again at {address} after {self.in_a_row} failed probe(s)")
        self.in_a_row = 0
        self.incident = set()
        self.verdict = None

    def _failing(self, snap: Snapshot, seen: str) -> None:
        self.in_a_row += 1
        probed = self._front(snap)
        if self.in_a_row == 1:
            self.log(
                f"app: no healthy answer at {probed} ({seen}); checking the host "
                f"after {self.failures} failed probe(s) in a row"
            )
        if self.in_a_row < self.failures:
            return
        snap, verdict = self._host_verdict(snap)
        if self._front(snap) != probed:
            # Probing a node's own address (the floating IP is local): the cloud says the app
            # moved (someone promoted); probe it where it is now before judging anything.
            self.log(f"the cloud moved the app to {self._active(snap)}; probing it there")
            self.in_a_row = 0
            return
        node = verdict.node
        if not verdict.dead:
            if self.verdict != "alert":
                self.verdict = "alert"
                if "alert" not in self.incident:
                    self.result.alerts += 1
                self._event(
                    "alert",
                    f"alert: the app fails at {probed} ({seen}) but {node}'s host "
                    f"answers ({verdict.describe()}); not promoting: what fails the app on a "
                    "live host (a release, a unit, a full disk) would fail it on the spare too",
                )
            return
        if self.verdict != "dead":
            self.verdict = "dead"
            self.log(f"host {node} is unreachable ({verdict.describe()})")
        if self.clock() < self.next_promotion:
            return
        self._promote(node)

    def _promote(self, node: str) -> None:
        """Promote away from `node`, judged dead. Whatever goes wrong is one sentence in the
        log (and a notification); the watch goes on."""
        self.log(f"promoting away from {node}")
        try:
            result = self.promote(node)
        except PromotionTakenOver as exc:
            self.result.refusals.append(str(exc))
            self.next_promotion = self.clock() + PROMOTE_RETRY
            self._event("stopped", f"promotion stopped: {exc}", every=True)
            return
        except PromotionRefused as exc:
            self.result.refusals.append(str(exc))
            self.next_promotion = self.clock() + PROMOTE_RETRY
            self._event("refused", f"promotion refused: {exc}", every=True)
            return
        except Exception as exc:  # CloudError, or a bug: one sentence, and keep watching
            why = str(exc) if isinstance(exc, CloudError) else f"{exc.__class__.__name__}: {exc}"
            self.result.failures.append(why)
            self.next_promotion = self.clock() + PROMOTE_RETRY
            self._event("failed", f"promotion failed: {why}", every=True)
            return
        self.result.promotions.append(result)
        self.incident.add("promoted")
        self.on_promoted(result)
        # The promotion recorded its target in the stack file: the fallback follows it.
        self.configured = getattr(result, "target", self.configured)
        self.in_a_row = 0
        self.verdict = None
        snap, _why = self._read()
        if snap is not None:
            self.snap = snap
        target = getattr(result, "target", "?")
        self.log(f"watching the app on {target} now")

    def cycle(self) -> None:
        if self.snap is None and not self._first_read():
            return
        assert self.snap is not None
        self.result.probes += 1
        address = self._front(self.snap)
        healthy, seen = self.check(address)
        if healthy:
            self._healthy(address)
        else:
            self._failing(self.snap, seen)
        self.result.failures_in_a_row = self.in_a_row

    # -- the loop --------------------------------------------------------------------------

    def run(self, duration: float | None = None) -> WatchResult:
        """Watch for `duration` seconds, or forever (None). A cycle starts every `interval`
        seconds (a slow cycle delays the next, never stacks them); while the cloud cannot be
        read at start, reads are retried with backoff."""
        start = self.clock()
        end = None if duration is None else start + duration
        tick = start
        blind_wait = self.interval
        while True:
            self.cycle()
            if self.snap is None:
                wait = blind_wait
                blind_wait = min(blind_wait * 2, BLIND_RETRY_MAX)
            else:
                wait = self.interval
                blind_wait = self.interval
            tick = max(tick + wait, self.clock())
            if end is not None and tick >= end:
                break
            self.sleep(max(0.0, tick - self.clock()))
        if self.snap is None:
            self.result.blind = self.blind_why or "the cloud was not read"
        return self.result


# -- the watchdog as a service --------------------------------------------------------------


def unit_name(stack: str) -> str:
    return f"blueprints-watch-{stack}.service"


def watchdog_unit(stack: str, project: str, user: str, env_file: str, command: str) -> str:
    """The systemd unit running `blueprints watch <stack>` for good (same input, same bytes).

    Every value must be a plain unit word (letters, digits and @._:/-): anything else raises
    ValueError naming it, since systemd would split or expand it."""
    import jinja2

    from blueprints.render.common import unit_word

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("blueprints.failover", "templates"),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
    )
    values = {
        "stack": stack,
        "project": project,
        "user": user,
        "env_file": env_file,
        "command": command,
    }
    for value in values.values():
        unit_word(value)  # raises ValueError naming the value and what is allowed
    return env.get_template("watchdog.service.j2").render(unit=unit_name(stack), **values)
