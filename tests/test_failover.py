"""Promotion and parking against local emulators: moto's EC2 server (the code
LocalStack's EC2 runs) for AWS and the fake Hetzner API for hcloud, both on 127.0.0.1.

The drivers are the real ones (boto3, the hcloud SDK); faults are injected at the HTTP API (a
proxy in front of moto answers chosen EC2 actions with an error; the fake Hetzner API answers
with an error). Invariants are checked by describing state after every step.
"""

from __future__ import annotations

import pytest
from failover_world import (
    AWS_OPS,
    Killed,
    assert_promoted,
    hcloud_world,
    is_action,
    killed_after_boot,
    primary_dies,
)
from fakes import FakeHcloud

from blueprints.failover.lock import LockRecord
from blueprints.failover.promote import (
    STEPS,
    PromotionFailed,
    PromotionRefused,
    park,
)

# -- the promotion -------------------------------------------------------------------------


def test_promotion_moves_volume_and_ip_and_records_it(world):
    primary_dies(world)
    result = world.promotion().run(world.options(), "primary")
    assert result.target == "spare"
    assert result.done == ["boot", "fence", "detach", "attach", "healthy", "address", "record"]
    assert_promoted(world)
    assert world.checks >= len(STEPS)
    # Only the stack's own line changed in the stack file; its comments stay.
    text = world.stack_file.read_text()
    assert "blueprints:active: spare" in text and text.startswith("# single-vm on")


def test_a_second_run_does_not_fail_back(world):
    primary_dies(world)
    world.promotion().run(world.options(), "primary")
    with pytest.raises(PromotionRefused, match="the app is healthy on spare"):
        world.promotion(owner="test-2").run(world.options(), world.active_in_file())
    assert_promoted(world)


def test_rerun_when_only_the_record_is_missing_just_records(world):
    primary_dies(world)
    world.promotion().run(world.options(), "primary")
    world.stack_file.write_text(
        world.stack_file.read_text().replace("active: spare", "active: primary")
    )
    result = world.promotion(owner="test-2").run(world.options(), "primary")
    assert result.already and result.done == []
    assert_promoted(world)


def test_refuses_to_promote_away_from_a_healthy_app(world):
    before = world.snapshot()
    with pytest.raises(PromotionRefused, match="the app is healthy on primary"):
        world.promotion().run(world.options(), "primary")
    assert world.snapshot() == before
    result = world.promotion().run(world.options(force=True), "primary")
    assert result.target == "spare"
    assert_promoted(world)


@pytest.mark.parametrize("step", STEPS)
def test_killed_after_any_step_a_rerun_finishes(world, step):
    primary_dies(world)

    def die(at: str) -> None:
        if at == step:
            raise Killed(at)

    with pytest.raises(Killed):
        world.promotion(owner="ci-1", after_step=die).run(world.options(), "primary")
    world.check_invariants(f"after dying at {step}")
    lock = world.lock()
    assert lock is not None and (lock.target, lock.owner, lock.state) == (
        "spare",
        "ci-1",
        "running",
    )

    # Another watcher sees a fresh promotion record and stays out of the way ...
    with pytest.raises(PromotionRefused, match="another promotion to spare is in progress"):
        world.promotion(owner="ci-2").run(world.options(), world.active_in_file())
    # ... until the operator says the first one died.
    world.promotion(owner="ci-2").run(world.options(takeover=True), world.active_in_file())
    assert_promoted(world)


def test_an_abandoned_lock_expires(world):
    primary_dies(world)

    def die(at: str) -> None:
        if at == "detach":
            raise Killed(at)

    with pytest.raises(Killed):
        world.promotion(owner="ci-1", after_step=die).run(world.options(), "primary")
    # Local time passing says nothing: only the cloud's clock ages the lock.
    world.clock.sleep(world.options().lock_ttl + 1)
    with pytest.raises(PromotionRefused, match="another promotion to spare is in progress"):
        world.promotion(owner="ci-2").run(world.options(), "primary")
    world.shift_clock(world.options().lock_ttl + 1)
    world.promotion(owner="ci-2").run(world.options(), "primary")
    assert any("has had no heartbeat for 12" in line for line in world.log), world.log
    assert_promoted(world)


