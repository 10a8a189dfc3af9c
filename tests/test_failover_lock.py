"""The promotion lock against the emulators: racing promoters, --takeover, owner ids, clocks.

Each cloud is the real driver on a local emulator (the fake Hetzner API; moto's EC2 behind the
proxy of tests/emulators.py). Who did what is read from the emulator's own request log, by
each client's User-Agent.
"""

from __future__ import annotations

import random
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import boto3
import pytest
from emulators import FaultProxy, build_single_vm
from failover_world import (
    assert_promoted,
    is_action,
    killed_after_boot,
    primary_dies,
)
from fakes import FakeHcloud

from blueprints.failover.aws_cloud import AwsCloud
from blueprints.failover.cloud import Cloud
from blueprints.failover.hcloud_cloud import HcloudCloud
from blueprints.failover.lock import LockRecord, PromotionLock, StoredLock, new_owner
from blueprints.failover.promote import (
    Options,
    Promotion,
    PromotionRefused,
    PromotionTakenOver,
)

PAIRS = 20
SPREAD = 2.0  # seconds: the second promoter starts 0-2,000 ms after the first
SEED = 19
ELEVEN_MINUTES = 11 * 60
LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")


# -- the lock resource, per driver ---------------------------------------------------------


def test_the_lock_resource_is_unique_and_deleted_by_id(world):
    cloud = world.cloud
    assert cloud.lock_name in (
        "blueprints-lock-shop-single-vm-hcloud",
        "blueprints-lock-shop-single-vm-localstack",
    )
    assert cloud.read_lock() is None
    now = int(cloud.now())
    assert abs(now - time.time()) < 5
    first = LockRecord("spare", "ci-1", now)
    lock_id = cloud.create_lock(first)
    assert lock_id
    assert cloud.create_lock(LockRecord("spare", "ci-2", now)) is None  # the name is taken
    stored = cloud.read_lock()
    assert (stored.id, stored.record) == (lock_id, first)
    beat = LockRecord("spare", "ci-1", now + 7, "failed")
    assert cloud.update_lock(lock_id, beat) is True
    assert cloud.read_lock().record == beat

    cloud.delete_lock(lock_id)
    second = cloud.create_lock(LockRecord("primary", "ci-3", now))
    cloud.delete_lock(lock_id)  # a stale id: the new lock stays, no error
    assert cloud.read_lock().id == second
    cloud.delete_lock(second)
    assert cloud.read_lock() is None


def test_the_cloud_clock_is_the_api_s_date_header(world):
    before = world.cloud.now()
    world.shift_clock(ELEVEN_MINUTES)
    assert ELEVEN_MINUTES - 3 <= world.cloud.now() - before <= ELEVEN_MINUTES + 3
    world.shift_clock(-2 * ELEVEN_MINUTES)
    assert -ELEVEN_MINUTES - 3 <= world.cloud.now() - before <= -ELEVEN_MINUTES + 3


def test_the_read_back_catches_a_lock_replaced_during_the_settle(world):
    """A cloud that showed a second writer an empty name (eventual consistency) lets both
    creates through; the read-back after the settle tells the first it lost."""
    cloud = world.cloud

    def another_writer_wins(_seconds: float) -> None:
        mine = cloud.read_lock()
        cloud.delete_lock(mine.id)
        cloud.create_lock(LockRecord("spare", "ci-2", int(cloud.now())))

    lock = PromotionLock(cloud, "ci-1", sleep=another_writer_wins)
    with pytest.raises(PromotionRefused) as exc:
        lock.acquire("spare")
    assert str(exc.value) == (
        "another run took the promotion lock at the same moment (it is held by ci-2 now); "
        "this run changed nothing"
    )
    assert not lock.held
    assert world.lock().owner == "ci-2"


def test_a_lost_read_back_removes_the_run_s_own_lock(world):
    """The read-back shows another run's lock (a stale answer of an eventually consistent
    API) while ours exists: the run gives up, and deletes its own lock by its id rather than
    leave it to block everyone for lockTtl."""
    cloud = world.cloud
    real_read = cloud.read_lock
    stale = StoredLock("lock-of-ci-2", LockRecord("spare", "ci-2", int(cloud.now())))
    armed: list[bool] = []

    def read_lock():
        return stale if armed and armed.pop() else real_read()

    cloud.read_lock = read_lock
    lock = PromotionLock(cloud, "ci-1", sleep=lambda _s: armed.append(True))
    with pytest.raises(PromotionRefused, match=r"held by ci-2 now\); this run changed nothing"):
        lock.acquire("spare")
    assert real_read() is None


