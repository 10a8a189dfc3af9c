"""A real failover drill: the single-VM stack's primary hangs, the real watchdog promotes the warm
spare, and the app answers again on the floating IP, measured (tests/realnode).

Both nodes of single-vm-hcloud boot from the stack's real user data on one test network: the
primary with the data volume (a loop device) and the floating IP, running the release it was
handed; the warm spare running without the volume. `blueprints watch single-vm-hcloud`, the real
CLI with the real hcloud SDK inside, runs on the network's client side against a fake Hetzner API
(tests/realnode/fake_cloud.py) whose actions happen to the nodes: power off cuts a node's power,
a volume detach or attach makes the loop device disappear from or appear in a node (the units
its device unit wants start, as udev would make systemd do), a floating IP assignment moves the
route. Nothing else acts: the watchdog decides and promotes, the node starts the release it
finds on the volume, Caddy serves it.

Each drill: the active node hangs (all its processes die, its network answers nothing, the cloud
still says running); a client on the client side requests https://<domain>/ through the floating
IP every 0.5 s, TLS verified against Caddy's internal root; the recovery time is from the hang
to the first 200. Then the dead node is powered on again and is the next drill's warm spare, so
the roles alternate. Throughout, several times a second, at most one node may hold the volume:
its device, or /srv/data mounted.

BLUEPRINTS_FAILOVER_DRILLS sets the number of drills (default 5). The figures are printed (run
pytest with -s) and listed in the session's "real nodes: measured here" summary; on a machine
busy with other work they are slower than on an idle one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tests.realnode.fake_cloud import Event, HolderWatch, NodeCloud
from tests.realnode.host import WORK_ROOT, HarnessError, require_host, stop_pid, wait_for
from tests.realnode.node import TIMINGS, DataDisk, Node
from tests.realnode.stacks import PROJECT

STACK = "single-vm-hcloud"
ROLES = ("primary", "spare")
BUDGET = 60.0  # seconds from the hang to the first answer, with the default watch settings
SERVICES = {"web": 2, "worker": 1, "postgres": 1, "redis": 1}
UNITS = sorted(
    [f"app-{svc}@{n}.service" for svc, count in SERVICES.items() for n in range(1, count + 1)]
    + [f"app-{svc}-health.timer" for svc in SERVICES]
    + ["blueprints-caddy.service", "srv-data.mount", "app.target"]
)
# Where the drill's units say the app came up on the promoted node (their activation times).
APP_UNITS = (
    "srv-data.mount",
    "app-postgres@1.service",
    "app-web@1.service",
    "app-web@2.service",
    "blueprints-caddy.service",
    "app.target",
)
STATE = "/srv/data/.blueprints"
WATCH_SETTINGS = (
    "watch_interval",
    "watch_failures",
    "probe_timeout",
    "api_timeout",
    "lock_ttl",
    "promote_timeout",
)


def drills() -> int:
    raw = os.environ.get("BLUEPRINTS_FAILOVER_DRILLS", "5")
    if not raw.isdigit() or int(raw) < 1:
        raise HarnessError(f"BLUEPRINTS_FAILOVER_DRILLS must be a positive integer, not {raw!r}")
    return int(raw)


def other(label: str) -> str:
    return ROLES[1 - ROLES.index(label)]


def write_project(where: Path) -> Path:
    """A project for the CLI: Pulumi.yaml, the stack file as committed, the example app."""
    where.mkdir(parents=True)
    shutil.copy(PROJECT / "Pulumi.yaml", where)
    (where / "examples").mkdir()
    shutil.copy(PROJECT / "examples/app.yaml", where / "examples/app.yaml")
    (where / "stacks").mkdir()
    shutil.copy(PROJECT / "stacks" / f"Pulumi.{STACK}.yaml", where / "stacks")
    return where


class Watchdog:
    """`blueprints watch single-vm-hcloud` on the network's client side, its output timestamped."""

    def __init__(self, lan: str, project: Path, env: dict[str, str]):
        self.argv = [
            "ip",
            "netns",
            "exec",
            lan,
            sys.executable,
            "-m",
            "blueprints.cli",
            "watch",
            STACK,
            "-C",
            str(project),
        ]
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.started = 0.0
        self.lines: list[tuple[float, str]] = []
        self.runs = 0
        self._readers: list[threading.Thread] = []

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        self.started = time.monotonic()
        self.runs += 1
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.env,
            start_new_session=True,
        )
        for stream in (self.proc.stdout, self.proc.stderr):
            reader = threading.Thread(target=self._read, args=(stream,), daemon=True)
            reader.start()
            self._readers.append(reader)

    def _read(self, stream) -> None:
        for raw in stream:
            self.lines.append((time.monotonic(), raw.decode(errors="replace").rstrip()))

    def reported(self, since: float, timeout: float) -> int | None:
        """Wait until it reported a promotion after `since` (a long-lived watchdog keeps
        watching) or exited; its exit status if it exited, else None."""
        assert self.proc is not None
        wait_for(
            "the watchdog to report the promotion",
            lambda: (
                self.proc.poll() is not None
                or any("promoted" in line for t, line in self.lines if t >= since)
            ),
            timeout,
            0.2,
        )
        try:  # one that exits after its report
            return self.proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            return None

    def since(self, at: float) -> list[str]:
        return [f"{t - at:7.1f}  {line}" for t, line in self.lines if t >= at]

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                stop_pid(self.proc.pid, grace=10)
            self.proc.wait(timeout=10)
        for reader in self._readers:
            reader.join(timeout=5)
        self._readers.clear()