@pytest.mark.parametrize("kind", ["5xx", "locked"])
@pytest.mark.parametrize("op", list(AWS_OPS))
def test_transient_api_errors_are_retried(world, op, kind):
    primary_dies(world)
    world.inject(op, kind)
    world.promotion().run(world.options(), "primary")
    assert_promoted(world)
    assert any("retrying" in line for line in world.log), world.log


@pytest.mark.parametrize("step", ["fence", "detach", "attach"])
def test_primary_coming_back_mid_promotion_is_fenced_again(world, step):
    primary_dies(world)

    def revive(at: str) -> None:
        if at == step:
            world.set_power("primary", True)

    world.promotion(after_step=revive).run(world.options(), "primary")
    assert_promoted(world)
    fences = [line for line in world.log if line.startswith("fence: powering primary off")]
    assert len(fences) == 2


def test_spare_that_never_gets_healthy_fails_clearly_and_a_rerun_finishes(world):
    primary_dies(world)
    world.broken.add("spare")
    with pytest.raises(PromotionFailed) as exc:
        world.promotion(owner="ci-1").run(world.options(health_timeout=30), "primary")
    message = str(exc.value)
    assert "spare did not become healthy within 30s" in message
    assert "rerun promote" in message
    snap = world.check_invariants("after the failure")
    assert snap.volume_holder == "spare" and snap.ip_holder is None
    lock = world.lock()  # resumable at once, by anyone
    assert lock is not None and (lock.target, lock.owner, lock.state) == ("spare", "ci-1", "failed")

    world.broken.discard("spare")  # someone fixed the app on the spare
    result = world.promotion(owner="ci-2").run(world.options(), world.active_in_file())
    assert result.done == ["healthy", "address", "record"]
    assert_promoted(world)


def test_hard_api_error_stops_with_what_was_done(world):
    primary_dies(world)
    for _ in range(8):
        world.inject("attach", "5xx")
    with pytest.raises(PromotionFailed, match=r"Done so far: boot, fence, detach; rerun promote"):
        world.promotion().run(world.options(), "primary")
    world.check_invariants("after giving up")
    world.promotion(owner="ci-2").run(world.options(), "primary")
    assert_promoted(world)


def test_unconfirmed_fence_refuses_without_force(world):
    primary_dies(world)
    original = world.cloud.power_off
    world.cloud.power_off = lambda node: None  # the API accepts but the server never stops
    # The spare was booted already: not a refusal ("nothing changed") but a failure.
    with pytest.raises(PromotionFailed, match="cannot confirm that primary is off") as exc:
        world.promotion(owner="ci-1").run(world.options(), "primary")
    assert "Done so far: boot, fence; rerun promote" in str(exc.value)
    snap = world.check_invariants("after failing")
    assert snap.volume_holder == "primary"
    assert world.lock().state == "failed"
    world.cloud.power_off = original
    world.promotion(owner="ci-2").run(world.options(), "primary")
    assert_promoted(world)


# -- parking -------------------------------------------------------------------------------


def test_park_after_failback(world):
    primary_dies(world)
    world.promotion().run(world.options(), "primary")
    # The repaired primary was booted by hand to look at it: parking powers it off again.
    world.set_power("primary", True)
    assert park(world.cloud, "spare", settle=0) == "primary parked (powered off)"
    assert world.snapshot().nodes["primary"].off
    assert park(world.cloud, "spare", settle=0) == "primary is already parked (off)"
    # A stale stack file does not make park power off the node that runs the app.
    assert park(world.cloud, "primary", settle=0) == (
        "primary is already parked (off) (the stack file says blueprints:active is primary, "
        "but spare holds the data volume)"
    )
    assert world.lock() is None


def test_a_failed_record_is_reported_and_a_rerun_only_records(world):
    primary_dies(world)
    promotion = world.promotion()
    promotion.record = lambda node: (_ for _ in ()).throw(PermissionError("read-only file system"))
    with pytest.raises(PromotionFailed, match="the app now runs on spare, but recording it failed"):
        promotion.run(world.options(), "primary")
    result = world.promotion(owner="ci-2").run(world.options(), "primary")
    assert result.already
    assert_promoted(world)


# -- the cloud is the truth ----------------------------------------------------------------


