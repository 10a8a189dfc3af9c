"""The single-VM blueprint's node, booted for real from its rendered user data (tests/realnode).

single-vm-hcloud's primary boots in a systemd-nspawn container with a blank loop device as its
Hetzner volume (by-id path and all), stand-in images under the spec's names and the real Caddy.
Everything below runs the rendered units and scripts themselves: the format-once script, the
mount, the per-replica units, the health timers, Caddy's config, the floating IP's netplan file.
"""

from __future__ import annotations

import contextlib
import shutil
import time

import pytest

from tests.realnode.host import WORK_ROOT, require_host, wait_for
from tests.realnode.node import TIMINGS
from tests.realnode.stacks import booted_stack_node, http_status

STACK = "single-vm-hcloud"
SERVICES = {"web": 2, "worker": 1, "postgres": 1, "redis": 1}
UNITS = sorted(
    [f"app-{svc}@{n}.service" for svc, count in SERVICES.items() for n in range(1, count + 1)]
    + [f"app-{svc}-health.timer" for svc in SERVICES]
    + ["blueprints-caddy.service", "srv-data.mount", "app.target"]
)


def _ready(node) -> None:
    node.wait_active(UNITS, timeout=240)


@pytest.fixture(scope="module")
def primary():
    with booted_stack_node(STACK, "-primary", _ready, "single-vm node", release=True) as sn:
        yield sn


def _replica_ids(node, service: str) -> dict[str, str]:
    found = node.containers()
    return {
        name: c["id"][:12]
        for name, c in found.items()
        if name.startswith(f"{service}-") and c["state"] == "running"
    }


def test_blank_volume_is_formatted_once_and_mounted(primary):
    node = primary.node
    mount = node.sh("findmnt --noheadings --output FSTYPE,TARGET /srv/data").split()
    assert mount == ["ext4", "/srv/data"]
    label = node.sh(f"blkid -p -s LABEL -o value {primary.node.data_device}").strip()
    assert label == "blueprints-data"
    log = node.journal("blueprints-format-data.service")
    assert "is blank; creating an ext4 filesystem" in log
    # Every spec volume and Caddy's TLS state have their directory, with the rendered modes.
    modes = node.sh("stat -c '%n %a' /srv/data /srv/data/pgdata /srv/data/caddy").split("\n")
    assert modes[:3] == ["/srv/data 700", "/srv/data/pgdata 777", "/srv/data/caddy 700"]


def test_every_unit_active_and_every_replica_healthy(primary):
    node = primary.node
    node.assert_no_failed_units()
    for unit in UNITS:
        assert node.is_active(unit), f"{unit} is not active\n{node.diagnose([unit])}"
    containers = node.containers()
    expected = {f"{svc}-{n}" for svc, count in SERVICES.items() for n in range(1, count + 1)}
    assert expected | {"blueprints_caddy"} == {
        name for name, c in containers.items() if c["state"] == "running"
    }
    # Each replica passed its health check before its unit counted as started.
    for svc, count in SERVICES.items():
        for n in range(1, count + 1):
            assert f"{svc}-{n}: healthy" in node.journal(f"app-{svc}@{n}.service", 400)
    # The replicas answer only for the app's domain (as Django's ALLOWED_HOSTS would), yet the
    # probes pass and nothing was restarted: probes and Caddy send the domain as Host.
    ip = containers["web-1"]["ip"]
    assert http_status(node.exec, f"http://{ip}:8000/") == "400"
    for n in (1, 2):
        restarts = node.exec(["systemctl", "show", "--value", "-p", "NRestarts", f"app-web@{n}"])
        assert restarts.stdout.strip() == "0"
    assert "restarting" not in node.journal("app-web-health.service", 200)
    # Secrets reach the container from the root-only env file, values verbatim.
    env = node.exec(["docker", "exec", "web-1", "cat", "/run/standin.env"]).stdout
    assert "DATABASE_HOST=postgres" in env
    assert "DJANGO_SECRET_KEY=<secret:DJANGO_SECRET_KEY>" in env
    assert node.sh("stat -c %a /etc/blueprints/secrets/web.env").strip() == "600"