class FloatingProbe:
    """HTTPS to the app's domain through the floating IP, from the client side, TLS verified: a
    new request every `every` seconds, each in its own curl so that one hanging does not delay
    the next."""

    def __init__(self, lan: str, domain: str, address: str, cacert: Path):
        self.argv = [
            "ip",
            "netns",
            "exec",
            lan,
            "curl",
            "--silent",
            "--output",
            "/dev/null",
            "--write-out",
            "%{http_code}",
            "--max-time",
            "3",
            "--cacert",
            str(cacert),
            "--resolve",
            f"{domain}:443:{address}",
            f"https://{domain}/",
        ]

    def first_success(self, timeout: float, every: float = 0.5) -> float | None:
        """time.monotonic() when the first request answered 200, None if none in `timeout`."""
        running: list[subprocess.Popen] = []
        deadline = time.monotonic() + timeout
        next_at = time.monotonic()
        try:
            while time.monotonic() < deadline:
                if time.monotonic() >= next_at:
                    running.append(
                        subprocess.Popen(
                            self.argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
                        )
                    )
                    next_at += every
                for proc in list(running):
                    if proc.poll() is not None:
                        running.remove(proc)
                        assert proc.stdout is not None
                        if proc.stdout.read().strip() == b"200":
                            return time.monotonic()
                time.sleep(0.05)
            return None
        finally:
            for proc in running:
                proc.kill()
                proc.wait()