def test_stale_stack_file_promotes_away_from_the_node_the_cloud_runs(world):
    """The cloud runs the app on the spare, the stack file (never committed) still says
    primary, and the spare's app dies: the promotion goes back to the primary."""
    primary_dies(world)
    world.promotion(owner="ci-1").run(world.options(), "primary")
    world.stack_file.write_text(
        world.stack_file.read_text().replace("active: spare", "active: primary")
    )
    world.broken = {"spare"}  # the primary was repaired; now the spare's app dies
    result = world.promotion(owner="ci-2").run(world.options(), "primary")
    assert (result.target, result.source, result.already) == ("primary", "spare", False)
    assert result.done == ["boot", "fence", "detach", "attach", "healthy", "address", "record"]
    assert result.note == (
        "the stack file says blueprints:active is primary, but spare holds the data volume"
    )
    assert_promoted(world, to="primary")


def test_a_spent_record_does_not_hide_a_dead_app(world):
    """A promotion finished in the cloud but failed to record; later the new node's app dies:
    its record does not make a rerun say "already running", it promotes back."""
    primary_dies(world)
    promotion = world.promotion(owner="ci-1")
    promotion.record = lambda node: (_ for _ in ()).throw(PermissionError("read-only"))
    with pytest.raises(PromotionFailed, match="recording it failed"):
        promotion.run(world.options(), "primary")
    assert world.lock().state == "failed"
    world.broken = {"spare"}  # the primary was repaired; the spare's app dies
    result = world.promotion(owner="ci-2").run(world.options(), "primary")
    assert (result.target, result.already) == ("primary", False)
    assert_promoted(world, to="primary")


def test_a_failed_record_does_not_license_fencing_a_healthy_app(world):
    primary_dies(world)
    for _ in range(8):  # the fence cannot get through: the run fails after booting the spare
        world.inject("power_off", "5xx")
    with pytest.raises(PromotionFailed, match="Done so far: boot; rerun promote"):
        world.promotion(owner="ci-1").run(world.options(), "primary")
    assert world.lock().state == "failed"
    world.broken.clear()  # it was a false alarm: the primary answers again

    mark = len(world.calls())
    with pytest.raises(PromotionRefused, match="the app is healthy on primary"):
        world.promotion(owner="ci-2").run(world.options(), "primary")
    assert not [c for c in world.calls()[mark:] if is_action(c)]
    snap = world.check_invariants("after the refusal")
    assert snap.nodes["primary"].running and snap.volume_holder == "primary"
    assert world.lock() is None  # a refusal deletes the lock, the failed record with it


def test_budget_bounds_the_health_wait(world):
    primary_dies(world)
    world.broken.add("spare")
    with pytest.raises(PromotionFailed) as exc:
        world.promotion(owner="ci-1").run(world.options(budget=20), "primary")
    assert "ran out of its 20s budget at step healthy" in str(exc.value)
    assert "Done so far: boot, fence, detach, attach; rerun promote" in str(exc.value)
    assert world.clock.now - 1_800_000_000 <= 20
    assert world.lock().state == "failed"


def test_budget_bounds_the_retries(world):
    primary_dies(world)
    for _ in range(3):
        world.inject("attach", "5xx")
    promotion = world.promotion()
    promotion.retry_delay = lambda _n: 10.0  # on the promoter's (fake) clock
    with pytest.raises(PromotionFailed) as exc:
        promotion.run(world.options(budget=15), "primary")
    assert "ran out of its 15s budget at step attach" in str(exc.value)
    assert "no time left to retry" in str(exc.value)
    assert sum("retrying in 10.0s" in line for line in world.log) == 1


def test_budget_bounds_a_cloud_action_that_never_finishes(tmp_path):
    """Real time: the Hetzner action never finishes; the driver's wait ends with the budget."""
    import time

    with FakeHcloud(action_polls=None) as fake:
        world = hcloud_world(fake, tmp_path)
        primary_dies(world)
        promotion = world.promotion()
        promotion.clock, promotion.sleep = time.monotonic, time.sleep
        promotion.settle = 0.05
        started = time.monotonic()
        with pytest.raises(PromotionFailed, match=r"ran out of its 1\.5s budget at step boot"):
            promotion.run(world.options(budget=1.5), "primary")
        assert time.monotonic() - started < 3
        assert world.lock().state == "failed"  # marked although the budget was spent


# -- parking -------------------------------------------------------------------------------


