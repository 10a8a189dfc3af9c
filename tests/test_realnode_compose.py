"""The compose blueprint's VM, booted for real from its rendered user data (tests/realnode).

compose-hcloud's server boots in a systemd-nspawn container with a blank loop device as its
volume; Docker Compose v2 runs the rendered compose file (stand-in images, the real Caddy),
with the rendered health checks (busybox probes), restart policies and autoheal timer.

The backup drill turns backups on by a release (the stack's storage: moto's S3 on 127.0.0.1 in
the node's own network namespace) and runs the rendered units with the real restic: known data
(files, and a database stand-in whose dump is its files as a tar stream) backed up keep+2
times, a wrong password and unreachable storage, damage, `restore-app`, the weekly check.
"""

from __future__ import annotations

import json
import re
import sys
import time

import pytest

from blueprints.backup import node_files
from blueprints.backup.storage import Storage
from blueprints.render.vm import BOOTSTRAP_FAILED, INSTALL_PACKAGES
from tests.realnode.host import wait_for
from tests.realnode.light import NodeS3
from tests.realnode.node import TIMINGS
from tests.realnode.release import ReleaseChannel, Traffic, example_app
from tests.realnode.stacks import PROJECT as PROJECT_DIR
from tests.realnode.stacks import booted_stack_node, http_status

STACK = "compose-hcloud"
PROJECT = "shop"
REPLICAS = {"web": 2, "worker": 1, "postgres": 1, "redis": 1}
CONTAINERS = sorted(
    f"{PROJECT}-{svc}-{n}" for svc, count in REPLICAS.items() for n in range(1, count + 1)
)
UNITS = ["srv-data.mount", "app-compose.service", "app-autoheal.timer"]


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


def test_the_bootstrap_finished_and_docker_keeps_containers_across_its_restart(vm):
    """The user data's guard ran every command (no bootstrap-failed marker, install-packages
    found every package), and with live-restore a restart of dockerd restarts no container and
    not the app's unit (which only Wants docker), while HTTPS keeps being answered.

    Run last before the reboot: Docker before 23.0 (this root's Debian 12 has 20.10) stops the
    health checks of live-restored containers (moby#41871), which the reboot starts again;
    Ubuntu 24.04's Docker (24 and later) resumes them."""
    node = vm.node
    assert node.exec(["test", "-e", BOOTSTRAP_FAILED], check=False).returncode == 1
    first_boot = node.exec(["journalctl", "--no-pager", "-u", "bpt-first-boot.service"]).stdout
    assert INSTALL_PACKAGES in first_boot and "install-packages: installing" not in first_boot
    assert node.exec(["docker", "info", "--format", "{{.LiveRestoreEnabled}}"]).stdout == "true\n"
    before = node.containers()
    unit_since = node.exec(
        ["systemctl", "show", "--property=ActiveEnterTimestampMonotonic", "app-compose.service"]
    ).stdout
    with Traffic(vm.client(), timeout=5) as traffic:
        time.sleep(2)
        started = time.monotonic()
        node.exec(["systemctl", "restart", "docker.service"])
        wait_for(
            "docker to answer again",
            lambda: node.exec(["docker", "info"], check=False).returncode == 0,
            60,
            0.5,
        )
        restarted = time.monotonic() - started
        time.sleep(3)
    after = node.containers()
    assert {n: c["started"] for n, c in after.items()} == {
        n: c["started"] for n, c in before.items()
    }
    assert all(after[name]["state"] == "running" for name in CONTAINERS)
    assert (
        node.exec(
            ["systemctl", "show", "--property=ActiveEnterTimestampMonotonic", "app-compose.service"]
        ).stdout
        == unit_since
    )
    assert vm.client().get("/", timeout=5).status == 200
    TIMINGS.append(("compose: dockerd restarted (live-restore) -> answering", restarted))
    print(f"HTTPS during the docker restart: {traffic.summary()}", file=sys.stderr)


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


# --- the backup drill ---------------------------------------------------------------------------

KEEP = 2
BACKUP = [node_files.SCRIPT, "--config", node_files.CONFIG]
# Known data: a plain volume of the worker's (backed up as files, the worker paused around the
# snapshot) and the database stand-in's (backed up by its dump, never paused).
KNOWN_DATA = r"""
set -e
mkdir -p /srv/data/uploads/nested /srv/data/pgdata/base
head -c 300000 /dev/urandom > '/srv/data/uploads/report one.pdf'
printf 'version 1\n' > /srv/data/uploads/nested/notes.txt
: > /srv/data/uploads/empty
head -c 100000 /dev/urandom > /srv/data/pgdata/base/16384
printf '16\n' > /srv/data/pgdata/PG_VERSION
"""
TREE = "cd /srv/data && find uploads pgdata -type f -exec sha256sum {} + | sort"


def _drill_app() -> dict:
    app = example_app()
    app["volumes"]["uploads"] = {"size_gb": 1}
    app["services"]["worker"]["volumes"] = [{"volume": "uploads", "path": "/data/uploads"}]
    app["backups"]["keep"] = KEEP
    return app


def _backup_unit(node, unit: str) -> tuple[int, float]:
    started = time.monotonic()
    proc = node.exec(["systemctl", "start", f"{unit}.service"], check=False, timeout=300)
    return proc.returncode, time.monotonic() - started