@dataclass
class Drill:
    """One drill's record: who died when, what the cloud API saw, when the app came back."""

    number: int
    source: str
    target: str
    died: float
    answered: float | None
    events: list[Event]
    units: dict[str, float]  # APP_UNITS on the target: time.monotonic() they became active
    watchdog: list[str] = field(default_factory=list)
    api: float | None = None  # mean seconds the fake API took per request during the drill

    def _first(self, kind: str, prefix: str) -> float | None:
        return next(
            (
                e.at
                for e in self.events
                if e.kind == kind and e.what.startswith(prefix) and e.detail != "noop"
            ),
            None,
        )

    @property
    def total(self) -> float | None:
        return None if self.answered is None else self.answered - self.died

    def marks(self) -> dict[str, float | None]:
        """time.monotonic() of each moment of the promotion (None: not seen)."""
        acted = next(
            (
                e.at
                for e in self.events
                if e.kind == "request" and e.what.split()[0] in ("POST", "PUT", "DELETE")
            ),
            None,
        )
        return {
            "acted": acted,
            "fence": self._first("begin", f"stop_server {self.source}"),
            "detach": self._first("begin", f"detach_volume {self.source}"),
            "attach": self._first("begin", f"attach_volume {self.target}"),
            "attached": self._first("end", f"attach_volume {self.target}"),
            "app": self.units.get("app.target"),
            "address": self._first("begin", f"assign_floating_ip {self.target}"),
            "answered": self.answered,
        }

    def steps(self) -> list[tuple[str, float | None, float | None]]:
        """(step, start, seconds), start relative to the death."""
        m = self.marks()
        spans = [
            ("detection: failed probes until the first promotion request", None, "acted"),
            ("lock and reads until the fence", "acted", "fence"),
            ("fence: power off the hung node (and the IP off it)", "fence", "detach"),
            ("detach the volume", "detach", "attach"),
            ("attach it to the warm spare", "attach", "attached"),
            ("app start: mount, release activation, units healthy", "attached", "app"),
            ("health probe of the spare, then the IP move requested", "app", "address"),
            ("floating IP moved, until the first HTTPS 200", "address", "answered"),
        ]
        rows = []
        for name, start, end in spans:
            begin = self.died if start is None else m[start]
            finish = m[end]
            if begin is None or finish is None:
                rows.append((name, None if begin is None else begin - self.died, None))
            else:
                rows.append((name, begin - self.died, finish - begin))
        return rows

    def actions(self) -> str:
        """Each cloud action: command, server, seconds from the death to its start and end."""
        out = []
        for begin in self.events:
            if begin.kind != "begin":
                continue
            end = next(
                (
                    e
                    for e in self.events
                    if e.kind == "end" and e.what == begin.what and e.at >= begin.at
                ),
                None,
            )
            finish = "?" if end is None else f"{end.at - self.died:.2f}"
            note = " (no-op)" if begin.detail == "noop" else ""
            out.append(f"{begin.what} {begin.at - self.died:.2f}-{finish}{note}")
        return "; ".join(out)

    def measured_times(self) -> dict[str, float]:
        """The cloud operation times this drill measured, named as in blueprints.failure."""
        m = self.marks()
        pairs = {
            "power_off": ("fence", "detach"),
            "detach": ("detach", "attach"),
            "attach": ("attach", "attached"),
            "app_start": ("attached", "app"),
            "ip_move": ("address", "answered"),
        }
        times = {
            name: round(m[end] - m[start], 1)
            for name, (start, end) in pairs.items()
            if m[start] is not None and m[end] is not None
        }
        if self.api is not None:
            times["api"] = round(self.api, 3)
        return times

    def app_start(self) -> str:
        """When each of the app's units became active on the target, from the attach's end."""
        attached = self.marks()["attached"]
        if attached is None:
            return "-"
        return ", ".join(f"{unit} {at - attached:+.1f}" for unit, at in self.units.items())


def default_settings(project: Path):
    """The drill's stack settings, checked to be the defaults for everything the failover
    times depend on (the 60 s budget is for the defaults)."""
    from blueprints.failover.session import read_stack

    _, settings, _ = read_stack(project, STACK)
    for name in WATCH_SETTINGS:
        default = type(settings).model_fields[name].default
        assert getattr(settings, name) == default, f"the stack file sets {name}"
    assert settings.spare == "warm"
    return settings


def recovery_model(project: Path, measured: dict[str, float] | None = None) -> str:
    """The recovery model's figure (blueprints/failure.py) for the drill's stack settings, with
    the cloud's estimated operation times or (`measured`) those of the drill."""
    from blueprints.failover.session import read_stack
    from blueprints.rungs.single_vm.failure import single_vm_recovery

    _, settings, app = read_stack(project, STACK)
    return f"{single_vm_recovery(settings, app, measured or None).seconds} s"


def unit_times(node: Node, units: tuple[str, ...]) -> dict[str, float]:
    """When each unit last became active, as time.monotonic() (a node shares the host's
    CLOCK_MONOTONIC: no time namespace)."""
    found = {}
    for unit in units:
        value = node.exec(
            ["systemctl", "show", "--value", "--property=ActiveEnterTimestampMonotonic", unit],
            check=False,
        ).stdout.strip()
        if value.isdigit() and int(value) > 0:
            found[unit] = int(value) / 1e6
    return found


def explain(cloud: NodeCloud, watchdog: Watchdog, died: float, target: Node) -> str:
    """What the watchdog said, what the cloud did and the target's failed units, for a failure."""
    events = [
        f"{e.at - died:7.1f}  {e.kind} {e.what} {e.detail}"
        for e in list(cloud.events)
        if e.at >= died and not (e.kind == "request" and e.what.startswith("GET"))
    ]
    return "\n".join(
        [
            "watchdog:",
            *watchdog.since(died),
            f"watchdog running: {watchdog.running()}",
            "cloud (GET requests left out):",
            *events,
            f"effect errors: {cloud.effect_errors}; fake errors: {cloud.errors}",
            target.diagnose(),
        ]
    )