def _failed_after_boot(world) -> None:
    """A promotion to the spare that booted it and then failed: the record says failed."""
    primary_dies(world)
    for _ in range(8):
        world.inject("power_off", "5xx")
    with pytest.raises(PromotionFailed):
        world.promotion(owner="ci-1").run(world.options(), "primary")


def test_park_is_not_blocked_by_a_failed_record_and_keeps_it(world):
    _failed_after_boot(world)
    assert world.snapshot().nodes["spare"].running
    assert park(world.cloud, "primary", settle=0) == "spare parked (powered off)"
    assert world.snapshot().nodes["spare"].off
    lock = world.lock()  # the failed promotion's record is back, for promote to resume
    assert lock is not None and (lock.owner, lock.state, lock.target) == ("ci-1", "failed", "spare")


def test_park_does_not_bring_back_a_record_after_a_takeover(world):
    """While park powers the spare off, a promotion takes its lock over and finishes. The
    failed record park had replaced stays gone: a newer promotion completed since."""
    _failed_after_boot(world)
    original = world.cloud.power_off

    def taken_over_meanwhile(node: str) -> None:
        world.cloud.delete_lock(world.cloud.read_lock().id)
        newer = world.cloud.create_lock(LockRecord("spare", "ci-2", int(world.cloud.now())))
        original(node)
        world.cloud.delete_lock(newer)  # ci-2 finished

    world.cloud.power_off = taken_over_meanwhile
    assert park(world.cloud, "primary", settle=0) == "spare parked (powered off)"
    assert world.lock() is None


def test_park_refuses_while_a_promotion_runs(world):
    killed_after_boot(world)
    mark = len(world.calls())
    with pytest.raises(PromotionRefused, match="another promotion to spare is in progress"):
        park(world.cloud, "primary", settle=0)
    assert not [c for c in world.calls()[mark:] if is_action(c)]
    assert world.snapshot().nodes["spare"].running
    assert world.lock().owner == "ci-1"


def test_park_refuses_a_half_done_promotion_and_promote_finishes_it(world):
    primary_dies(world)

    def die(at: str) -> None:
        if at == "detach":
            raise Killed(at)

    with pytest.raises(Killed):
        world.promotion(owner="ci-1", after_step=die).run(world.options(), "primary")
    world.shift_clock(world.options().lock_ttl + 1)  # the dead run's lock expired
    with pytest.raises(
        PromotionRefused, match=r"no node holds the data volume.*blueprints promote"
    ):
        park(world.cloud, "primary", settle=0)
    assert world.lock().owner == "ci-1"  # the dead run's record stays, for promote to resume
    result = world.promotion(owner="ci-2").run(world.options(), "primary")
    assert result.done == ["attach", "healthy", "address", "record"]
    assert_promoted(world)


# -- whose judgement decides the direction ---------------------------------------------------


def _flaky_front(promotion, world):
    """The first probe of the floating IP fails (one lost packet), later ones are real."""
    real, seen = promotion.probe, []

    def probe(address: str) -> bool:
        if address == world.snapshot().floating_ip and not seen:
            seen.append(address)
            return False
        return real(address)

    promotion.probe = probe
    return seen


def test_a_late_watcher_only_records(world):
    """Two watchdogs judged the primary dead; the first promoted. The second, told where to go
    (away from the node it judged dead), finds that done: it records and changes nothing,
    even when its own look at the app fails once."""
    primary_dies(world)
    world.promotion(owner="watchdog-a").run(world.options(target="spare"), "primary")
    late = world.promotion(owner="watchdog-b")
    seen = _flaky_front(late, world)
    mark = len(world.calls())
    result = late.run(world.options(target="spare", budget=60), "primary")
    assert (result.target, result.already, result.done) == ("spare", True, [])
    assert not [c for c in world.calls()[mark:] if is_action(c)]
    assert_promoted(world)
    assert seen == []  # it did not even need to look