def test_caddy_serves_the_domain_over_tls_on_the_floating_ip_and_balances_web(primary):
    client = primary.client()
    # The floating IP is on eth0 because the rendered netplan file put it there.
    assert client.address in primary.node.sh("ip -4 -o addr show dev eth0")
    web = _replica_ids(primary.node, "web")
    assert len(web) == 2
    seen = set()
    for _ in range(12):
        response = client.get("/")
        assert response.status == 200, response.error
        seen.add(response.body.strip())
    assert seen == set(web.values()), f"answers came from {seen}, replicas are {web}"
    assert client.get("/healthz").status == 200
    # Port 80 redirects to HTTPS; only the domain is served.
    plain = http_status(primary.network.run, f"http://{client.address}/", client.domain)
    assert plain == "308"


def test_a_killed_container_comes_back_and_web_keeps_serving(primary):
    node, client = primary.node, primary.client()
    before = node.containers()["web-1"]
    node.sh(f"kill -KILL $(docker inspect --format '{{{{.State.Pid}}}}' {before['id']})")
    started = time.monotonic()
    failed = 0
    requests = 0

    def back() -> bool:
        nonlocal failed, requests
        requests += 1
        # Longer than Caddy's 5 s try_duration: a request it serves late still counts as served.
        failed += client.get("/", timeout=15).status != 200
        c = node.containers().get("web-1")
        return bool(
            c
            and c["id"] != before["id"]
            and c["state"] == "running"
            and node.is_active("app-web@1.service")
        )

    wait_for("web-1 to come back", back, 60, 0.5)
    seconds = time.monotonic() - started
    TIMINGS.append(("single-vm: killed web replica -> replaced and healthy", seconds))
    # The other replica answered meanwhile: Caddy retries a request on it for up to 5 s.
    assert failed == 0, f"{failed} of {requests} requests failed while web-1 was down"


def test_a_replica_failing_its_health_path_is_restarted(primary):
    node = primary.node
    before = node.containers()["web-2"]["id"]
    # The stand-in answers /healthz from a file; without it the path is a 404.
    node.exec(["docker", "exec", "web-2", "rm", "/www/healthz"])
    started = time.monotonic()
    wait_for(
        "app-web-health to restart web-2",
        lambda: node.containers().get("web-2", {}).get("id") not in (None, before),
        90,
        1,
    )
    wait_for("web-2 active again", lambda: node.is_active("app-web@2.service"), 60, 1)
    seconds = time.monotonic() - started
    TIMINGS.append(("single-vm: web replica unhealthy -> restarted by its health timer", seconds))
    log = node.journal("app-web-health.service", 200)
    assert "web-2: 3 consecutive failed probes; restarting app-web@2.service" in log
    # The rendered check counts `retries` (3) probes `interval` (10 s) apart before it acts.
    assert seconds >= 20


def test_second_boot_keeps_the_volume_and_brings_the_app_back(primary):
    node = primary.node
    node.sh("echo kept > /srv/data/pgdata/marker")
    uuid = node.sh(f"blkid -p -s UUID -o value {node.data_device}").strip()
    node.reboot()
    node.wait_booted()
    seconds = node.wait_active(UNITS, timeout=240)
    TIMINGS.append(("single-vm node: second boot -> every app unit active", seconds))
    assert node.read("/srv/data/pgdata/marker") == "kept\n"
    assert node.sh(f"blkid -p -s UUID -o value {node.data_device}").strip() == uuid
    this_boot = node.exec(
        ["journalctl", "-b", "0", "--no-pager", "-u", "blueprints-format-data.service"]
    ).stdout
    assert "already holds a filesystem; leaving it as it is" in this_boot
    assert "creating an ext4 filesystem" not in this_boot
    node.assert_no_failed_units()
    # Caddy's active health checks mark the replicas up one check interval after it starts.
    client = primary.client()
    wait_for(
        "HTTPS through Caddy after the reboot", lambda: client.get("/", 3).status == 200, 60, 0.5
    )
    TIMINGS.append(
        (
            "single-vm node: second boot -> first HTTPS 200 through Caddy",
            time.monotonic() - node.started_at,
        )
    )


