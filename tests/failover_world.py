"""What the failover scenarios need from an emulated cloud, for either driver.

A World wraps a Cloud driver talking to a local emulator, plus the test's view of the app:
the app answers on a node exactly when that node runs and holds the data volume (all app
units need /srv/data), unless a scenario breaks the node on purpose.

The promoter's local clock is a FakeClock (it moves only when the code sleeps); the cloud's
clock is the emulator's Date header, which `shift_clock` moves.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from emulators import FaultProxy, build_single_vm
from fakes import FakeHcloud

from blueprints.failover.aws_cloud import AwsCloud
from blueprints.failover.cloud import Cloud, Snapshot
from blueprints.failover.hcloud_cloud import HcloudCloud
from blueprints.failover.lock import LockRecord
from blueprints.failover.promote import Options, Promotion
from blueprints.failover.record import write_active_to_file

ROOT = Path(__file__).resolve().parent.parent

# Operations a promotion performs, by the API call that carries each.
AWS_OPS = {
    "read": "DescribeInstances",
    "power_off": "StopInstances",
    "power_on": "StartInstances",
    "detach": "DetachVolume",
    "attach": "AttachVolume",
    "unassign": "DisassociateAddress",
    "assign": "AssociateAddress",
    "lock": "CreateKeyPair",
    "heartbeat": "CreateTags",
}
HCLOUD_OPS = {
    "read": ("GET", r"^/v1/servers$"),
    "power_off": ("POST", r"/servers/\d+/actions/poweroff$"),
    "power_on": ("POST", r"/servers/\d+/actions/poweron$"),
    "detach": ("POST", r"/volumes/\d+/actions/detach$"),
    "attach": ("POST", r"/volumes/\d+/actions/attach$"),
    "unassign": ("POST", r"/floating_ips/\d+/actions/unassign$"),
    "assign": ("POST", r"/floating_ips/\d+/actions/assign$"),
    "lock": ("POST", r"^/v1/placement_groups$"),
    "heartbeat": ("PUT", r"^/v1/placement_groups/\d+$"),
}
# The calls that change a server, the volume or the floating IP (the emulators' logs).
_ACTION_CALL = re.compile(r"^POST /v1/(servers|volumes|floating_ips)/\d+/actions/")
_AWS_ACTIONS = frozenset(
    AWS_OPS[op] for op in ("power_off", "power_on", "detach", "attach", "unassign", "assign")
)


def is_action(call: str) -> bool:
    """`call` (an EC2 action name, or "METHOD /path" on Hetzner) powers a server or moves the
    volume or the floating IP."""
    return call in _AWS_ACTIONS or bool(_ACTION_CALL.match(call))


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
    shift_clock: Callable[[float], None]  # move the cloud's clock (its Date headers)
    # The emulator's log of the promoters' calls so far (EC2 actions, "METHOD /path" on Hetzner)
    calls: Callable[[], list[str]]
    broken: set[str] = field(default_factory=set)  # nodes whose app never answers
    clock: FakeClock = field(default_factory=FakeClock)
    checks: int = 0
    log: list[str] = field(default_factory=list)

    def snapshot(self) -> Snapshot:
        return self.cloud.snapshot()

    def lock(self) -> LockRecord | None:
        stored = self.cloud.read_lock()
        return stored.record if stored else None

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
            # The emulators' addresses are nobody's (moto's Elastic IPs are 127.x addresses,
            # which would bind here): the floating IP is never this machine's own.
            local=lambda _address: False,
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


# -- the two emulated clouds -------------------------------------------------------------


def stack_file(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"Pulumi.{name}.yaml"
    shutil.copy(ROOT / "stacks" / f"Pulumi.{name}.yaml", path)
    return path


def aws_world(moto, tmp_path, proxy: FaultProxy) -> World:
    moto.reset()
    admin = moto.ec2()  # the world's own hand, straight to the emulator, never faulted
    ids = build_single_vm(admin)
    ec2 = moto.ec2(url=proxy.url)  # the promoter's client goes through the fault proxy

    def inject(op: str, kind: str) -> None:
        if kind == "5xx":
            proxy.fail_next(AWS_OPS[op], 503, "ServiceUnavailable")
        else:
            proxy.fail_next(AWS_OPS[op], 400, "IncorrectState")

    def set_power(node: str, on: bool) -> None:
        if on:
            admin.start_instances(InstanceIds=[ids[node]])
        else:
            admin.stop_instances(InstanceIds=[ids[node]])

    class AwsWorld(World):
        def attachments(self) -> int:
            vol = admin.describe_volumes(VolumeIds=[ids["volume"]])["Volumes"][0]
            return len(vol.get("Attachments", []))

    return AwsWorld(
        cloud=AwsCloud(ec2, "shop", "single-vm-localstack", poll=0.01),
        inject=inject,
        set_power=set_power,
        stack_file=stack_file(tmp_path, "single-vm-localstack"),
        shift_clock=proxy.shift_clock,
        calls=lambda: [action for action, _agent in proxy.calls],
    )


def hcloud_world(fake: FakeHcloud, tmp_path) -> World:
    base = {"app": "shop", "blueprint": "single-vm", "stack": "single-vm-hcloud"}
    ids = {
        "primary": fake.add_server(
            "shop-primary", labels={**base, "node": "primary"}, ipv4="198.51.100.10"
        ),
        "spare": fake.add_server(
            "shop-spare", labels={**base, "node": "spare"}, status="off", ipv4="198.51.100.11"
        ),
    }
    fake.add_volume("shop-data", labels=base, size=21, server=ids["primary"])
    fake.add_floating_ip("shop-ip", labels=base, server=ids["primary"], ip="198.51.100.99")
    # A decoy: the same app's other stack must never be touched.
    other = {**base, "stack": "single-vm-staging"}
    fake.add_server("staging-primary", labels={**other, "node": "primary"})

    def inject(op: str, kind: str) -> None:
        method, path = HCLOUD_OPS[op]
        if kind == "5xx":
            fake.fail_next(method, path, status=503, code="unavailable")
        else:
            fake.fail_next(method, path, status=423, code="locked")

    def set_power(node: str, on: bool) -> None:
        fake.set_status(ids[node], "running" if on else "off")

    class HcloudWorld(World):
        def attachments(self) -> int:
            vols = fake.state()["volumes"].values()
            return sum(1 for v in vols if v["server"] is not None)

    world = HcloudWorld(
        cloud=HcloudCloud(fake.client(), "shop", "single-vm-hcloud"),
        inject=inject,
        set_power=set_power,
        stack_file=stack_file(tmp_path, "single-vm-hcloud"),
        shift_clock=fake.shift_clock,
        calls=lambda: [f"{method} {path}" for method, path in fake.requests],
    )
    world.decoy = other  # type: ignore[attr-defined]
    return world


def assert_promoted(world: World, to: str = "spare") -> None:
    snap = world.check_invariants("at the end")
    other = snap.other(to)
    assert snap.volume_holder == to
    assert snap.ip_holder == to
    assert snap.nodes[to].running
    assert snap.nodes[other].off
    assert world.lock() is None
    assert world.active_in_file() == to


def primary_dies(world: World) -> None:
    """A hung primary: the cloud still says running, the app no longer answers."""
    world.broken.add("primary")


def killed_after_boot(world: World, owner: str = "ci-1") -> None:
    """A hung primary, and a promoter that dies right after booting the spare: its lock stays
    `running` with no one refreshing it."""
    primary_dies(world)

    def die(at: str) -> None:
        if at == "boot":
            raise Killed(at)

    try:
        world.promotion(owner=owner, after_step=die).run(world.options(), "primary")
    except Killed:
        return
    raise AssertionError("the promotion was not killed after boot")