def test_a_spent_failed_record_does_not_steer_toward_a_dead_node(world):
    """A promotion to the spare finished in the cloud but failed to record. Later the primary
    was repaired (the running standby) and the spare crashed (off, broken). The failed record
    is spent: a plain promote goes back to the primary and never fences it."""
    primary_dies(world)
    promotion = world.promotion(owner="ci-1")
    promotion.record = lambda node: (_ for _ in ()).throw(PermissionError("read-only"))
    with pytest.raises(PromotionFailed):
        promotion.run(world.options(), "primary")
    assert (world.lock().state, world.lock().target) == ("failed", "spare")
    world.broken = {"spare"}
    world.set_power("primary", True)
    world.set_power("spare", False)
    mark = len(world.log)
    result = world.promotion(owner="watchdog").run(world.options(budget=60), "primary")
    assert (result.target, result.source) == ("primary", "spare")
    assert result.done == ["fence", "detach", "attach", "healthy", "address", "record"]
    assert not any("powering primary off" in line for line in world.log[mark:])
    assert_promoted(world, to="primary")
    assert any("spare does not serve the app now (status " in line for line in world.log)


def test_a_failed_record_does_not_fence_a_node_serving_on_its_own_address(world):
    """A forced promotion took the floating IP off the primary (it could not be powered off),
    then failed. The primary still holds the data and its app answers on its own address: a
    plain rerun refuses instead of fencing it; --to primary puts the IP back."""
    primary_dies(world)
    original = world.cloud.power_off
    world.cloud.power_off = lambda node: None  # the API accepts, the server never stops
    for _ in range(8):
        world.inject("detach", "5xx")
    with pytest.raises(PromotionFailed, match="Done so far: boot, fence"):
        world.promotion(owner="ci-1").run(world.options(force=True), "primary")
    world.cloud.power_off = original
    snap = world.check_invariants("after the failure")
    assert (snap.volume_holder, snap.ip_holder) == ("primary", None)
    assert world.lock().state == "failed"
    world.broken.clear()  # it was a false alarm: the primary's app answers again

    mark = len(world.calls())
    with pytest.raises(PromotionRefused, match="the app is healthy on primary at its own address"):
        world.promotion(owner="ci-2").run(world.options(), "primary")
    assert not [c for c in world.calls()[mark:] if is_action(c)]
    result = world.promotion(owner="ci-2").run(world.options(target="primary"), "primary")
    assert result.target == "primary" and "address" in result.done
    snap = world.check_invariants("after putting the IP back")
    assert (snap.volume_holder, snap.ip_holder) == ("primary", "primary")
    assert snap.nodes["primary"].running


def test_a_local_floating_ip_is_not_probed_by_the_promotion(world):
    """On the warm spare the floating IP is an address of the machine itself: the promotion's
    "is the app healthy" look goes to the IP holder's own address instead."""
    promotion = world.promotion()
    fip = world.snapshot().floating_ip
    promotion.local = lambda address: address == fip
    probed: list[str] = []
    real = promotion.probe
    promotion.probe = lambda address: probed.append(address) or real(address)
    with pytest.raises(PromotionRefused, match=r"the app is healthy on primary at (\S+);"):
        promotion.run(world.options(), "primary")
    primary = world.snapshot().nodes["primary"].address
    assert probed == [primary]  # (on AWS the instance's public address is the Elastic IP)


# -- the lock during a long step -----------------------------------------------------------


def test_a_slow_cloud_action_keeps_the_lock_alive(tmp_path, monkeypatch):
    """A power-on that takes 400 s (by both clocks) outlives lockTtl (120 s): the driver's polls
    beat the lock every lockTtl/4, so a second promoter 250 s into the wait finds it live."""
    from blueprints.failover import hcloud_cloud
    from blueprints.failover.hcloud_cloud import HcloudCloud
    from blueprints.failover.lock import PromotionLock

    with FakeHcloud(action_polls=40) as fake:
        world = hcloud_world(fake, tmp_path)
        primary_dies(world)
        outcome: list[str] = []

        class Time:
            """Each poll of an action: 10 s on the promoter's clock and on the cloud's."""

            polls = 0

            @classmethod
            def sleep(cls, _seconds: float) -> None:
                cls.polls += 1
                world.clock.sleep(10)
                fake.shift_clock(10)
                if cls.polls == 25:
                    other = HcloudCloud(fake.client(), "shop", "single-vm-hcloud")
                    try:
                        PromotionLock(other, "ci-2", settle=0).acquire("spare")
                        outcome.append("taken")
                    except PromotionRefused as exc:
                        outcome.append(str(exc))

        monkeypatch.setattr(hcloud_cloud, "time", Time)
        world.promotion(owner="ci-1").run(world.options(), "primary")
        assert len(outcome) == 1 and "another promotion to spare is in progress" in outcome[0]
        assert_promoted(world)


