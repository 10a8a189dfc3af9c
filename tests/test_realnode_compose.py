"""The compose blueprint's VM, booted for real from its rendered user data (tests/realnode).

compose-hcloud's server boots in a systemd-nspawn container with a blank loop device as its
volume; Docker Compose v2 runs the rendered compose file (stand-in images, the real Caddy),
with the rendered health checks (busybox probes), restart policies and autoheal timer.
"""

from __future__ import annotations

import time

import pytest

from tests.realnode.host import wait_for
from tests.realnode.node import TIMINGS
from tests.realnode.stacks import booted_stack_node, http_status

STACK = "compose-hcloud"
PROJECT = "shop"
REPLICAS = {"web": 2, "worker": 1, "postgres": 1, "redis": 1}
CONTAINERS = sorted(
    f"{PROJECT}-{svc}-{n}" for svc, count in REPLICAS.items() for n in range(1, count + 1)
)
UNITS = ["srv-data.mount", "app-compose.service", "app-autoheal.timer", "blueprints-backup.timer"]


def _all_healthy(node) -> bool:
    found = node.containers()
    return all(
        found.get(name, {}).get("state") == "running" and found[name]["health"] == "healthy"
        for name in CONTAINERS
    )


def _ready(node) -> None:
    node.wait_active(UNITS, timeout=240)
    try:
        wait_for("every container healthy", lambda: _all_healthy(node), 180, 1)
    except Exception as exc:
        raise AssertionError(f"{exc}\n{node.containers()}\n{node.diagnose()}") from None


@pytest.fixture(scope="module")
def vm():
    with booted_stack_node(STACK, "-vm", _ready, "compose node", release=True) as sn:
        yield sn


def test_blank_volume_is_formatted_once_and_mounted(vm):
    node = vm.node
    assert node.sh("findmnt --noheadings --output FSTYPE,TARGET /srv/data").split() == [
        "ext4",
        "/srv/data",
    ]
    assert "is blank; creating an ext4 filesystem" in node.journal("blueprints-format-data.service")
    # Postgres's bind mount is the volume's directory, not the root disk.
    mounts = node.exec(
        [
            "docker",
            "inspect",
            "--format",
            "{{range .Mounts}}{{.Source}}:{{.Destination}} {{end}}",
            f"{PROJECT}-postgres-1",
        ]
    ).stdout.split()
    assert "/srv/data/pgdata:/var/lib/postgresql/data" in mounts


def test_compose_project_is_up_and_every_container_healthy(vm):
    node = vm.node
    node.assert_no_failed_units()
    found = node.containers()
    assert {n for n, c in found.items() if c["state"] == "running"} == {
        *CONTAINERS,
        f"{PROJECT}-blueprints_proxy-1",
    }
    assert all(found[n]["health"] == "healthy" for n in CONTAINERS)
    # The replicas answer only for the app's domain; the busybox probe sends it, so none was
    # ever unhealthy or restarted.
    counts = node.exec(
        ["docker", "inspect", "--format", "{{.RestartCount}}", *CONTAINERS]
    ).stdout.split()
    assert counts == ["0"] * len(CONTAINERS)
    web_1 = found[f"{PROJECT}-web-1"]["ip"]
    assert http_status(node.exec, f"http://{web_1}:8000/healthz") == "400"
    # The wrapper fills the secret variables from the root-only file; the compose file has none.
    env = node.exec(["docker", "exec", f"{PROJECT}-web-1", "cat", "/run/standin.env"]).stdout
    assert "DATABASE_PASSWORD=<secret:DATABASE_PASSWORD>" in env
    assert "<secret:" not in node.read("/etc/blueprints/compose/compose.yaml")


def test_caddy_serves_the_domain_over_tls_and_balances_web(vm):
    client = vm.client()
    found = vm.node.containers()
    web = {found[f"{PROJECT}-web-{n}"]["id"][:12] for n in (1, 2)}
    seen = set()
    for _ in range(12):
        response = client.get("/")
        assert response.status == 200, response.error
        seen.add(response.body.strip())
    assert seen == web


def test_a_killed_container_comes_back(vm):
    node = vm.node
    name = f"{PROJECT}-redis-1"
    before = node.containers()[name]
    node.sh(f"kill -KILL $(docker inspect --format '{{{{.State.Pid}}}}' {before['id']})")
    started = time.monotonic()
    # restart: unless-stopped brings back the same container after a crash.
    wait_for(
        f"{name} to run again",
        lambda: (
            node.containers()[name]["started"] != before["started"]
            and node.containers()[name]["state"] == "running"
        ),
        60,
        0.5,
    )
    wait_for(
        f"{name} healthy again", lambda: node.containers()[name]["health"] == "healthy", 60, 0.5
    )
    TIMINGS.append(
        ("compose: killed redis container -> running and healthy", time.monotonic() - started)
    )


def test_an_unhealthy_container_is_restarted_by_autoheal(vm):
    node = vm.node
    name = f"{PROJECT}-web-2"
    before = node.containers()[name]["started"]
    node.exec(["docker", "exec", name, "rm", "/www/healthz"])
    started = time.monotonic()
    wait_for(
        f"autoheal to restart {name}", lambda: node.containers()[name]["started"] != before, 120, 1
    )
    wait_for(f"{name} healthy again", lambda: node.containers()[name]["health"] == "healthy", 60, 1)
    TIMINGS.append(
        ("compose: web container unhealthy -> restarted by autoheal", time.monotonic() - started)
    )
    assert f"{name} is unhealthy; restarting it" in node.journal("app-autoheal.service", 200)


def test_second_boot_keeps_the_volume_and_brings_the_project_back(vm):
    node = vm.node
    node.sh("echo kept > /srv/data/pgdata/marker")
    node.reboot()
    node.wait_booted()
    _ready(node)
    TIMINGS.append(
        ("compose node: second boot -> every container healthy", time.monotonic() - node.started_at)
    )
    assert node.read("/srv/data/pgdata/marker") == "kept\n"
    this_boot = node.exec(
        ["journalctl", "-b", "0", "--no-pager", "-u", "blueprints-format-data.service"]
    ).stdout
    assert "already holds a filesystem; leaving it as it is" in this_boot
    node.assert_no_failed_units()
    wait_for(
        "HTTPS through Caddy after the reboot",
        lambda: vm.client().get("/", timeout=3).status == 200,
        60,
        0.5,
    )