def report(drill: Drill, model: str, measured_model: str) -> str:
    lines = [
        f"drill {drill.number}: {drill.source} hung, {drill.target} promoted; "
        f"death -> first HTTPS 200 on the floating IP: "
        + ("never" if drill.total is None else f"{drill.total:.1f} s")
    ]
    for name, start, seconds in drill.steps():
        at = "    -" if start is None else f"{start:5.1f}"
        took = "    -" if seconds is None else f"{seconds:5.1f}"
        lines.append(f"  {at} +{took} s  {name}")
    lines.append(f"  cloud actions (s after the death): {drill.actions()}")
    lines.append(f"  units active on {drill.target} (s after the attach): {drill.app_start()}")
    lines += [
        f"  on the nodes {e.at - drill.died:5.1f}  {e.what}" + (f": {e.detail}" if e.detail else "")
        for e in drill.events
        if e.kind == "note"
    ]
    lines += [f"  watchdog {line}" for line in drill.watchdog]
    lines.append(f"  model (blueprints/failure.py, same settings): {model}")
    lines.append(
        f"  model with this drill's measured times {drill.measured_times()}: {measured_model}"
    )
    return "\n".join(lines)


def test_failover_drill_the_watchdog_promotes_the_warm_spare_within_a_minute():
    from blueprints.spec import load_spec
    from tests.realnode.images import build_standins
    from tests.realnode.net import TestNetwork
    from tests.realnode.release import Resolver
    from tests.realnode.stacks import (
        HttpsClient,
        StackNode,
        deliver_planned_release,
        floating_ip,
        user_data,
    )

    require_host()
    count = drills()
    wall = time.monotonic()
    plan, data = user_data(STACK, "-primary")
    _, spare_data = user_data(STACK, "-spare")
    assert data == spare_data  # no node knows its role
    app = load_spec(PROJECT / "examples/app.yaml")
    fip = floating_ip(data)
    assert fip is not None
    drills_done: list[Drill] = []
    with contextlib.ExitStack() as cleanup:
        # Undone in reverse order, each step even when one before it fails.
        fixtures = WORK_ROOT / "fixtures" / "failover-drill"
        cleanup.callback(shutil.rmtree, fixtures, ignore_errors=True)
        project = write_project(fixtures / "project")
        cleanup.callback(shutil.rmtree, WORK_ROOT / "images" / "drill", ignore_errors=True)
        images = build_standins(app, WORK_ROOT / "images" / "drill", host=app.domain)
        network = cleanup.enter_context(TestNetwork("drill"))
        resolver = cleanup.enter_context(Resolver(network))
        disk = DataDisk("drill-volume")
        cleanup.callback(disk.destroy)
        nodes: dict[str, Node] = {}
        for label, host in (("primary", 10), ("spare", 11)):
            nodes[label] = Node(label, data, network, host=host, images=images)
            cleanup.callback(nodes[label].destroy)
        cloud = NodeCloud(network, app=app.name, stack=STACK)
        for label in ROLES:
            cloud.add_machine(label, nodes[label])
        cloud.add_data_volume(disk, holder="primary")
        cloud.add_address(fip, holder="primary")
        nodes["primary"].attach_volume(disk)  # not running yet: it boots with it
        cleanup.enter_context(cloud)

        # The stack as `pulumi up` leaves it: the primary runs the release, the spare is warm.
        for node in nodes.values():
            node.start()
        primary, spare = nodes["primary"], nodes["spare"]
        primary.wait_booted()
        resolver.serve(primary)
        spare.wait_systemd()
        resolver.serve(spare)
        sn = StackNode(STACK, plan, data, app.domain, network, disk, primary)
        deliver_planned_release(sn)
        primary.wait_active(UNITS, timeout=240)
        spare.wait_active(["bpt-first-boot.service", "docker.service"], timeout=120)
        assert not spare.holds_data_mount() and spare.containers() == {}
        release = primary.read(f"{STATE}/current").strip()
        cacert = fixtures / "caddy-root.crt"
        cacert.write_text(primary.read("/srv/data/caddy/caddy/pki/authorities/local/root.crt"))
        client = HttpsClient(network, app.domain, fip, cacert)
        wait_for("HTTPS on the floating IP", lambda: client.get("/", 3).status == 200, 90, 0.5)
        setup = time.monotonic() - wall
        TIMINGS.append(("failover drill: both nodes up, release served (setup)", setup))

        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "HCLOUD_TOKEN": "drill-token",
            "HCLOUD_ENDPOINT": cloud.url,
            "SSL_CERT_FILE": str(cacert),
            "COLUMNS": "200",
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
        }
        watchdog = Watchdog(network.lan, project, env)
        cleanup.callback(watchdog.stop)
        probe = FloatingProbe(network.lan, app.domain, fip, cacert)
        holders = cleanup.enter_context(HolderWatch(cloud))
        settings = default_settings(project)
        interval = settings.watch_interval
        print(
            "\nthe watchdog's settings (the defaults): "
            + ", ".join(f"{name} {getattr(settings, name)}" for name in WATCH_SETTINGS)
            + f", spare {settings.spare}",
            flush=True,
        )

        for number in range(1, count + 1):
            source = cloud.volume_holder()
            assert source in ROLES, f"drill {number}: the volume is on {source}"
            target = other(source)
            assert cloud.status(target) == "running" and not nodes[target].holds_data_mount()
            if not watchdog.running():
                watchdog.start()
            started = watchdog.started
            wait_for(
                "the watchdog's first look at the cloud",
                lambda started=started: any(
                    e.kind == "request" and e.at >= started for e in list(cloud.events)
                ),
                60,
                0.1,
            )
            # The death falls at a different point of the probe cycle in each drill.
            time.sleep(1 + (number - 1) * interval / count)
            died = cloud.hang(source)
            answered = probe.first_success(timeout=120)
            try:
                wait_for(
                    f"drill {number}: the promotion to {target} to finish",
                    lambda target=target, source=source: (
                        cloud.volume_holder() == target
                        and cloud.address_holder() == target
                        and cloud.status(source) == "off"
                    ),
                    60,
                    0.5,
                )
                status = watchdog.reported(died, timeout=30)
            except HarnessError as exc:
                raise AssertionError(
                    f"{exc}\n{explain(cloud, watchdog, died, nodes[target])}"
                ) from None
            until = answered or time.monotonic()
            took = [t for at, t in list(cloud.request_seconds) if died <= at <= until]
            drill = Drill(
                number,
                source,
                target,
                died,
                answered,
                [e for e in list(cloud.events) if e.at >= died],
                unit_times(nodes[target], APP_UNITS),
                watchdog.since(died),
                sum(took) / len(took) if took else None,
            )
            drills_done.append(drill)
            print(
                "\n"
                + report(
                    drill,
                    recovery_model(project),
                    recovery_model(project, drill.measured_times()),
                ),
                flush=True,
            )
            if status is not None:
                assert status == 0, "\n".join(drill.watchdog)
            TIMINGS.append(
                (f"failover drill {number}: {source} hung -> HTTPS 200 from {target}", drill.total)
                if drill.total is not None
                else (f"failover drill {number}: no answer", float("nan"))
            )
            assert answered is not None, (
                f"drill {number}: no HTTPS answer on the floating IP within 120 s\n"
                + explain(cloud, watchdog, died, nodes[target])
            )
            # It runs the release that was live, found on the volume (nothing was sent to it).
            assert nodes[target].read(f"{STATE}/current").strip() == release
            # The dead node comes back (powered on) as the next drill's warm spare.
            back = time.monotonic()
            cloud.power_on(source)
            nodes[source].wait_systemd()
            nodes[source].wait_active(["docker.service"], timeout=120)
            assert not nodes[source].holds_data_mount()
            print(f"  {source} powered on again, a warm spare in {time.monotonic() - back:.1f} s")

        holders.__exit__(None, None, None)
        wall_time = time.monotonic() - wall
        TIMINGS.append((f"failover drill: {count} drills, wall time with setup", wall_time))
        mounted = Counter(len(s.mounted) for s in holders.samples)
        devices = Counter(len(s.devices) for s in holders.samples)
        print(
            f"\n{count} drills in {wall_time:.0f} s (setup {setup:.0f} s); watchdog processes "
            f"started: {watchdog.runs}; who holds the volume, sampled {len(holders.samples)} "
            f"times: /srv/data mounted on no node {mounted[0]}, on one {mounted[1]}, on two or "
            f"more {sum(n for k, n in mounted.items() if k > 1)} times; its device in no node "
            f"{devices[0]}, in one {devices[1]}, in two or more "
            f"{sum(n for k, n in devices.items() if k > 1)} times",
            flush=True,
        )
        assert cloud.effect_errors == [], cloud.effect_errors
        assert cloud.errors == [], cloud.errors
        assert holders.violations == [] and cloud.violations == [], (
            holders.violations + cloud.violations
        )
        assert len(holders.samples) > 10 * count
        slow = [(d.number, round(d.total, 1)) for d in drills_done if d.total >= BUDGET]
        assert not slow, f"drills over {BUDGET:.0f} s (number, seconds): {slow}"