def test_a_takeover_during_a_slow_cloud_action_stops_the_run_there(tmp_path, monkeypatch):
    """Taken over while the driver waits for a power-on: the next heartbeat in that wait
    stops the run; it takes no further step."""
    from blueprints.failover import hcloud_cloud
    from blueprints.failover.promote import PromotionTakenOver

    with FakeHcloud(action_polls=40) as fake:
        world = hcloud_world(fake, tmp_path)
        primary_dies(world)

        class Time:
            polls = 0

            @classmethod
            def sleep(cls, _seconds: float) -> None:
                cls.polls += 1
                world.clock.sleep(10)
                fake.shift_clock(10)
                if cls.polls == 5:  # --takeover by ci-2: delete by id, create
                    world.cloud.delete_lock(world.cloud.read_lock().id)
                    world.cloud.create_lock(LockRecord("spare", "ci-2", int(fake.now())))

        monkeypatch.setattr(hcloud_cloud, "time", Time)
        with pytest.raises(PromotionTakenOver) as exc:
            world.promotion(owner="ci-1").run(world.options(), "primary")
        assert str(exc.value) == (
            "the promotion lock was taken over by ci-2; this run stopped before the boot step "
            "finished. Done so far: nothing"
        )
        assert Time.polls < 10  # within lockTtl/4 of the takeover, not at the end of the wait
        snap = world.snapshot()
        assert snap.nodes["primary"].running and snap.volume_holder == "primary"


def test_aws_waits_call_tick_on_every_poll(monkeypatch):
    """The EC2 driver polls its waiter one attempt at a time, ticking in between."""
    from botocore.exceptions import WaiterError

    from blueprints.failover import aws_cloud
    from blueprints.failover.aws_cloud import AwsCloud

    answers = ["Max attempts exceeded", "Max attempts exceeded", None]

    class Waiter:
        def wait(self, **_kwargs):
            reason = answers.pop(0)
            if reason:
                raise WaiterError(name="instance_stopped", reason=reason, last_response={})

    class Ec2:
        def get_waiter(self, _name):
            return Waiter()

    monkeypatch.setattr(aws_cloud.time, "sleep", lambda _s: None)
    cloud = AwsCloud(Ec2(), "shop", "single-vm-localstack", poll=1.0)
    ticks: list[int] = []
    cloud.tick = lambda: ticks.append(1)
    cloud._wait("instance_stopped", InstanceIds=["i-1"])
    assert answers == [] and len(ticks) == 2

    answers[:] = ["Waiter encountered a terminal failure state"]
    with pytest.raises(WaiterError):  # a terminal state is the answer, not polled again
        cloud._wait("instance_stopped", InstanceIds=["i-1"])


def test_the_recovery_model_counts_the_promotions_cloud_calls(world):
    """The single-VM recovery model prices the promotion's own cloud calls (lock, clock, state
    reads; not the actions, which have times of their own) as PROMOTION_CALLS: the count a
    promotion to a warm spare makes until the floating IP has moved must be that number, or
    the figure compare and the README give drifts from the code."""
    from blueprints.rungs.single_vm.failure import PROMOTION_CALLS

    primary_dies(world)
    world.set_power("spare", True)  # warm: running, without the volume
    counted: list[str] = []
    quiet, done = [False], [False]
    for name in ("snapshot", "now", "create_lock", "read_lock", "update_lock", "delete_lock"):
        real = getattr(world.cloud, name)

        def counting(*args, _real=real, _name=name, **kwargs):
            if not quiet[0] and not done[0]:
                counted.append(_name)
            return _real(*args, **kwargs)

        setattr(world.cloud, name, counting)

    def hushed(fn):  # the test's own look at the cloud (invariants, the app's probe)
        def inner(*args, **kwargs):
            quiet[0] = True
            try:
                return fn(*args, **kwargs)
            finally:
                quiet[0] = False

        return inner

    world.check_invariants = hushed(world.check_invariants)
    world.probe = hushed(world.probe)

    def after(step: str) -> None:
        done[0] = done[0] or step == "address"

    result = world.promotion(after_step=after).run(world.options(), "primary")
    assert result.done[:5] == ["fence", "detach", "attach", "healthy", "address"]
    assert len(counted) == PROMOTION_CALLS, counted