def test_backup_drill_restores_byte_for_byte_and_fails_visibly(vm):
    node = vm.node
    channel = ReleaseChannel(vm)
    channel.authorize()
    with NodeS3(node.netns) as s3:
        s3.make_bucket("shop-backups")
        channel.use_backup_storage(
            Storage(
                bucket="shop-backups",
                endpoint=s3.url,
                region="us-east-1",
                access_key="AKIDDRILL",
                folder="restic/shop-compose-hcloud",
            ),
            password="drill-repository-password",
            secret_key="drill-secret-key",
        )
        # backups are turned on by a release: no machine changes
        started = time.monotonic()
        proc = channel.deploy(channel.documents(_drill_app()))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        TIMINGS.append(("backup drill: release turning backups on", time.monotonic() - started))
        node.wait_active(["blueprints-backup.timer", "blueprints-backup-check.timer"], timeout=60)
        wait_for("every container healthy", lambda: _all_healthy(node), 180, 1)
        node.sh(KNOWN_DATA)

        # keep+2 backups through the unit the timer starts; the newest `keep` stay
        for n in range(KEEP + 2):
            node.sh(f"echo run {n} > /srv/data/uploads/nested/run.txt")
            code, seconds = _backup_unit(node, node_files.UNIT)
            assert code == 0, node.journal(f"{node_files.UNIT}.service")
            TIMINGS.append((f"backup drill: backup {n + 1} (dump, pause, restic, prune)", seconds))
        # the data as the newest snapshot holds it
        before = node.sh(TREE)
        assert "uploads/report one.pdf" in before and "pgdata/base/16384" in before
        log = node.journal(f"{node_files.UNIT}.service", 200)
        assert "postgres dumped" in log and "services paused for" in log
        paused = [float(m) for m in re.findall(r"services paused for ([0-9.]+) s", log)]
        TIMINGS.append(("backup drill: worker paused per backup (longest)", max(paused)))
        snapshots = json.loads(node.exec([*BACKUP, "snapshots", "--json"]).stdout)
        assert len(snapshots) == KEEP
        assert all(s["hostname"] == "shop-compose-hcloud" and s["size"] for s in snapshots)

        # a wrong password: the unit fails, visibly, and the snapshots are untouched
        password = node_files.PASSWORD_FILE
        node.sh(f"cp {password} /root/pw && echo wrong > {password}")
        code, _ = _backup_unit(node, node_files.UNIT)
        assert code != 0
        assert node.sh(f"systemctl is-failed {node_files.UNIT}.service || true").strip() == "failed"
        assert "does not open with this password" in node.journal(f"{node_files.UNIT}.service")
        node.sh(f"cp /root/pw {password} && systemctl reset-failed")
        # unreachable storage (a port nothing listens on): fails, changes nothing
        node.sh(f"sed 's#127.0.0.1:{s3.PORT}#127.0.0.1:9#' {node_files.CONFIG} > /root/away.json")
        away = node.exec(
            [node_files.SCRIPT, "--config", "/root/away.json", "backup"], check=False, timeout=120
        )
        assert away.returncode == 1 and "cannot reach the repository" in away.stderr
        after = json.loads(node.exec([*BACKUP, "snapshots", "--json"]).stdout)
        assert [s["id"] for s in after] == [s["id"] for s in snapshots]

        # the admin's commands, over ssh as deploy with the stack's key, from the client side
        outputs = vm.node.dir / "outputs.json"
        outputs.write_text(
            json.dumps(
                {
                    "address": node.address,
                    "deployKey": channel.key_file.read_text(),
                    "backupRepository": channel.storage.repository,
                }
            )
        )
        outputs.chmod(0o600)

        def cli(*args: str, timeout: float = 600):
            return vm.network.run(
                [
                    sys.executable,
                    "-m",
                    "blueprints.cli",
                    *args,
                    "--outputs",
                    str(outputs),
                    "--project",
                    str(PROJECT_DIR),
                ],
                check=False,
                timeout=timeout,
            )

        listed = cli("backups", STACK, "--json")
        assert listed.returncode == 0, listed.stderr
        assert [s["id"] for s in json.loads(listed.stdout)] == [s["id"] for s in snapshots]
        now = cli("backup", STACK)
        assert now.returncode == 0, now.stderr
        assert "postgres dumped" in now.stdout + now.stderr
        newest = json.loads(cli("backups", STACK, "--json").stdout)
        assert len(newest) == KEEP and newest[-1]["id"] not in [s["id"] for s in snapshots]

        # damage, then put the newest snapshot back
        node.sh(
            "rm '/srv/data/uploads/report one.pdf'; echo corrupted > "
            "/srv/data/uploads/nested/notes.txt; rm -rf /srv/data/pgdata/*"
        )
        assert node.sh(TREE) != before
        started = time.monotonic()
        restored = cli("restore", STACK, "--snapshot", newest[-1]["short_id"], "--yes")
        assert restored.returncode == 0, restored.stdout + restored.stderr + node.diagnose()
        TIMINGS.append(("backup drill: blueprints restore --yes", time.monotonic() - started))
        downtime = re.search(r"in ([0-9.]+) s of app downtime", restored.stdout + restored.stderr)
        assert downtime, restored.stdout + restored.stderr
        TIMINGS.append(("backup drill: the app down during the restore", float(downtime[1])))
        assert node.sh(TREE) == before
        steps = restored.stdout
        assert "1. restore snapshot" in steps and "stop the app" in steps
        assert "loaded the dump of postgres" in restored.stdout + restored.stderr
        wait_for("every container healthy after the restore", lambda: _all_healthy(node), 180, 1)

        # the weekly check: a tenth of the data read, the newest dump restored and present
        code, seconds = _backup_unit(node, node_files.CHECK_UNIT)
        assert code == 0, node.journal(f"{node_files.CHECK_UNIT}.service")
        TIMINGS.append(("backup drill: weekly check", seconds))
        assert "1 dump(s) restored and present" in node.journal(f"{node_files.CHECK_UNIT}.service")