def test_primary_and_warm_spare_side_by_side_then_the_spare_runs_the_release_on_the_volume():
    """Both nodes of the stack at once, from the same user data, on one test network: the one
    holding the volume runs the release it was handed behind the floating IP; the warm spare,
    without it, keeps running and starts nothing of the app (no node parks itself). Then the
    promotion's part on the nodes: the primary goes down, the volume is attached to the running
    spare, which starts the release it finds there, with nothing pushed to it.
    (tests/test_realnode_failover.py drills the whole failover, watchdog and cloud API included.)"""
    from blueprints.spec import load_spec
    from tests.realnode.images import build_standins
    from tests.realnode.net import TestNetwork
    from tests.realnode.node import DataDisk, Node
    from tests.realnode.release import Resolver
    from tests.realnode.stacks import (
        PROJECT,
        HttpsClient,
        StackNode,
        deliver_planned_release,
        floating_ip,
        user_data,
    )

    require_host()

    plan, primary_data = user_data(STACK, "-primary")
    _, spare_data = user_data(STACK, "-spare")
    assert primary_data == spare_data  # byte for byte: no node knows its role
    app = load_spec(PROJECT / "examples/app.yaml")
    fip = floating_ip(primary_data)
    with contextlib.ExitStack() as cleanup:
        # Undone in reverse, each step even when one before it fails.
        cleanup.callback(shutil.rmtree, WORK_ROOT / "images" / "pair", ignore_errors=True)
        images = build_standins(app, WORK_ROOT / "images" / "pair", host=app.domain)
        network = cleanup.enter_context(TestNetwork("pair"))
        resolver = cleanup.enter_context(Resolver(network))
        disk = DataDisk("pair-volume")
        cleanup.callback(disk.destroy)
        primary = Node("primary", primary_data, network, host=10, disk=disk, images=images)
        cleanup.callback(primary.destroy)
        spare = Node("spare", spare_data, network, host=11, images=images)
        cleanup.callback(spare.destroy)
        network.assign(fip, primary.address)
        primary.start()
        spare.start()
        primary.wait_booted()
        # The spare's boot does not settle for minutes: its mount waits for a volume that may
        # still come (then fails). Its first boot is done, and it keeps running.
        spare.wait_systemd()
        resolver.serve(spare)
        spare.wait_active(["bpt-first-boot.service", "docker.service"], timeout=120)
        resolver.serve(primary)
        sn = StackNode(STACK, plan, primary_data, app.domain, network, disk, primary)
        deliver_planned_release(sn)
        primary.wait_active(UNITS, timeout=240)
        release = primary.read("/srv/data/.blueprints/current").strip()
        cert = primary.dir / "caddy-root.crt"
        cert.write_text(primary.read("/srv/data/caddy/caddy/pki/authorities/local/root.crt"))
        client = HttpsClient(network, app.domain, fip, cert)
        wait_for("HTTPS on the floating IP", lambda: client.get("/", 3).status == 200, 90, 0.5)
        # The warm spare: no volume, so no mount, no release and no app; nothing powers it off.
        assert spare.exec(["findmnt", "/srv/data"], check=False).returncode != 0
        assert not spare.is_active("app.target")
        assert spare.containers() == {}
        assert spare.proc is not None and spare.proc.poll() is None
        assert "power_state" not in primary_data
        # Both nodes carry the floating IP on eth0; the route decides who gets the traffic.
        assert fip in spare.sh("ip -4 -o addr show dev eth0")
        network.assign(fip, spare.address)
        assert client.get("/", 3).status == 0  # nothing listens on the spare's 443

        # The promotion, as far as the nodes go: the primary is fenced (powered off, which
        # unmounts the volume), the volume moves to the running spare, then the floating IP.
        primary.stop()
        primary.detach_volume()
        moved = time.monotonic()
        started = spare.attach_volume(disk)
        # Attaching announces the device, whose unit wants the release's activation.
        assert started == ["blueprints-release.service"]
        spare.wait_active(["blueprints-release.service", *UNITS], timeout=240)
        wait_for("HTTPS on the promoted spare", lambda: client.get("/", 3).status == 200, 90, 0.5)
        TIMINGS.append(
            (
                "single-vm warm spare: volume attached -> HTTPS 200 (release from the volume)",
                time.monotonic() - moved,
            )
        )
        # It runs exactly the release that was live, found on the volume (nothing was sent to
        # it): the volume's device started its activation.
        assert spare.read("/srv/data/.blueprints/current").strip() == release
        assert release in spare.journal("blueprints-release.service", lines=200)
