"""Promotion, watchdog and parking against local emulators: moto's EC2 server (the code
LocalStack's EC2 runs) for AWS and the fake Hetzner API for hcloud, both on 127.0.0.1.

The drivers are the real ones (boto3, the hcloud SDK); faults are injected at the HTTP API (a
proxy in front of moto answers chosen EC2 actions with an error; the fake Hetzner API answers
with an error). Invariants are checked by describing state after every step.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from emulators import FaultProxy, MotoServer, build_single_vm
from failover_world import Killed, World
from fakes import FakeHcloud

from blueprints.failover.aws_cloud import AwsCloud
from blueprints.failover.hcloud_cloud import HcloudCloud
from blueprints.failover.promote import (
    STEPS,
    Lock,
    PromotionFailed,
    PromotionRefused,
    park,
)
from blueprints.failover.watch import watch

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
    "lock": "CreateTags",
}
HCLOUD_OPS = {
    "read": ("GET", r"^/v1/servers$"),
    "power_off": ("POST", r"/servers/\d+/actions/poweroff$"),
    "power_on": ("POST", r"/servers/\d+/actions/poweron$"),
    "detach": ("POST", r"/volumes/\d+/actions/detach$"),
    "attach": ("POST", r"/volumes/\d+/actions/attach$"),
    "unassign": ("POST", r"/floating_ips/\d+/actions/unassign$"),
    "assign": ("POST", r"/floating_ips/\d+/actions/assign$"),
    "lock": ("PUT", r"^/v1/volumes/\d+$"),
}


@pytest.fixture(scope="session")
def moto():
    with MotoServer() as server:
        yield server


def _stack_file(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"Pulumi.{name}.yaml"
    shutil.copy(ROOT / "stacks" / f"Pulumi.{name}.yaml", path)
    return path


def _aws_world(moto, tmp_path, proxy: FaultProxy) -> World:
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
        stack_file=_stack_file(tmp_path, "single-vm-localstack"),
    )


def _hcloud_world(fake: FakeHcloud, tmp_path) -> World:
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
        stack_file=_stack_file(tmp_path, "single-vm-hcloud"),
    )
    world.decoy = other  # type: ignore[attr-defined]
    return world


@pytest.fixture(params=["aws", "hcloud"])
def world(request, moto, tmp_path):
    if request.param == "aws":
        proxy = FaultProxy(moto.url)
        try:
            yield _aws_world(moto, tmp_path, proxy)
        finally:
            proxy.close()
    else:
        with FakeHcloud(action_polls=2) as fake:
            yield _hcloud_world(fake, tmp_path)


def assert_promoted(world: World, to: str = "spare") -> None:
    snap = world.check_invariants("at the end")
    other = snap.other(to)
    assert snap.volume_holder == to
    assert snap.ip_holder == to
    assert snap.nodes[to].running
    assert snap.nodes[other].off
    assert snap.lock is None
    assert world.active_in_file() == to


def primary_dies(world: World) -> None:
    """A hung primary: the cloud still says running, the app no longer answers."""
    world.broken.add("primary")


# -- the promotion -------------------------------------------------------------------------


def test_promotion_moves_volume_and_ip_and_records_it(world):
    primary_dies(world)
    result = world.promotion().run("primary", world.options())
    assert result.target == "spare"
    assert result.done == ["boot", "fence", "detach", "attach", "healthy", "address", "record"]
    assert_promoted(world)
    assert world.checks >= len(STEPS)
    # Only the stack's own line changed in the stack file; its comments stay.
    text = world.stack_file.read_text()
    assert "blueprints:active: spare" in text and text.startswith("# single-vm on")


def test_a_second_run_does_not_fail_back(world):
    primary_dies(world)
    world.promotion().run("primary", world.options())
    with pytest.raises(PromotionRefused, match="the app is healthy on spare"):
        world.promotion(owner="test-2").run(world.active_in_file(), world.options())
    assert_promoted(world)


def test_rerun_when_only_the_record_is_missing_just_records(world):
    primary_dies(world)
    world.promotion().run("primary", world.options())
    world.stack_file.write_text(
        world.stack_file.read_text().replace("active: spare", "active: primary")
    )
    result = world.promotion(owner="test-2").run("primary", world.options())
    assert result.already and result.done == []
    assert_promoted(world)


def test_refuses_to_promote_away_from_a_healthy_app(world):
    before = world.snapshot()
    with pytest.raises(PromotionRefused, match="the app is healthy on primary"):
        world.promotion().run("primary", world.options())
    assert world.snapshot() == before
    result = world.promotion().run("primary", world.options(force=True))
    assert result.target == "spare"
    assert_promoted(world)


@pytest.mark.parametrize("step", STEPS)
def test_killed_after_any_step_a_rerun_finishes(world, step):
    primary_dies(world)

    def die(at: str) -> None:
        if at == step:
            raise Killed(at)

    with pytest.raises(Killed):
        world.promotion(owner="ci-1", after_step=die).run("primary", world.options())
    world.check_invariants(f"after dying at {step}")
    lock = Lock.parse(world.snapshot().lock)
    assert lock is not None and lock.target == "spare" and lock.owner == "ci-1"

    # Another watcher sees a fresh promotion record and stays out of the way ...
    with pytest.raises(PromotionRefused, match="another promotion to spare is in progress"):
        world.promotion(owner="ci-2").run(world.active_in_file(), world.options())
    # ... until the operator says the first one died.
    world.promotion(owner="ci-2").run(world.active_in_file(), world.options(takeover=True))
    assert_promoted(world)


def test_an_abandoned_lock_expires(world):
    primary_dies(world)

    def die(at: str) -> None:
        if at == "detach":
            raise Killed(at)

    with pytest.raises(Killed):
        world.promotion(owner="ci-1", after_step=die).run("primary", world.options())
    world.clock.sleep(world.options().lock_ttl + 1)
    world.promotion(owner="ci-2").run("primary", world.options())
    assert_promoted(world)


@pytest.mark.parametrize("kind", ["5xx", "locked"])
@pytest.mark.parametrize("op", list(AWS_OPS))
def test_transient_api_errors_are_retried(world, op, kind):
    primary_dies(world)
    world.inject(op, kind)
    world.promotion().run("primary", world.options())
    assert_promoted(world)
    assert any("retrying" in line for line in world.log), world.log


@pytest.mark.parametrize("step", ["fence", "detach", "attach"])
def test_primary_coming_back_mid_promotion_is_fenced_again(world, step):
    primary_dies(world)

    def revive(at: str) -> None:
        if at == step:
            world.set_power("primary", True)

    world.promotion(after_step=revive).run("primary", world.options())
    assert_promoted(world)
    fences = [line for line in world.log if line.startswith("fence: powering primary off")]
    assert len(fences) == 2


def test_spare_that_never_gets_healthy_fails_clearly_and_a_rerun_finishes(world):
    primary_dies(world)
    world.broken.add("spare")
    with pytest.raises(PromotionFailed) as exc:
        world.promotion(owner="ci-1").run("primary", world.options(health_timeout=30))
    message = str(exc.value)
    assert "spare did not become healthy within 30s" in message
    assert "rerun promote" in message
    snap = world.check_invariants("after the failure")
    assert snap.volume_holder == "spare" and snap.ip_holder is None
    assert Lock.parse(snap.lock).since == 0  # resumable at once, by anyone

    world.broken.discard("spare")  # someone fixed the app on the spare
    result = world.promotion(owner="ci-2").run(world.active_in_file(), world.options())
    assert result.done == ["healthy", "address", "record"]
    assert_promoted(world)


def test_hard_api_error_stops_with_what_was_done(world):
    primary_dies(world)
    for _ in range(8):
        world.inject("attach", "5xx")
    with pytest.raises(PromotionFailed, match=r"Done so far: boot, fence, detach; rerun promote"):
        world.promotion().run("primary", world.options())
    world.check_invariants("after giving up")
    world.promotion(owner="ci-2").run("primary", world.options())
    assert_promoted(world)


def test_unconfirmed_fence_refuses_without_force(world):
    primary_dies(world)
    original = world.cloud.power_off
    world.cloud.power_off = lambda node: None  # the API accepts but the server never stops
    with pytest.raises(PromotionRefused, match="cannot confirm that primary is off"):
        world.promotion().run("primary", world.options())
    snap = world.check_invariants("after refusing")
    assert snap.volume_holder == "primary"
    world.cloud.power_off = original
    world.promotion(owner="ci-2").run("primary", world.options())
    assert_promoted(world)


# -- watchdog and parking ------------------------------------------------------------------


def test_watch_promotes_after_k_failures(world):
    primary_dies(world)
    promotion = world.promotion()
    result = watch(
        promotion,
        world.active_in_file,
        interval=5,
        failures=3,
        clock=world.clock.time,
        sleep=world.clock.sleep,
        log=world.log.append,
    )
    assert result.probes == 3 and result.promoted is not None
    assert_promoted(world)
    assert sum("no healthy answer" in line for line in world.log) == 3


def test_bounded_watch_on_a_healthy_app_does_nothing(world):
    before = world.snapshot()
    result = watch(
        world.promotion(),
        world.active_in_file,
        interval=5,
        failures=3,
        duration=55,
        clock=world.clock.time,
        sleep=world.clock.sleep,
    )
    assert result.promoted is None and result.probes == 11
    assert world.snapshot() == before


def test_a_blip_shorter_than_k_probes_does_not_promote(world):
    probes = iter([False, False, True, False, True] + [True] * 20)
    promotion = world.promotion()
    promotion.probe = lambda _address: next(probes)
    result = watch(
        promotion,
        world.active_in_file,
        interval=5,
        failures=3,
        duration=60,
        clock=world.clock.time,
        sleep=world.clock.sleep,
    )
    assert result.promoted is None
    assert world.snapshot().volume_holder == "primary"


def test_park_after_failback(world):
    primary_dies(world)
    world.promotion().run("primary", world.options())
    # The repaired primary was booted by hand to look at it: parking powers it off again.
    world.set_power("primary", True)
    assert park(world.cloud, "spare") == "primary parked (powered off)"
    assert world.snapshot().nodes["primary"].off
    assert park(world.cloud, "spare") == "primary is already parked (off)"
    with pytest.raises(PromotionRefused, match="holds the data volume"):
        park(world.cloud, "primary")


def test_a_failed_record_is_reported_and_a_rerun_only_records(world):
    primary_dies(world)
    promotion = world.promotion()
    promotion.record = lambda node: (_ for _ in ()).throw(PermissionError("read-only file system"))
    with pytest.raises(PromotionFailed, match="the app now runs on spare, but recording it failed"):
        promotion.run("primary", world.options())
    result = world.promotion(owner="ci-2").run("primary", world.options())
    assert result.already
    assert_promoted(world)