def test_a_read_back_that_finds_no_lock_reads_again(world):
    """EC2 may not list a key pair created a moment ago: "not found" right after creating is
    read again (after another settle) before it counts as a loss."""
    cloud = world.cloud
    real_read = cloud.read_lock
    misses = [0]

    def read_lock():
        if misses[0] and misses[0] < 3:
            misses[0] += 1
            return None
        return real_read()

    def settle(_seconds: float) -> None:
        misses[0] = misses[0] or 1

    cloud.read_lock = read_lock
    lock = PromotionLock(cloud, "ci-1", sleep=settle)
    lock.acquire("spare")
    assert lock.held and real_read().record.owner == "ci-1"
    assert misses[0] == 3  # two reads found nothing, the third found the lock


def test_the_heartbeat_is_written_before_the_read_back(world):
    """A takeover between the check's read and its heartbeat write went unnoticed for a whole
    step where the cloud accepts a write to a deleted lock (EC2 may tag a deleted key pair).
    Written first and read back after, the run stops before the step."""
    primary_dies(world)
    cloud = world.cloud
    real_now = cloud.now
    armed: list[bool] = []

    def now():
        if armed and armed.pop():  # another run takes the lock over right now
            cloud.delete_lock(cloud.read_lock().id)
            cloud.create_lock(LockRecord("spare", "ci-2", int(real_now())))
        return real_now()

    cloud.now = now
    cloud.update_lock = lambda _id, _record: True  # the write "succeeds" whatever it hits
    promotion = world.promotion(
        owner="ci-1", after_step=lambda step: armed.append(True) if step == "boot" else None
    )
    with pytest.raises(PromotionTakenOver) as exc:
        promotion.run(world.options(), "primary")
    assert str(exc.value) == (
        "the promotion lock was taken over by ci-2; this run stopped before fence. "
        "Done so far: boot"
    )
    snap = world.snapshot()
    assert snap.nodes["primary"].running and snap.volume_holder == "primary"
    assert snap.ip_holder == "primary"


# -- racing promoters ----------------------------------------------------------------------


@dataclass
class Racer:
    """One promoter: its own thread, its own Cloud client (known to the emulator by its
    User-Agent), its own owner id."""

    agent: str
    cloud: Cloud
    delay: float
    outcome: str = ""
    message: str = ""
    error: type | None = None


@dataclass
class Race:
    stack: str
    racers: list[Racer] = field(default_factory=list)


def _run_races(races: list[Race], probe: Callable[[str, str], bool]) -> float:
    """Start every racer at once (each after its delay); return the wall time taken."""
    start = threading.Barrier(sum(len(r.racers) for r in races) + 1)

    def run(race: Race, racer: Racer) -> None:
        promotion = Promotion(
            racer.cloud,
            lambda address: probe(race.stack, address),
            lambda node: f"recorded {node}",
            owner=new_owner("ci-runner"),  # the same hostname for all: CI containers
        )
        start.wait()
        time.sleep(racer.delay)
        opts = Options(health_timeout=30, health_interval=0.05, budget=60)
        try:
            result = promotion.run(opts, "primary")
            # A run that comes after the winner finished finds the cloud promoted and the
            # stack file (primary) stale: it only records the cloud's truth.
            racer.outcome = "already" if result.already and not result.done else "promoted"
        except PromotionRefused as exc:
            racer.outcome, racer.message, racer.error = "refused", str(exc), type(exc)
        except Exception as exc:  # reported by the assertions below
            racer.outcome, racer.message = "error", f"{exc.__class__.__name__}: {exc}"
            racer.error = type(exc)

    threads = [
        threading.Thread(target=run, args=(race, racer), daemon=True)
        for race in races
        for racer in race.racers
    ]
    for t in threads:
        t.start()
    start.wait()
    began = time.monotonic()
    for t in threads:
        t.join(timeout=120)
    return time.monotonic() - began


def _pairs(make_cloud: Callable[[str, str], Cloud]) -> list[Race]:
    """PAIRS races, one stack each; the second racer's delay is spread over 0-2 s (stratified,
    seeded), and which of the two clients starts first is random too."""
    rng = random.Random(SEED)
    races = []
    for i in range(PAIRS):
        stack = f"race-{i:02d}"
        delay = SPREAD * (i + rng.random()) / PAIRS
        delays = [0.0, delay] if rng.random() < 0.5 else [delay, 0.0]
        race = Race(stack)
        for who, d in zip("ab", delays, strict=True):
            agent = f"racer-{stack}-{who}"
            race.racers.append(Racer(agent, make_cloud(stack, agent), d))
        races.append(race)
    return races


