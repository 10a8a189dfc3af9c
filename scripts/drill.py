#!/usr/bin/env python3
"""Failover drill: time from the primary's death to the app serving from the spare.

Runs the real watchdog and promotion code (blueprints.failover) against a modelled cloud on a
virtual clock, so one drill takes milliseconds. Each cloud operation costs the latency below.
These are modelled, not measured here (no cloud account on this machine): typical Hetzner
Cloud figures seen by operators in 2025-2026, rounded up. Change them with --latency NAME=SECONDS.

  api_read       0.3 s   one GET (list servers, volume, floating IP)
  label          0.3 s   label update on the volume (the promotion record)
  power_off      4 s     hard power-off action until the server reports "off"
  power_on       3 s     power-on action until "running"
  boot           20 s    from "running" to systemd's multi-user target (Ubuntu cloud image)
  detach         3 s     volume detach action
  attach         3 s     volume attach action
  app_start      8 s     from volume attached on a booted node to the app answering (mount,
                         containers, PostgreSQL crash recovery)
  ip_unassign    2 s     floating IP unassign action
  ip_assign      3 s     floating IP assign action, including routing convergence

Detection uses the stack's watch settings (blueprints:watchInterval, watchFailures,
probeTimeout): a probe of the dead primary costs the full probe timeout. The primary dies at
a random moment between two probes; the drill runs several phases and prints each.

Usage: .venv/bin/python scripts/drill.py [--stack single-vm-hcloud] [--latency boot=30] [--check]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

from blueprints.failover.cloud import Cloud, Node, Snapshot
from blueprints.failover.promote import Options, Promotion
from blueprints.failover.session import read_stack
from blueprints.failover.watch import watch

ROOT = Path(__file__).resolve().parent.parent
TARGET_SECONDS = 60.0

LATENCY = {
    "api_read": 0.3,
    "label": 0.3,
    "power_off": 4.0,
    "power_on": 3.0,
    "boot": 20.0,
    "detach": 3.0,
    "attach": 3.0,
    "app_start": 8.0,
    "ip_unassign": 2.0,
    "ip_assign": 3.0,
}


@dataclass
class Clock:
    now: float = 0.0

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class ModelCloud(Cloud):
    clock: Clock
    lat: dict[str, float]
    status: dict[str, str] = field(default_factory=lambda: {"primary": "running", "spare": "off"})
    booted_at: dict[str, float | None] = field(
        default_factory=lambda: {"primary": -1e9, "spare": None}
    )
    volume: str | None = "primary"
    volume_at: float = -1e9
    ip: str | None = "primary"
    lock: str | None = None
    dead: set[str] = field(default_factory=set)
    events: list[tuple[float, str]] = field(default_factory=list)

    def _spend(self, what: str) -> None:
        self.clock.sleep(self.lat[what])

    def _event(self, text: str) -> None:
        self.events.append((self.clock.now, text))

    def serving(self, node: str) -> bool:
        """The app answers on `node`: booted, holding the volume long enough to have started."""
        booted = self.booted_at[node]
        return (
            node not in self.dead
            and self.status[node] == "running"
            and booted is not None
            and self.volume == node
            and self.clock.now >= max(booted, self.volume_at) + self.lat["app_start"]
        )

    def snapshot(self) -> Snapshot:
        self._spend("api_read")
        addr = {"primary": "10.0.0.1", "spare": "10.0.0.2"}
        return Snapshot(
            nodes={n: Node(n, n, self.status[n], addr[n]) for n in ("primary", "spare")},
            volume_holder=self.volume,
            ip_holder=self.ip,
            floating_ip="192.0.2.1",
            lock=self.lock,
        )

    def power_off(self, node: str) -> None:
        self._spend("power_off")
        self.status[node] = "off"
        self.booted_at[node] = None
        self._event(f"{node} off")

    def power_on(self, node: str) -> None:
        self._spend("power_on")
        self.status[node] = "running"
        self.booted_at[node] = self.clock.now + self.lat["boot"]
        self._event(f"{node} running (booting for {self.lat['boot']:.0f}s)")

    def detach_volume(self, node: str) -> None:
        self._spend("detach")
        self.volume = None
        self._event(f"volume detached from {node}")

    def attach_volume(self, node: str) -> None:
        self._spend("attach")
        self.volume = node
        self.volume_at = self.clock.now
        self._event(f"volume attached to {node}")

    def unassign_ip(self) -> None:
        self._spend("ip_unassign")
        self.ip = None
        self._event("floating IP unassigned")

    def assign_ip(self, node: str) -> None:
        self._spend("ip_assign")
        self.ip = node
        self._event(f"floating IP on {node}")

    def write_lock(self, value: str | None) -> None:
        self._spend("label")
        self.lock = value


def drill(phase: float, settings, lat: dict[str, float], verbose: bool) -> float:
    clock = Clock()
    cloud = ModelCloud(clock, lat)
    timeout = settings.probe_timeout

    nodes = {"10.0.0.1": "primary", "10.0.0.2": "spare"}

    def probe(address: str) -> bool:
        node = cloud.ip if address == "192.0.2.1" else nodes[address]
        if node is not None and cloud.serving(node):
            clock.sleep(0.05)
            return True
        booted = node is not None and (cloud.booted_at[node] or 1e18) <= clock.now
        if booted and node not in cloud.dead:
            clock.sleep(0.05)  # an OS that is up refuses the connection at once
        else:
            clock.sleep(timeout)  # a hung or booting node: the probe waits for its timeout
        return False

    # The watchdog's last good probe was `phase` seconds before the death at t=0.
    clock.now = -phase
    cloud.dead.add("primary")
    promotion = Promotion(
        cloud,
        probe,
        lambda node: f"recorded {node}",
        owner="drill",
        clock=clock.time,
        sleep=clock.sleep,
    )
    clock.now = -phase + settings.watch_interval  # the next probe after the last good one
    watch(
        promotion,
        lambda: "primary",
        interval=settings.watch_interval,
        failures=settings.watch_failures,
        options=Options(health_timeout=settings.promote_timeout, health_interval=2.0),
        clock=clock.time,
        sleep=clock.sleep,
    )
    served = next(t for t, e in cloud.events if e == "floating IP on spare")
    if verbose:
        for t, e in cloud.events:
            print(f"    t={t:6.1f}s  {e}")
        print(f"    t={served:6.1f}s  the app serves from the spare")
    return served


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stack", default="single-vm-hcloud")
    parser.add_argument("--latency", action="append", default=[], metavar="NAME=SECONDS")
    parser.add_argument("--check", action="store_true", help=f"exit 1 over {TARGET_SECONDS:.0f} s")
    args = parser.parse_args()
    lat = dict(LATENCY)
    for item in args.latency:
        name, _, value = item.partition("=")
        if name not in lat:
            parser.error(f"--latency: unknown name {name!r}; known: {', '.join(lat)}")
        lat[name] = float(value)
    _, settings, _ = read_stack(ROOT, args.stack)
    print(
        f"stack {args.stack}: probe every {settings.watch_interval}s, promote after "
        f"{settings.watch_failures} failures, probe timeout {settings.probe_timeout}s"
    )
    phases = [0.0, settings.watch_interval * 0.5, settings.watch_interval * 0.99]
    results = []
    for i, phase in enumerate(phases):
        print(f"  death {phase:.1f}s after the last good probe:")
        results.append(drill(phase, settings, lat, verbose=i == len(phases) - 1))
        print(f"    death to serving from the spare: {results[-1]:.1f}s")
    worst = max(results)
    ok = worst < TARGET_SECONDS
    print(f"worst case {worst:.1f}s; target under {TARGET_SECONDS:.0f}s: {ok}")
    return 1 if (args.check and not ok) else 0


if __name__ == "__main__":
    sys.exit(main())