def _check_races(races: list[Race], calls: Callable[[str], list[str]], snapshot) -> None:
    """Exactly one racer of each pair promoted; the other refused on the lock (or, coming
    after the winner finished, only recorded the cloud's truth), with no action of its own."""
    lock_refusals = 0
    for race in races:
        outcomes = sorted(r.outcome for r in race.racers)
        described = [(r.delay, r.outcome, r.message) for r in race.racers]
        assert outcomes in (["promoted", "refused"], ["already", "promoted"]), described
        loser = next(r for r in race.racers if r.outcome != "promoted")
        # The loser did nothing: no power, volume or IP call of its own.
        assert not [c for c in calls(loser.agent) if is_action(c)], described
        if loser.outcome == "refused":
            assert loser.error is PromotionRefused, described
            assert "in progress" in loser.message or "same moment" in loser.message, described
            lock_refusals += 1
        snap, lock = snapshot(race.stack)
        assert (snap.volume_holder, snap.ip_holder) == ("spare", "spare")
        assert snap.nodes["spare"].running and snap.nodes["primary"].off
        assert lock is None
    # The race was run: most losers met the winner's lock, not its finished work.
    assert lock_refusals >= PAIRS // 2, lock_refusals


def test_two_promoters_race_on_hcloud():
    with FakeHcloud(action_polls=1) as fake:
        base = {"app": "shop", "blueprint": "single-vm"}
        ids: dict[str, dict[str, int]] = {}
        for i in range(PAIRS):
            stack = f"race-{i:02d}"
            labels = {**base, "stack": stack}
            primary = fake.add_server(f"{stack}-p", labels={**labels, "node": "primary"})
            spare = fake.add_server(f"{stack}-s", labels={**labels, "node": "spare"}, status="off")
            volume = fake.add_volume(f"{stack}-d", labels=labels, server=primary)
            ip = fake.add_floating_ip(f"{stack}-ip", labels=labels, server=primary)
            ids[stack] = {"primary": primary, "spare": spare, "volume": volume, "ip": ip}

        def probe(stack: str, address: str) -> bool:
            """The primary hangs (the cloud says running, its app never answers); the spare's
            app answers, on its own address and on the floating IP when that points at it,
            once it runs and holds the volume."""
            state = fake.state()
            spare_id = ids[stack]["spare"]
            spare = state["servers"][spare_id]
            fip = state["floating_ips"][ids[stack]["ip"]]
            if address != spare["ipv4"] and not (
                address == fip["ip"] and fip["server"] == spare_id
            ):
                return False
            volume = state["volumes"][ids[stack]["volume"]]
            return spare["status"] == "running" and volume["server"] == spare_id

        def make_cloud(stack: str, agent: str) -> Cloud:
            return HcloudCloud(fake.client(application_name=agent), "shop", stack, poll=0.01)

        def calls(agent: str) -> list[str]:
            return [
                f"{r['method']} {r['path']}"
                for r in fake.request_log
                if r["user_agent"].startswith(agent + " ")
            ]

        def snapshot(stack: str):
            cloud = make_cloud(stack, "checker")
            stored = cloud.read_lock()
            return cloud.snapshot(), stored

        races = _pairs(make_cloud)
        took = _run_races(races, probe)
        _check_races(races, calls, snapshot)
        assert fake.errors == []
        assert took < 30, took


def test_two_promoters_race_on_moto(moto):
    """Each race in its own region (moto keeps one backend per region, so a describe scans
    one stack, not twenty)."""
    moto.reset()
    regions = boto3.session.Session().get_available_regions("ec2")[:PAIRS]
    region = {f"race-{i:02d}": r for i, r in enumerate(regions)}
    admin = {stack: moto.ec2(region=r) for stack, r in region.items()}
    ids = {
        stack: build_single_vm(admin[stack], stack=stack, zone=f"{r}a")
        for stack, r in region.items()
    }
    proxy = FaultProxy(moto.url)
    try:

        def probe(stack: str, address: str) -> bool:
            """As on hcloud: only the spare's app answers, once it runs and holds the volume."""
            ec2, spare = admin[stack], ids[stack]["spare"]
            inst = ec2.describe_instances(InstanceIds=[spare])["Reservations"][0]["Instances"][0]
            eip = ec2.describe_addresses(AllocationIds=[ids[stack]["allocation"]])["Addresses"][0]
            on_spare = address == eip["PublicIp"] and eip.get("InstanceId") == spare
            if address != inst.get("PublicIpAddress") and not on_spare:
                return False
            vol = ec2.describe_volumes(VolumeIds=[ids[stack]["volume"]])["Volumes"][0]
            holders = [a["InstanceId"] for a in vol.get("Attachments", [])]
            return inst["State"]["Name"] == "running" and holders == [spare]

        def make_cloud(stack: str, agent: str) -> Cloud:
            ec2 = moto.ec2(region=region[stack], url=proxy.url, agent=agent)
            return AwsCloud(ec2, "shop", stack, poll=0.02)

        def snapshot(stack: str):
            cloud = AwsCloud(admin[stack], "shop", stack)
            return cloud.snapshot(), cloud.read_lock()

        races = _pairs(make_cloud)
        took = _run_races(races, probe)
        _check_races(races, proxy.calls_by, snapshot)
        assert took < 30, took
    finally:
        proxy.close()


# -- --takeover ----------------------------------------------------------------------------


def test_takeover_stops_the_first_run_before_its_next_step(world):
    primary_dies(world)
    parked, resume = threading.Event(), threading.Event()
    first: dict[str, BaseException] = {}

    def park_after_boot(step: str) -> None:
        if step == "boot":
            parked.set()
            assert resume.wait(60)

    def first_run() -> None:
        try:
            world.promotion(owner="ci-1", after_step=park_after_boot).run(
                world.options(), "primary"
            )
        except BaseException as exc:  # examined below
            first["error"] = exc

    thread = threading.Thread(target=first_run, daemon=True)
    thread.start()
    assert parked.wait(60)

    with pytest.raises(PromotionRefused, match="another promotion to spare is in progress"):
        world.promotion(owner="ci-2").run(world.options(), "primary")
    seen: dict[str, object] = {}

    def let_the_first_go_on(step: str) -> None:
        if step == "fence":  # the second run holds the lock and has fenced the primary
            mark = len(world.calls())
            resume.set()
            thread.join(60)
            seen["first's calls"] = [c for c in world.calls()[mark:] if is_action(c)]
            seen["lock"] = world.lock()

    world.promotion(owner="ci-2", after_step=let_the_first_go_on).run(
        world.options(takeover=True), "primary"
    )
    error = first.get("error")
    assert isinstance(error, PromotionTakenOver), error
    assert str(error) == (
        "the promotion lock was taken over by ci-2; this run stopped before fence. "
        "Done so far: boot"
    )
    assert seen["first's calls"] == []  # it stopped: no power, volume or IP call
    lock = seen["lock"]
    assert (lock.owner, lock.state) == ("ci-2", "running")  # not marked failed by the first
    assert any("taking over the lock from ci-1" in line for line in world.log)
    assert_promoted(world)


# -- owner ids -----------------------------------------------------------------------------


def test_owner_ids_are_unique_and_valid_labels():
    ids = {new_owner() for _ in range(10_000)}
    assert len(ids) == 10_000
    for host in ("ci-runner", "runner-7f9c-concurrent-pipeline-x.example.com", "-_.", "ünï code"):
        owner = new_owner(host)
        assert LABEL_VALUE.match(owner) and len(owner) <= 33, owner
        assert re.fullmatch(r".{1,20}-[0-9a-f]{12}", owner), owner
    assert new_owner("runner-7f9c-concurrent-pipeline-x.example.com").startswith(
        "runner-7f9c-concurre-"
    )


def test_owner_ids_differ_across_hosts_with_the_same_hostname():
    """Two CI containers: the same hostname, and the same PID (each runs its job as PID 7)."""
    code = (
        "import os, socket; os.getpid = lambda: 7; socket.gethostname = lambda: 'runner-1';"
        "from blueprints.failover.lock import new_owner;"
        "print('\\n'.join(new_owner() for _ in range(5000)))"
    )
    hosts = [
        set(
            subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, check=True
            ).stdout.split()
        )
        for _ in range(2)
    ]
    assert all(len(ids) == 5000 for ids in hosts)
    assert all(owner.startswith("runner-1-") for ids in hosts for owner in ids)
    assert not hosts[0] & hosts[1]


# -- clocks --------------------------------------------------------------------------------


def test_a_cloud_clock_behind_the_local_one_does_not_expire_a_live_lock(world):
    world.shift_clock(-ELEVEN_MINUTES)  # by the local clock, the lock's beat is 11 minutes old
    killed_after_boot(world)
    assert abs(world.lock().beat - (time.time() - ELEVEN_MINUTES)) < 5
    with pytest.raises(PromotionRefused, match="another promotion to spare is in progress"):
        world.promotion(owner="ci-2").run(world.options(), "primary")
    world.shift_clock(world.options().lock_ttl + 1)
    world.promotion(owner="ci-2").run(world.options(), "primary")
    assert_promoted(world)


def test_a_cloud_clock_ahead_of_the_local_one_does_not_keep_an_expired_lock(world):
    world.shift_clock(ELEVEN_MINUTES)  # by the local clock, the lock's beat is in the future
    killed_after_boot(world)
    with pytest.raises(PromotionRefused, match="another promotion to spare is in progress"):
        world.promotion(owner="ci-2").run(world.options(), "primary")
    world.shift_clock(world.options().lock_ttl - 10)
    with pytest.raises(PromotionRefused, match="another promotion to spare is in progress"):
        world.promotion(owner="ci-2").run(world.options(), "primary")
    world.shift_clock(11)  # lockTtl + 1 after the dead run's last heartbeat, by the cloud
    world.promotion(owner="ci-2").run(world.options(), "primary")
    assert_promoted(world)
