"""The single-VM renderer: real validators, targeted assertions, injection round trips, goldens."""

from __future__ import annotations

import base64
import copy
import dataclasses
import json
import os
import re
import shlex
import stat
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import validators
import yaml
from golden_files import check_golden, check_no_stale_sets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blueprints.backup.node_files import PASSWORD_VALUE, SECRET_KEY_VALUE
from blueprints.backup.storage import Storage
from blueprints.release.bundle import parse_release
from blueprints.render import (
    NodeContext,
    check_app,
    file_permissions,
    render_cloud_init,
    render_node_files,
)
from blueprints.render.common import (
    docker_env_file,
    dump_yaml,
    systemd_escape_path,
    unit_name,
    unit_word,
)
from blueprints.render.single_vm import (
    CADDY_IMAGE,
    PULL_IMAGES_COMMAND,
    bootstrap_files,
    pull_images_command,
    release_documents,
    release_files,
    secret_files,
    standby_images,
    standby_images_text,
)
from blueprints.spec import AppSpec, format_path, parse_spec

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden" / "single-vm"
EXAMPLE_DATA: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "app.yaml").read_text())

HCLOUD_DEVICE = "/dev/disk/by-id/scsi-0HC_Volume_12345678"
AWS_DEVICE = "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0123456789abcdef0"
FLOATING_IP = "203.0.113.10"
SCRIPTS = "/usr/local/lib/blueprints/"
APP = SCRIPTS + "app/"
DEPLOY_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOffline0deploy0key0for0tests00000000000000 deploy"
)
UNITS = "/etc/systemd/system/"
SECRETS = "/etc/blueprints/secrets/"
UNIT_SUFFIXES = (".service", ".timer", ".target", ".mount")


# The stack's backup storage as the renderers get it, and its secrets (which travel with the
# app's secret values under reserved names).
STORAGE = Storage(
    bucket="shop-backups",
    endpoint="https://fsn1.your-objectstorage.com",
    region="fsn1",
    access_key="BACKUP-ACCESS-KEY-ID",
    folder="restic/shop-golden",
)
BACKUP_PASSWORD = "BACKUP-REPOSITORY-PASSWORD"
BACKUP_SECRET_KEY = "BACKUP-STORAGE-SECRET-KEY"


def secrets_for(app: AppSpec, make=lambda name: f"PLACEHOLDER-{name}") -> dict[str, str]:
    """The app's secret values, and the backup's (used where the stack has backup storage)."""
    return {
        **{name: make(name) for name in app.secret_names()},
        PASSWORD_VALUE: BACKUP_PASSWORD,
        SECRET_KEY_VALUE: BACKUP_SECRET_KEY,
    }


def spec(data: Mapping[str, Any] | None = None) -> AppSpec:
    return AppSpec.model_validate(copy.deepcopy(dict(data or EXAMPLE_DATA)))


def context(
    app: AppSpec,
    node: str = "primary",
    *,
    floating_ip: str | None = FLOATING_IP,
    device: str = HCLOUD_DEVICE,
    secrets: Mapping[str, str] | None = None,
    storage: Storage | None = None,
) -> NodeContext:
    return NodeContext(
        app=app,
        node=node,
        data_device=device,
        floating_ip=floating_ip,
        deploy_key=DEPLOY_KEY,
        secrets=secrets_for(app) if secrets is None else secrets,
        backup_storage=storage,
    )


def primary(app: AppSpec | None = None) -> NodeContext:
    return context(app or spec(), "primary")


def spare(app: AppSpec | None = None) -> NodeContext:
    """The spare on Hetzner: the same user data as the primary's (the floating IP in the OS)."""
    return context(app or spec(), "spare")


def aws_node(app: AppSpec | None = None) -> NodeContext:
    """A node on AWS: the cloud translates the Elastic IP itself."""
    return context(app or spec(), floating_ip=None, device=AWS_DEVICE)


def user_data(ctx: NodeContext) -> dict[str, Any]:
    text = render_cloud_init(ctx)
    assert text.startswith("#cloud-config\n")
    return yaml.safe_load(text)


def scripts(files: Mapping[str, str]) -> dict[str, str]:
    """The shell scripts (blueprints-backup, a Python program, is tested on its own)."""
    return {
        p: t
        for p, t in files.items()
        if p.startswith(SCRIPTS) and not t.startswith("#!/usr/bin/env python3")
    }


def programs(files: Mapping[str, str]) -> list[str]:
    """Every executable the node gets (the shell scripts and blueprints-backup)."""
    return [p for p in files if p.startswith(SCRIPTS)]


def units(files: Mapping[str, str]) -> dict[str, str]:
    return {p: t for p, t in files.items() if p.startswith(UNITS)}


def unit_values(text: str, key: str) -> list[str]:
    """All whitespace-separated values of KEY= lines in a unit file."""
    out: list[str] = []
    for line in text.splitlines():
        if line.startswith(f"{key}="):
            out += line.split("=", 1)[1].split()
    return out


def with_service(data: dict[str, Any], name: str, **fields: Any) -> dict[str, Any]:
    data = copy.deepcopy(data)
    data["services"][name] = {**data["services"].get(name, {}), **fields}
    return data


# --- running the generated scripts against stand-in commands ----------------------------------

STUB = r"""#!/bin/bash
# Test stand-in: records its argv (NUL-separated, one file per call) and answers like the tool.
name=${0##*/}
record() {
  local i=0
  while [[ -e $STUB_CALLS/$i ]]; do i=$((i + 1)); done
  printf '%s\0' "$name" "$@" >"$STUB_CALLS/$i"
}
case $name in
  docker)
    if [[ $1 == inspect ]]; then printf '%s\n' "$STUB_INSPECT"; exit 0; fi
    record "$@"
    exit "${STUB_DOCKER_STATUS:-0}"
    ;;
  curl) record "$@"; printf '%s' "${STUB_HTTP_CODE:-200}"; exit 0 ;;
  systemctl) [[ $1 == is-active ]] && exit 0; record "$@"; exit 0 ;;
  blkid) record "$@"; exit "${STUB_BLKID_STATUS:-0}" ;;
  iptables)
    record "$@"
    [[ $* == *--check* ]] && exit "${STUB_IPTABLES_CHECK:-1}"
    exit "${STUB_IPTABLES_INSERT:-0}"
    ;;
  *) record "$@"; exit 0 ;;
esac
"""
STUBBED = ("docker", "curl", "systemctl", "blkid", "mkfs.ext4", "iptables")


class Sandbox:
    """Generated scripts on disk plus stand-ins for docker & co. on PATH."""

    def __init__(self, root: Path, files: Mapping[str, str]):
        self.root = root
        self.bin = root / "stub-bin"
        self.calls = root / "calls"
        self.bin.mkdir(parents=True)
        self.calls.mkdir()
        for name in STUBBED:
            path = self.bin / name
            path.write_text(STUB)
            path.chmod(0o755)
        self.scripts_dir = root / "scripts"
        # By name: the bootstrap's scripts and the release's (under app/) side by side.
        validators.lay_out(
            {Path(p).name: t for p, t in scripts(files).items()},
            self.scripts_dir,
            executable=[Path(p).name for p in scripts(files)],
        )

    def run(self, script: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        for old in self.calls.iterdir():
            old.unlink()
        full_env = {
            "PATH": f"{self.bin}:{os.environ['PATH']}",
            "STUB_CALLS": str(self.calls),
            "STUB_INSPECT": "true 2000-01-01T00:00:00Z 10.0.0.2",
            "BLUEPRINTS_HEALTH_STATE": str(self.root / "health-state"),
            "HOME": str(self.root),
            **env,
        }
        return subprocess.run(
            [str(self.scripts_dir / script), *args],
            env=full_env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    def recorded(self) -> list[list[str]]:
        calls = sorted(self.calls.iterdir(), key=lambda p: int(p.name))
        return [p.read_bytes().decode().split("\0")[:-1] for p in calls]


def expected_docker_run(
    app: AppSpec, name: str, replica: int = 1, command: list[str] | None = None
) -> list[str]:
    """The docker run a service's replica (or, with command, its task or schedule) makes."""
    svc = app.services[name]
    env = app.environment(name, dict.fromkeys(app.secret_names(), ""), "docker")
    args = ["docker", "run", "--rm", "--name"]
    if command is not None:  # a task's or schedule's PID 1 passes SIGTERM on
        args[3:3] = ["--init"]
    if command is None:
        args += [f"{name}-{replica}", "--network", f"{app.name}-net", "--network-alias", name]
    else:
        args += [f"blueprints_task_{replica}", "--network", f"{app.name}-net"]
    args += ["--cpus", f"{svc.cpu:g}", "--memory", f"{svc.memory}m"]
    if svc.entrypoint is not None:
        args += ["--entrypoint", svc.entrypoint[0] if svc.entrypoint else ""]
    for var, value in sorted(env.plain.items()):
        args += ["--env", f"{var}={value}"]
    if env.secret:
        args += ["--env-file", f"/etc/blueprints/secrets/{name}.env"]
    for m in svc.volumes:
        args += ["--volume", f"/srv/data/{m.volume}:{m.path}" + (":ro" if m.read_only else "")]
    for f in svc.files:
        root = "/etc/blueprints/secrets/files" if f.secret else "/etc/blueprints/files"
        args += ["--volume", f"{root}/{name}/{f.key}:{f.path}:ro"]
    if command is None:
        for p in svc.public_tcp_ports:
            args += ["--publish", f"{p.published}:{p.target}"]
    rest = svc.command or [] if command is None else command
    return [*args, svc.image, *(svc.entrypoint or [])[1:], *rest]


# --- the example renders and passes the real validators -------------------------------------


def test_example_renders_every_expected_file():
    files = render_node_files(primary())
    assert list(files) == sorted(files)
    expected = {
        "/etc/ssh/sshd_config.d/10-blueprints.conf",
        "/etc/apt/apt.conf.d/52blueprints-auto-upgrades",
        "/etc/apt/apt.conf.d/51blueprints-lock-timeout",
        "/etc/docker/daemon.json",
        "/etc/blueprints/caddy.json",
        "/etc/netplan/60-floating-ip.yaml",
        UNITS + "app.target",
        UNITS + "srv-data.mount",
        UNITS + "blueprints-format-data.service",
        UNITS + "blueprints-data.service",
        UNITS + "blueprints-network.service",
        UNITS + "blueprints-caddy.service",
        UNITS + "blueprints-metadata-guard.service",
        UNITS + "dev-disk-by\\x2did-scsi\\x2d0HC_Volume_12345678.device.d/blueprints-timeout.conf",
        UNITS + "blueprints-release.service",
        UNITS + "blueprints-acme-retry.service",
        UNITS + "blueprints-acme-retry.timer",
        "/etc/ssh/sshd_config.d/11-blueprints-admin-keys.conf",
        SCRIPTS + "acme-retry",
        SCRIPTS + "install-packages",
        SCRIPTS + "caddy",
        SCRIPTS + "metadata-guard",
        SCRIPTS + "create-network",
        SCRIPTS + "format-data",
        SCRIPTS + "prepare-data",
        SCRIPTS + "install-agent",
        SCRIPTS + "release-agent",
    }
    # The bootstrap: machine-level files only, whatever the app.
    expected.remove("/etc/blueprints/caddy.json")
    expected.remove(UNITS + "app.target")
    assert set(bootstrap_files(primary())) == expected
    release = {
        "/etc/blueprints/caddy.json",
        "/etc/blueprints/admin-keys/deploy",
        UNITS + "app.target",
    }
    for svc in ("web", "worker", "postgres", "redis"):
        release |= {
            UNITS + f"app-{svc}@.service",
            UNITS + f"app-{svc}-health.service",
            UNITS + f"app-{svc}-health.timer",
            APP + f"run-{svc}",
            APP + f"health-{svc}",
        }
    assert set(release_files(primary().app)) == release
    secrets = {SECRETS + f"{svc}.env" for svc in ("web", "worker", "postgres")}
    assert set(secret_files(primary().app, secrets_for(primary().app))) == secrets
    assert set(files) == expected | release | secrets


@pytest.mark.parametrize(
    "ctx",
    [
        pytest.param(primary(), id="primary"),
        pytest.param(spare(), id="spare"),
        pytest.param(aws_node(), id="aws"),
    ],
)
def test_cloud_init_schema_accepts_user_data(ctx: NodeContext, tmp_path: Path):
    validators.cloud_init_schema(render_cloud_init(ctx), tmp_path)


def test_cloud_init_contents():
    ctx = primary()
    data = user_data(ctx)
    assert set(data) == {
        "package_update",
        "packages",
        "ssh_pwauth",
        "disable_root",
        "users",
        "write_files",
        "runcmd",
    }
    assert data["package_update"] is True
    assert {"docker.io", "iptables", "unattended-upgrades"} <= set(data["packages"])
    assert data["ssh_pwauth"] is False and data["disable_root"] is True
    [user] = data["users"]
    assert user["name"] == "deploy"
    # The deploy key only: admins' keys come with each release.
    assert user["ssh_authorized_keys"] == [DEPLOY_KEY]
    assert user["sudo"] == "ALL=(ALL) NOPASSWD:ALL"
    assert user["lock_passwd"] is True
    files = {path: f.content for path, f in bootstrap_files(ctx).items()}
    written = {f["path"]: f for f in data["write_files"]}
    assert [f["path"] for f in data["write_files"]] == list(files)
    for path, text in files.items():
        assert written[path]["content"] == text
        assert written[path]["owner"] == "root:root"
        assert written[path]["permissions"] == file_permissions(path)
    runcmd = data["runcmd"]
    assert "usermod --append --groups docker deploy" in runcmd
    reload_at = runcmd.index("systemctl daemon-reload")
    assert reload_at < runcmd.index("systemctl enable blueprints-release.service")
    assert reload_at < runcmd.index("systemctl start --no-block blueprints-release.service")
    assert runcmd.index("systemctl try-reload-or-restart ssh.service") < reload_at


def test_ssh_and_upgrades_config():
    files = render_node_files(primary())
    sshd = files["/etc/ssh/sshd_config.d/10-blueprints.conf"].splitlines()
    for line in (
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin no",
    ):
        assert line in sshd
    apt = files["/etc/apt/apt.conf.d/52blueprints-auto-upgrades"]
    assert 'APT::Periodic::Unattended-Upgrade "1";' in apt
    assert 'APT::Periodic::Update-Package-Lists "1";' in apt


def _all_scripts_pass_shellcheck(files: Mapping[str, str], tmp_path: Path) -> None:
    found = scripts(files)
    assert found
    for path, text in found.items():
        assert text.startswith("#!/bin/bash\n"), path
        target = tmp_path / Path(path).name
        target.write_text(text)
        validators.shellcheck(target, "bash")


def test_every_script_passes_shellcheck(tmp_path: Path):
    _all_scripts_pass_shellcheck(render_node_files(primary()), tmp_path)


def test_scripts_of_other_shapes_pass_shellcheck(tmp_path: Path):
    """No volumes, no http port (so no proxy), tcp and command checks, a published port."""
    data = copy.deepcopy(EXAMPLE_DATA)
    data["volumes"] = {}
    del data["services"]["postgres"]["volumes"]
    del data["services"]["postgres"]["backup"]
    data["services"]["postgres"]["ports"] = [{"port": 5432, "expose": "tcp", "public_port": 15432}]
    data["services"]["web"]["ports"] = [{"port": 8000}]
    data["services"]["web"]["health"] = {"type": "tcp"}
    data["services"]["redis"]["health"] = {"type": "command", "command": ["redis-cli", "ping"]}
    files = render_node_files(primary(spec(data)))
    assert "/etc/blueprints/caddy.json" not in files
    _all_scripts_pass_shellcheck(files, tmp_path)


MINIMAL = {
    "name": "tiny",
    "domain": "tiny.example.com",
    "acme_email": "ops@example.com",
    "services": {"job": {"image": "busybox:1.36", "command": ["sleep", "infinity"]}},
}


def test_minimal_app_passes_every_validator(tmp_path: Path):
    """One service: no ports (so no proxy), no volumes, no health, no secrets, no admin keys."""
    ctx = context(spec(MINIMAL), floating_ip=None)
    files = render_node_files(ctx)
    release = {**release_files(ctx.app), **secret_files(ctx.app, {})}
    assert not [p for p in release if "caddy" in p or "health" in p or p.startswith(SECRETS)]
    validators.cloud_init_schema(render_cloud_init(ctx), tmp_path)
    _all_scripts_pass_shellcheck(files, tmp_path)
    _verify_units(files, tmp_path)


def _verify_units(files: Mapping[str, str], tmp_path: Path) -> None:
    root = validators.systemd_root(files, tmp_path / "root", executable=programs(files))
    names: list[str] = []
    for path in units(files):
        name = Path(path).name
        if path.count("/") > 4 or not name.endswith(UNIT_SUFFIXES):
            continue  # drop-ins are checked through the unit they belong to
        if name.endswith("@.service"):
            target = files[UNITS + "app.target"]
            names += sorted(u for u in unit_values(target, "Wants") if u.startswith(name[:-8]))
        else:
            names.append(name)
    device_unit = systemd_escape_path(HCLOUD_DEVICE) + ".device"
    validators.systemd_verify(root, [*names, device_unit])


def test_every_unit_passes_systemd_analyze_verify(tmp_path: Path):
    _verify_units(render_node_files(primary()), tmp_path)


def test_systemd_verify_catches_a_broken_unit(tmp_path: Path):
    """The harness itself: a misspelt key must fail it (systemd only warns about it)."""
    files = dict(render_node_files(primary()))
    files[UNITS + "app-redis@.service"] += "Restart=sometimes\n"
    with pytest.raises(pytest.fail.Exception, match="restart specifier"):
        _verify_units(files, tmp_path)


def test_systemd_escape_path_matches_systemd_escape():
    for path in (HCLOUD_DEVICE, AWS_DEVICE, "/dev/disk/by-id/a.b_c:d", "/srv/data"):
        out = subprocess.run(
            [validators.require("systemd-escape"), "--path", path],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert systemd_escape_path(path) == out


# --- services, replicas, ordering, health ------------------------------------------------------


def test_replicas_produce_one_container_each(tmp_path: Path):
    data = with_service(EXAMPLE_DATA, "web", replicas=3)
    app = spec(data)
    files = render_node_files(primary(app))
    target = files[UNITS + "app.target"]
    wanted = unit_values(target, "Wants")
    assert [u for u in wanted if u.startswith("app-web@")] == [
        "app-web@1.service",
        "app-web@2.service",
        "app-web@3.service",
    ]
    assert [u for u in wanted if u.startswith("app-postgres@")] == ["app-postgres@1.service"]
    box = Sandbox(tmp_path, files)
    for n in (1, 2, 3):
        proc = box.run("run-web", "start", str(n))
        assert proc.returncode == 0, proc.stderr
        assert box.recorded() == [expected_docker_run(app, "web", n)]
    caddy = json.loads(files["/etc/blueprints/caddy.json"])
    [route] = caddy["apps"]["http"]["servers"]["app"]["routes"]
    # and the surge slot, where a release starts a new replica before replacing the old ones
    assert [u["dial"] for u in route["handle"][0]["upstreams"]] == [
        "web-1:8000",
        "web-2:8000",
        "web-3:8000",
        "web-4:8000",
    ]


def test_run_script_rejects_a_bad_replica_number(tmp_path: Path):
    box = Sandbox(tmp_path, render_node_files(primary()))
    for bad in ("", "0", "1; touch x", "../1"):
        assert box.run("run-web", "start", bad).returncode == 2
    assert box.recorded() == []


def test_depends_on_orders_units_after_every_replica_of_the_dependency():
    data = with_service(EXAMPLE_DATA, "redis", replicas=2)
    files = render_node_files(primary(spec(data)))
    web = files[UNITS + "app-web@.service"]
    deps = ["app-postgres@1.service", "app-redis@1.service", "app-redis@2.service"]
    for dep in deps:
        assert dep in unit_values(web, "After")
        assert dep in unit_values(web, "Wants")
    postgres = files[UNITS + "app-postgres@.service"]
    assert not [u for u in unit_values(postgres, "After") if u.startswith("app-")]
    for text in (web, postgres):
        assert {"docker.service", "blueprints-network.service"} <= set(unit_values(text, "After"))
        assert unit_values(text, "RequiresMountsFor") == ["/srv/data"]
        assert unit_values(text, "Restart") == ["always"]


def test_service_units_run_the_script_with_pull_and_health_wait():
    files = render_node_files(primary())
    web = files[UNITS + "app-web@.service"]
    assert "ExecStartPre=/usr/local/lib/blueprints/app/run-web prepare %i" in web
    assert "ExecStart=/usr/local/lib/blueprints/app/run-web start %i" in web
    assert "ExecStartPost=/usr/local/lib/blueprints/app/health-web wait %i" in web
    data = copy.deepcopy(EXAMPLE_DATA)
    del data["services"]["redis"]["health"]
    redis = render_node_files(primary(spec(data)))[UNITS + "app-redis@.service"]
    assert "ExecStartPost" not in redis


def test_pull_failure_is_tolerated_only_when_the_image_is_present(tmp_path: Path):
    box = Sandbox(tmp_path, render_node_files(primary()))
    proc = box.run("run-redis", "prepare", "1", STUB_DOCKER_STATUS="1")
    # pull fails, image inspect fails too (same stand-in status): the unit must fail
    assert proc.returncode != 0
    proc = box.run("run-redis", "prepare", "1")
    assert proc.returncode == 0
    assert box.recorded() == [
        ["docker", "pull", "--quiet", "redis:7.4-alpine"],
        ["docker", "rm", "--force", "redis-1"],
    ]


def test_health_timers_exist_exactly_for_services_with_health():
    data = copy.deepcopy(EXAMPLE_DATA)
    del data["services"]["redis"]["health"]
    files = render_node_files(primary(spec(data)))
    timers = {Path(p).name for p in files if p.endswith("-health.timer")}
    assert timers == {f"app-{s}-health.timer" for s in ("web", "worker", "postgres")}
    assert APP + "health-redis" not in files
    assert UNITS + "app-redis-health.service" not in files
    assert "app-redis-health.timer" not in files[UNITS + "app.target"]
    timer = files[UNITS + "app-worker-health.timer"]
    assert unit_values(timer, "OnUnitActiveSec") == ["30s"]
    assert unit_values(timer, "AccuracySec") == ["1s"]


def _health_box(tmp_path: Path, data: dict[str, Any] | None = None) -> Sandbox:
    return Sandbox(tmp_path, render_node_files(primary(spec(data or EXAMPLE_DATA))))


def test_health_check_restarts_after_retries_consecutive_failures(tmp_path: Path):
    box = _health_box(tmp_path)  # worker: command check, retries 3 (default)
    for attempt in (1, 2):
        proc = box.run("health-worker", "check", STUB_DOCKER_STATUS="1")
        assert proc.returncode == 0, proc.stderr
        assert f"probe failed ({attempt} of 3)" in proc.stdout
        assert not [c for c in box.recorded() if c[0] == "systemctl"]
    proc = box.run("health-worker", "check", STUB_DOCKER_STATUS="1")
    assert box.recorded()[-1] == ["systemctl", "--no-block", "try-restart", "app-worker@1.service"]
    # a success resets the count
    box.run("health-worker", "check", STUB_DOCKER_STATUS="1")
    box.run("health-worker", "check")
    proc = box.run("health-worker", "check", STUB_DOCKER_STATUS="1")
    assert "(1 of 3)" in proc.stdout


def test_health_check_ignores_failures_during_start_period(tmp_path: Path):
    box = _health_box(tmp_path)
    just_now = time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime())
    for _ in range(5):
        proc = box.run(
            "health-worker",
            "check",
            STUB_DOCKER_STATUS="1",
            STUB_INSPECT=f"true {just_now} 10.0.0.2",
        )
        assert "start period" in proc.stdout
    assert not [c for c in box.recorded() if c[0] == "systemctl"]


@pytest.mark.parametrize(
    ("code", "healthy"),
    [("200", True), ("302", True), ("404", False), ("503", False), ("000", False)],
)
def test_http_health_accepts_2xx_and_3xx(tmp_path: Path, code: str, healthy: bool):
    box = _health_box(tmp_path)
    proc = box.run("health-web", "check", STUB_HTTP_CODE=code)
    assert ("probe failed" not in proc.stdout) is healthy
    curls = [c for c in box.recorded() if c[0] == "curl"]
    assert len(curls) == 2  # both replicas probed
    assert curls[0][-1] == "http://10.0.0.2:8000/healthz"


def test_http_probes_send_the_host_the_proxy_sends(tmp_path: Path):
    # An app that checks its host (Django's ALLOWED_HOSTS) answers 400 to the container's
    # address; the probe and Caddy's active check send the route's host instead.
    data = with_service(
        copy.deepcopy(EXAMPLE_DATA),
        "web",
        ports=[{"port": 8000, "expose": "http", "host": "admin.example.com"}],
    )
    for app_data, host in ((EXAMPLE_DATA, "shop.example.com"), (data, "admin.example.com")):
        box = _health_box(tmp_path / host, app_data)
        box.run("health-web", "check")
        curl = next(c for c in box.recorded() if c[0] == "curl")
        assert curl[curl.index("--header") + 1] == f"Host: {host}"
        config = json.loads(
            render_node_files(primary(spec(app_data)))["/etc/blueprints/caddy.json"]
        )
        routes = config["apps"]["http"]["servers"]["app"]["routes"]
        web = next(r for r in routes if r["match"][0]["host"] == [host])["handle"][0]
        assert web["health_checks"]["active"]["headers"] == {"Host": [host]}


def test_tcp_health_probes_the_port(tmp_path: Path):
    import socket

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        data = copy.deepcopy(EXAMPLE_DATA)
        data["services"]["redis"]["ports"] = [{"port": port}]
        box = _health_box(tmp_path, data)
        inspect = "true 2000-01-01T00:00:00Z 127.0.0.1"
        proc = box.run("health-redis", "check", STUB_INSPECT=inspect)
        assert "probe failed" not in proc.stdout, proc.stdout + proc.stderr
    proc = box.run("health-redis", "check", STUB_INSPECT=inspect)
    assert "probe failed (1 of 3)" in proc.stdout


def test_health_wait_returns_once_healthy(tmp_path: Path):
    box = _health_box(tmp_path)
    proc = box.run("health-postgres", "wait", "1")
    assert proc.returncode == 0
    assert "postgres-1: healthy" in proc.stdout
    assert box.recorded() == [["docker", "exec", "postgres-1", "pg_isready", "-U", "shop"]]


# --- secrets ---------------------------------------------------------------------------------


def _secret_ctx(**kwargs: Any) -> NodeContext:
    app = spec()
    return context(app, secrets=secrets_for(app, lambda n: f"s3cr3t-{n.lower()}-value"), **kwargs)


def test_secrets_only_in_root_only_env_files():
    ctx = _secret_ctx()
    files = render_node_files(ctx)
    values = list(ctx.secrets.values())
    holders = {p for p, t in files.items() if any(v in t for v in values)}
    assert holders == {SECRETS + "web.env", SECRETS + "worker.env", SECRETS + "postgres.env"}
    for path in holders:
        assert file_permissions(path) == "0600"
    assert files[SECRETS + "web.env"] == (
        "DATABASE_PASSWORD=s3cr3t-database_password-value\n"
        "DJANGO_SECRET_KEY=s3cr3t-django_secret_key-value\n"
    )
    assert files[SECRETS + "postgres.env"] == "POSTGRES_PASSWORD=s3cr3t-postgres_password-value\n"
    for entry in user_data(ctx)["write_files"]:
        if any(v in entry["content"] for v in values):
            assert entry["permissions"] == "0600", entry["path"]
    # the names may be mentioned; the values never are
    for path, text in {**units(files), **scripts(files)}.items():
        assert not any(v in text for v in values), path
    assert "--env-file /etc/blueprints/secrets/web.env" in files[APP + "run-web"]
    assert "--env-file" not in files[APP + "run-redis"]


@pytest.mark.parametrize("bad", ["two\nlines", "carriage\rreturn", "nul\0byte"])
def test_secret_that_cannot_be_one_env_file_line_is_rejected(bad: str):
    app = spec()
    secrets = {**secrets_for(app), "DJANGO_SECRET_KEY": bad}
    with pytest.raises(ValueError, match="DJANGO_SECRET_KEY"):
        secret_files(app, secrets)


def test_missing_secret_is_named():
    app = spec()
    secrets = secrets_for(app)
    del secrets["POSTGRES_PASSWORD"]
    with pytest.raises(ValueError, match=r"POSTGRES_PASSWORD.*postgres"):
        render_node_files(context(app, secrets=secrets))


def test_docker_env_file_keeps_values_verbatim():
    text = docker_env_file({"B": " spaced = 'q' \"x\" $(y) #no-comment ", "A": ""})
    assert text == "A=\nB= spaced = 'q' \"x\" $(y) #no-comment \n"


# --- primary, spare, floating IP -------------------------------------------------------------


def test_no_node_ever_powers_itself_off():
    """No power_state (no first-boot self-parking): the program keeps each node's power through
    the cloud's API, so a node meant to be active never ends up off by its own boot. Primary and
    spare get byte-identical user data, on both clouds."""
    app = spec()
    for ctx in (primary(app), spare(app), aws_node(app), context(app, "spare", floating_ip=None)):
        text = render_cloud_init(ctx)
        assert "power_state" not in user_data(ctx)
        assert "poweroff" not in text
    assert render_cloud_init(primary(app)) == render_cloud_init(spare(app))
    assert render_node_files(primary(app)) == render_node_files(spare(app))


# --- the warm standby's images ---------------------------------------------------------------


def test_standby_images_are_the_release_images_and_the_proxy():
    app = spec()
    assert standby_images(app) == sorted(
        {svc.image for svc in app.services.values()} | {CADDY_IMAGE}
    )
    assert standby_images_text(app) == "".join(f"{i}\n" for i in standby_images(app))
    # no http route: no proxy runs, so its image is not pulled either
    data = copy.deepcopy(EXAMPLE_DATA)
    data["services"]["web"]["ports"] = [{"port": 8000}]
    assert CADDY_IMAGE not in standby_images(spec(data))


def test_the_standby_leaves_images_of_registries_with_credentials_to_the_promotion():
    """The standby holds no secret, so it cannot pull a private image ahead."""
    from blueprints.render.single_vm import private_standby_images

    app = everything()
    private = "ghcr.io/example/full-web:2.0.1"
    assert private_standby_images(app) == [private]
    assert private not in standby_images(app)
    assert standby_images(app) == sorted({"postgres:16.4", "redis:7.4-alpine", CADDY_IMAGE})


def _fake_bin(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


def run_pull_images(
    tmp_path: Path,
    stdin: str,
    fail: str = "",
    *,
    command: str = PULL_IMAGES_COMMAND,
    hang: str = "",
    stderr: list[str] | None = None,
) -> tuple[int, list[str]]:
    """Run PULL_IMAGES_COMMAND (or `command`) as the deploy user's shell would, with stand-ins
    for sudo, docker and cloud-init that record what they were asked. `fail`: the image whose
    pull fails; `hang`: "cloud-init", or the image whose pull hangs. `stderr` gets its lines."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    log = tmp_path / "calls"
    log.write_text("")
    _fake_bin(bin_dir, "sudo", 'exec "$@"\n')
    _fake_bin(
        bin_dir,
        "cloud-init",
        f'echo "cloud-init $*" >> {shlex.quote(str(log))}\n'
        + ("exec sleep 30\n" if hang == "cloud-init" else ""),
    )
    _fake_bin(
        bin_dir,
        "docker",
        f'echo "docker $*" >> {shlex.quote(str(log))}\n'
        f'[ "$3" != {shlex.quote(fail)} ] || exit 1\n'
        f'[ "$3" != {shlex.quote(hang)} ] || exec sleep 30\n'
        # docker pull must not eat the list of images on stdin
        "cat > /dev/null\n",
    )
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    proc = subprocess.run(
        ["bash", "-c", command],
        input=stdin,
        text=True,
        env=env,
        capture_output=True,
        timeout=30,
    )
    if stderr is not None:
        stderr[:] = proc.stderr.splitlines()
    return proc.returncode, log.read_text().splitlines()


def test_pull_images_pulls_each_image_on_stdin_once(tmp_path: Path):
    images = standby_images_text(spec())
    code, calls = run_pull_images(tmp_path, images + "\n")
    assert code == 0
    assert calls[0] == "cloud-init status --wait"
    assert calls[1:] == [f"docker pull --quiet {i}" for i in standby_images(spec())]
    # a failed pull fails the command (and so `pulumi up`), naming nothing else
    code, calls = run_pull_images(tmp_path, images, fail="postgres:16.4")
    assert code == 1
    assert calls[-1] == "docker pull --quiet postgres:16.4"
    # a hostile image name is an argument, never a command
    marker = tmp_path / "pwned"
    code, calls = run_pull_images(tmp_path, f"x; touch {marker}\n$(touch {marker})\n")
    assert code == 0 and not marker.exists()
    assert calls[1:] == [
        f"docker pull --quiet x; touch {marker}",
        f"docker pull --quiet $(touch {marker})",
    ]


def test_pull_images_is_bounded(tmp_path: Path):
    """A first boot that never ends, or a registry that never answers, fails the command (and
    `pulumi up`) with one line saying which, instead of holding it forever."""
    assert "timeout 3000 cloud-init status --wait" in PULL_IMAGES_COMMAND
    assert "sudo timeout 600 docker pull" in PULL_IMAGES_COMMAND
    short = pull_images_command(boot_wait=1, pull_wait=1)
    images = standby_images_text(spec())
    lines: list[str] = []
    started = time.monotonic()
    code, calls = run_pull_images(tmp_path, images, command=short, hang="cloud-init", stderr=lines)
    assert code == 1 and calls == ["cloud-init status --wait"]
    assert lines == [
        "blueprints: cloud-init still runs after 1s on this node; its first boot did not finish"
    ]
    hang = "postgres:16.4"
    code, calls = run_pull_images(tmp_path, images, command=short, hang=hang, stderr=lines)
    assert code == 1 and calls[-1] == "docker pull --quiet postgres:16.4"
    assert lines == ["blueprints: docker pull postgres:16.4 failed or took longer than 1s"]
    assert time.monotonic() - started < 10
    # cloud-init's own verdict (2: recoverable errors) is no reason to stop
    code, _ = run_pull_images(tmp_path, images, command=short.replace("cloud-init", "false"))
    assert code == 0


def test_pull_images_passes_shellcheck(tmp_path: Path):
    script = tmp_path / "pull-images"
    script.write_text("#!/bin/sh\n" + PULL_IMAGES_COMMAND + "\n")
    validators.shellcheck(script, "sh")


def test_node_name_does_not_reach_any_file():
    app = spec()
    a = context(app, "primary")
    b = context(app, "some-other-node-name")
    assert render_cloud_init(a) == render_cloud_init(b)


def test_floating_ip_netplan_present_iff_floating_ip():
    files = render_node_files(primary())
    netplan = yaml.safe_load(files["/etc/netplan/60-floating-ip.yaml"])
    assert netplan == {
        "network": {"version": 2, "ethernets": {"eth0": {"addresses": [f"{FLOATING_IP}/32"]}}}
    }
    assert file_permissions("/etc/netplan/60-floating-ip.yaml") == "0600"
    assert "netplan apply" in user_data(primary())["runcmd"]
    v6 = render_node_files(context(spec(), floating_ip="2001:db8::1"))
    assert "2001:db8::1/64" in v6["/etc/netplan/60-floating-ip.yaml"]
    ctx = context(spec(), floating_ip=None, device=AWS_DEVICE)
    assert not [p for p in render_node_files(ctx) if p.startswith("/etc/netplan/")]
    assert not [c for c in user_data(ctx)["runcmd"] if "netplan" in c]
    with pytest.raises(ValueError, match="floating_ip"):
        render_node_files(context(spec(), floating_ip="10.0.0.1; reboot"))


# --- data volume -----------------------------------------------------------------------------


def test_data_volume_mount_and_layout():
    files = render_node_files(context(spec(), device=AWS_DEVICE))
    mount = files[UNITS + "srv-data.mount"]
    assert unit_values(mount, "What") == [AWS_DEVICE]
    assert unit_values(mount, "Where") == ["/srv/data"]
    assert unit_values(mount, "Type") == ["ext4"]
    assert "nofail" in unit_values(mount, "Options")[0].split(",")
    assert unit_values(mount, "Requires") == ["blueprints-format-data.service"]
    dropin = UNITS + systemd_escape_path(AWS_DEVICE) + ".device.d/blueprints-timeout.conf"
    assert unit_values(files[dropin], "JobRunningTimeoutSec") == ["180s"]
    prepare = files[SCRIPTS + "prepare-data"]
    assert "for dir in /srv/data/.blueprints /srv/data/caddy; do" in prepare
    assert 'install -d -m 0700 "$dir"' in prepare
    # the app's volume directories come with the release (the agent creates them)
    document = yaml.safe_load(release_documents(spec(), "key", secrets_for(spec())).release)
    assert document["volumes"] == ["pgdata"]
    assert "--volume /srv/data/pgdata:/var/lib/postgresql/data" in files[APP + "run-postgres"]
    assert "--volume /srv/data/caddy:/data" in files[SCRIPTS + "caddy"]


def test_bad_data_device_is_rejected():
    for bad in (
        "/dev/disk/by-id/x y",
        "/dev/%n",
        "relative",
        "/dev/../etc/passwd",
        "/dev/$x",
        "/dev/disk/by-id/x\n",
        "/dev/x'; poweroff; '",
    ):
        with pytest.raises(ValueError, match="data_device"):
            render_node_files(context(spec(), device=bad))
        with pytest.raises(ValueError, match="data_device"):
            render_cloud_init(context(spec(), device=bad))


def test_unit_filters_refuse_a_final_newline():
    for value in ("app.target\n", "a b", "x\nExecStart=/bin/sh"):
        with pytest.raises(ValueError):
            unit_word(value)
        with pytest.raises(ValueError):
            unit_name(value)
    for bad in ("dev-\\x2", "dev-\\x2G.device", "dev\\n.device", "a/b.device"):
        with pytest.raises(ValueError):
            unit_name(bad)
    assert unit_name(systemd_escape_path(HCLOUD_DEVICE) + ".device") == (
        "dev-disk-by\\x2did-scsi\\x2d0HC_Volume_12345678.device"
    )


@pytest.mark.parametrize(
    "ctx", [pytest.param(primary(), id="hcloud"), pytest.param(aws_node(), id="aws")]
)
def test_a_volume_attached_after_boot_starts_the_app(ctx: NodeContext, tmp_path: Path):
    """The release unit is active only with /srv/data mounted and is wanted by the volume's
    device, so a volume that appears after the mount gave up (late attach, failover to a running
    node) starts it: it mounts the volume and starts the release found there, every service."""
    files = render_node_files(ctx)
    device_unit = systemd_escape_path(ctx.data_device) + ".device"
    release = files[UNITS + "blueprints-release.service"]
    assert unit_values(release, "RequiresMountsFor") == ["/srv/data"]
    assert unit_values(release, "WantedBy") == ["multi-user.target", device_unit]
    agent = "/srv/data/.blueprints/release-agent"
    assert unit_values(release, "ConditionPathExists") == [agent]
    assert unit_values(release, "ExecStart") == [SCRIPTS + "release-agent", "activate"]
    # a node without the volume still starts nothing: every unit the app wants needs the mount
    target = files[UNITS + "app.target"]
    assert unit_values(target, "RequiresMountsFor") == ["/srv/data"]
    for unit in unit_values(target, "Wants"):
        text = files[UNITS + re.sub(r"@\d+\.", "@.", unit)]
        if not unit.endswith(".timer"):
            assert unit_values(text, "RequiresMountsFor") == ["/srv/data"], unit
    assert "systemctl enable blueprints-release.service" in user_data(ctx)["runcmd"]
    root = validators.systemd_root(files, tmp_path / "root", executable=programs(files))
    validators.systemctl_enable(root, "blueprints-release.service")
    system = root / "etc/systemd/system"
    for wants in (f"{device_unit}.wants", "multi-user.target.wants"):
        link = system / wants / "blueprints-release.service"
        assert link.is_symlink()
        assert os.readlink(link) == "/etc/systemd/system/blueprints-release.service"
    validators.systemd_verify(root, ["app.target", "blueprints-release.service", device_unit])


def _block_device(tmp_path: Path) -> Path:
    node = tmp_path / "disk"
    try:
        os.mknod(node, 0o600 | stat.S_IFBLK, os.makedev(7, 250))
        return node
    except OSError:
        pytest.skip("cannot create a block device node here (needs root / CAP_MKNOD)")


@pytest.mark.parametrize(
    ("blkid_status", "formats", "ok"),
    [
        ("0", False, True),  # has a filesystem: leave it alone
        ("2", True, True),  # blank: format
        ("8", False, False),  # ambivalent probe: refuse
        ("4", False, False),  # usage error: refuse
    ],
)
def test_format_data_formats_only_a_blank_device(
    tmp_path: Path, blkid_status: str, formats: bool, ok: bool
):
    device = _block_device(tmp_path)
    box = Sandbox(tmp_path / "box", render_node_files(context(spec(), device=str(device))))
    proc = box.run("format-data", STUB_BLKID_STATUS=blkid_status)
    assert (proc.returncode == 0) is ok, proc.stderr
    calls = box.recorded()
    assert calls[0] == ["blkid", "-p", str(device)]
    mkfs = [c for c in calls if c[0] == "mkfs.ext4"]
    assert mkfs == ([["mkfs.ext4", "-q", "-L", "blueprints-data", str(device)]] if formats else [])


# --- check_app: the blueprint's own rules, reported before anything is created -------------

RESERVED = (
    "is reserved by the single-vm blueprint for the reverse proxy's TLS state "
    "(/srv/data/caddy); rename the volume"
)
NUL = "contains a NUL character, which no process can receive"


def _tcp_replicas(data: dict[str, Any]) -> None:
    data["services"]["redis"]["ports"] = [
        {"port": 6379, "expose": "tcp", "public_port": 16379},
        {"port": 6380},
    ]
    data["services"]["redis"]["replicas"] = 2


def _two_tcp_ports(data: dict[str, Any]) -> None:
    data["services"]["redis"]["ports"] = [
        {"port": 6379, "expose": "tcp", "public_port": 16379},
        {"port": 6380, "expose": "tcp"},
    ]
    data["services"]["redis"]["replicas"] = 3


def _set(path: tuple[str | int, ...], value: Any):
    def change(data: dict[str, Any]) -> None:
        node: Any = data
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return change


CHECK_APP_CASES = {
    "reserved-volume": (
        _set(("volumes", "caddy"), {"size_gb": 1}),
        [(("volumes", "caddy"), RESERVED)],
    ),
    "tcp-port-with-replicas": (
        _tcp_replicas,
        [
            (
                ("services", "redis", "replicas"),
                "must be 1 for a service with an expose: tcp port; the single-vm blueprint "
                "publishes host port 16379 once, for one container (got 2)",
            )
        ],
    ),
    "tcp-ports-with-replicas": (
        _two_tcp_ports,
        [
            (
                ("services", "redis", "replicas"),
                "must be 1 for a service with an expose: tcp port; the single-vm blueprint "
                "publishes host ports 16379, 6380 once, for one container (got 3)",
            )
        ],
    ),
    "nul-in-env": (
        _set(("services", "redis", "env"), {"OK": "fine", "BAD": "a\0b"}),
        [(("services", "redis", "env", "BAD"), NUL)],
    ),
    "nul-in-command": (
        _set(("services", "redis", "command"), ["ok", "a\0b"]),
        [(("services", "redis", "command", 1), NUL)],
    ),
    "nul-in-health-command": (
        _set(("services", "worker", "health", "command"), ["celery", "\0"]),
        [(("services", "worker", "health", "command", 1), NUL)],
    ),
    "nul-in-health-path": (
        _set(("services", "web", "health", "path"), "/healthz\0"),
        [(("services", "web", "health", "path"), NUL)],
    ),
}


def test_check_app_accepts_the_example_and_the_minimal_app():
    assert check_app(spec()) == []
    assert check_app(spec(MINIMAL)) == []


@pytest.mark.parametrize("case", sorted(CHECK_APP_CASES))
def test_check_app_names_the_field_of_each_problem(case: str):
    change, expected = CHECK_APP_CASES[case]
    data = copy.deepcopy(EXAMPLE_DATA)
    change(data)
    app = spec(data)
    assert check_app(app) == expected
    # the renderer refuses the same spec, with the same lines
    lines = "\n".join(f"{format_path(path)}: {msg}" for path, msg in expected)
    with pytest.raises(ValueError) as raised:
        release_files(app)
    assert str(raised.value) == lines


def test_check_app_reports_every_problem_at_once():
    data = copy.deepcopy(EXAMPLE_DATA)
    for change, _ in CHECK_APP_CASES.values():
        if change is not _two_tcp_ports:
            change(data)
    data["services"]["redis"]["env"]["ALSO_BAD"] = "\0"
    problems = check_app(spec(data))
    assert [path for path, _ in problems] == [
        ("volumes", "caddy"),
        ("services", "redis", "replicas"),
        ("services", "redis", "env", "ALSO_BAD"),
        ("services", "redis", "env", "BAD"),
        ("services", "redis", "command", 1),
        ("services", "web", "health", "path"),
        ("services", "worker", "health", "command", 1),
    ]
    with pytest.raises(ValueError) as raised:
        render_node_files(primary(spec(data)))
    assert str(raised.value).splitlines() == [
        "volumes.caddy: " + RESERVED,
        "services.redis.replicas: must be 1 for a service with an expose: tcp port; the "
        "single-vm blueprint publishes host port 16379 once, for one container (got 2)",
        "services.redis.env.ALSO_BAD: " + NUL,
        "services.redis.env.BAD: " + NUL,
        "services.redis.command[1]: " + NUL,
        "services.web.health.path: " + NUL,
        "services.worker.health.command[1]: " + NUL,
    ]


# --- Caddy and published ports ---------------------------------------------------------------


def test_caddy_routes_every_public_http_port():
    data = copy.deepcopy(EXAMPLE_DATA)
    data["services"]["web"]["ports"] = [
        {"port": 8000, "expose": "http"},
        {"port": 8001, "expose": "http", "path": "/api"},
        {"port": 8002, "expose": "http", "host": "admin.example.com"},
        {"port": 8003, "expose": "http", "path": "/api/v2/"},
    ]
    data["services"]["redis"]["ports"].append({"port": 9000, "expose": "http", "path": "/cache"})
    app = spec(data)
    files = render_node_files(primary(app))
    config = json.loads(files["/etc/blueprints/caddy.json"])
    routes = config["apps"]["http"]["servers"]["app"]["routes"]
    seen = []
    for route in routes:
        [match] = route["match"]
        [handler] = route["handle"]
        assert handler["handler"] == "reverse_proxy" and route["terminal"] is True
        dials = [u["dial"] for u in handler["upstreams"]]
        seen.append((match["host"], match.get("path"), dials))
    assert seen == [
        # replicas and the surge slot
        (["admin.example.com"], None, ["web-1:8002", "web-2:8002", "web-3:8002"]),
        (
            ["shop.example.com"],
            ["/api/v2", "/api/v2/*"],
            ["web-1:8003", "web-2:8003", "web-3:8003"],
        ),
        (["shop.example.com"], ["/cache", "/cache/*"], ["redis-1:9000", "redis-2:9000"]),
        (["shop.example.com"], ["/api", "/api/*"], ["web-1:8001", "web-2:8001", "web-3:8001"]),
        (["shop.example.com"], None, ["web-1:8000", "web-2:8000", "web-3:8000"]),
    ]
    issuers = config["apps"]["tls"]["automation"]["policies"][0]["issuers"]
    assert issuers == [{"module": "acme", "email": "ops@example.com"}]
    assert config["apps"]["http"]["servers"]["app"]["listen"] == [":443"]
    assert (
        files["/etc/blueprints/caddy.json"] == json.dumps(config, sort_keys=True, indent=2) + "\n"
    )
    web_proxy = routes[-1]["handle"][0]
    assert web_proxy["health_checks"]["active"]["uri"] == "/healthz"
    # a dial to a stopped replica gives up in a second and the request goes to another
    assert web_proxy["transport"] == {"protocol": "http", "dial_timeout": "1s"}
    assert web_proxy["load_balancing"]["try_duration"] == "5s"
    assert "health_checks" not in routes[2]["handle"][0]  # redis has a tcp check


def test_caddy_container_publishes_80_and_443(tmp_path: Path):
    box = Sandbox(tmp_path, render_node_files(primary()))
    assert box.run("caddy", "start").returncode == 0
    [call] = box.recorded()
    assert call == [
        "docker",
        "run",
        "--rm",
        "--name",
        "blueprints_caddy",
        "--network",
        "shop-net",
        "--publish",
        "80:80",
        "--publish",
        "443:443",
        "--volume",
        "/etc/blueprints/caddy.json:/etc/caddy/caddy.json:ro",
        "--volume",
        "/srv/data/caddy:/data",
        "caddy:2.8.4",
        "caddy",
        "run",
        "--config",
        "/etc/caddy/caddy.json",
    ]


# --- containers cannot reach the cloud metadata service --------------------------------------

GUARD = "blueprints-metadata-guard.service"
METADATA_RULE = ["--destination", "169.254.169.254", "--jump", "DROP"]


@pytest.mark.parametrize(
    "data", [pytest.param(EXAMPLE_DATA, id="example"), pytest.param(MINIMAL, id="minimal")]
)
def test_every_container_unit_requires_the_metadata_guard(data: dict[str, Any]):
    files = render_node_files(primary(spec(data)))
    guard = files[UNITS + GUARD]
    assert unit_values(guard, "Requires") == ["docker.service"]
    assert unit_values(guard, "After") == ["docker.service"]
    assert unit_values(guard, "Type") == ["oneshot"]
    assert unit_values(guard, "RemainAfterExit") == ["yes"]
    assert unit_values(guard, "ExecStart") == [SCRIPTS + "metadata-guard"]
    # every unit that runs a container: one per service, and the proxy when there is one
    runners = [p for p in units(files) if p.endswith("@.service")]
    runners += [p for p in units(files) if p.endswith("blueprints-caddy.service")]
    # the proxy's unit is part of every bootstrap
    assert len(runners) == len(data["services"]) + 1
    for path in runners:
        assert GUARD in unit_values(files[path], "Requires"), path
        assert GUARD in unit_values(files[path], "After"), path


def test_metadata_guard_inserts_its_rule_once(tmp_path: Path):
    box = Sandbox(tmp_path, render_node_files(primary()))
    check = ["iptables", "--wait", "--check", "DOCKER-USER", *METADATA_RULE]
    insert = ["iptables", "--wait", "--insert", "DOCKER-USER", *METADATA_RULE]
    proc = box.run("metadata-guard")  # the rule is missing
    assert proc.returncode == 0, proc.stderr
    assert box.recorded() == [check, insert]
    proc = box.run("metadata-guard", STUB_IPTABLES_CHECK="0")  # already there
    assert proc.returncode == 0, proc.stderr
    assert box.recorded() == [check]
    # no DOCKER-USER chain (docker without iptables): fail, so no container starts unguarded
    proc = box.run("metadata-guard", STUB_IPTABLES_INSERT="1")
    assert proc.returncode != 0
    assert box.recorded() == [check, insert]


def test_no_http_port_means_no_proxy():
    data = copy.deepcopy(EXAMPLE_DATA)
    data["services"]["web"]["ports"] = [{"port": 8000}]
    files = render_node_files(primary(spec(data)))
    # the proxy is installed with the machine and runs only once a release brings its routes
    assert "/etc/blueprints/caddy.json" not in files
    assert "blueprints-caddy" not in files[UNITS + "app.target"]
    caddy = files[UNITS + "blueprints-caddy.service"]
    assert unit_values(caddy, "ConditionPathExists") == ["/etc/blueprints/caddy.json"]


def test_public_tcp_port_is_published(tmp_path: Path):
    data = copy.deepcopy(EXAMPLE_DATA)
    data["services"]["postgres"]["ports"] = [{"port": 5432, "expose": "tcp", "public_port": 15432}]
    app = spec(data)
    box = Sandbox(tmp_path, render_node_files(primary(app)))
    box.run("run-postgres", "start", "1")
    [call] = box.recorded()
    assert call == expected_docker_run(app, "postgres")
    assert call[call.index("--publish") + 1] == "15432:5432"


# --- determinism -------------------------------------------------------------------------------


def test_same_input_same_bytes():
    assert render_cloud_init(spare()) == render_cloud_init(spare())
    assert render_node_files(primary()) == render_node_files(primary())
    # insertion order of the spec's mappings must not matter either
    data = copy.deepcopy(EXAMPLE_DATA)
    data["services"] = dict(reversed(list(data["services"].items())))
    for svc in data["services"].values():
        svc["env"] = dict(reversed(list(svc.get("env", {}).items())))
        svc["depends_on"] = list(reversed(svc.get("depends_on", [])))
    app = spec(data)
    assert render_cloud_init(context(app, "spare")) == render_cloud_init(spare())


# --- injection: hostile values change no structure and survive the round trip ----------------

PWNED = "/tmp/blueprints-pwned"
NASTY = [
    "it's",
    'say "hi"',
    f"$(touch {PWNED})",
    f"`touch {PWNED}`",
    "${HOME}",
    "$HOME",
    "%n %i %%",
    "a; touch /tmp/blueprints-pwned; b",
    "' ; touch /tmp/blueprints-pwned ; '",
    "back\\slash\\",
    "tab\there",
    "-rm",
    "*",
    "~",
    "#not-a-comment",
    "!!",
    "",
    " leading and trailing ",
    "unicode é ✓ \u2028 \x85",
    "{{ jinja }} {% raw %}",
    "\\\n",
    "\u201ccurly\u201d \u2018quotes\u2019",
]
NASTY_MULTILINE = [*NASTY, "line one\nline two", "ends with newline\n", "\n\nblank lines\n\n"]
NASTY_PATH = "/h'\"$(touch${IFS}/tmp/blueprints-pwned)`id`${HOME}%6e;&|<>*?~!#"


def nasty_data() -> dict[str, Any]:
    data = copy.deepcopy(EXAMPLE_DATA)
    web = data["services"]["web"]
    # $${ is a literal ${ in the spec: the container gets the value as written here.
    web["env"] = {f"NASTY_{i}": v.replace("${", "$${") for i, v in enumerate(NASTY_MULTILINE)}
    web["command"] = list(NASTY_MULTILINE)
    web["health"]["path"] = NASTY_PATH
    data["services"]["worker"]["health"]["command"] = ["sh", "-c", *NASTY_MULTILINE]
    data["services"]["redis"]["command"] = [*NASTY, "--", "-"]
    return data


def nasty_secrets(app: AppSpec) -> dict[str, str]:
    single_line = [v for v in NASTY if "\n" not in v and "\x85" not in v]
    return {
        n: single_line[i % len(single_line)] + f"#{n}" for i, n in enumerate(app.secret_names())
    }


def test_hostile_values_change_no_structure(tmp_path: Path):
    clean_app, evil_app = spec(), spec(nasty_data())
    clean = context(clean_app)
    evil = context(evil_app, secrets=nasty_secrets(evil_app))
    clean_files, evil_files = render_node_files(clean), render_node_files(evil)
    assert list(clean_files) == list(evil_files)
    # units carry no spec values at all, so they are byte for byte the same
    assert units(clean_files) == units(evil_files)
    clean_data, evil_data = user_data(clean), user_data(evil)
    assert set(clean_data) == set(evil_data)
    for key in clean_data:
        if key != "write_files":
            assert clean_data[key] == evil_data[key]
    evil_written = {f["path"]: f["content"] for f in evil_data["write_files"]}
    assert [f["path"] for f in clean_data["write_files"]] == list(evil_written)
    # the user data is the bootstrap, which no service, env value or secret reaches
    assert evil_written == {p: f.content for p, f in bootstrap_files(evil).items()}
    assert evil_written == {f["path"]: f["content"] for f in clean_data["write_files"]}
    validators.cloud_init_schema(render_cloud_init(evil), tmp_path)
    _verify_units(evil_files, tmp_path)


def test_hostile_values_keep_scripts_valid(tmp_path: Path):
    evil_app = spec(nasty_data())
    files = render_node_files(context(evil_app, secrets=nasty_secrets(evil_app)))
    for path, text in scripts(files).items():
        target = tmp_path / Path(path).name
        target.write_text(text)
        proc = subprocess.run(
            ["bash", "-n", str(target)], capture_output=True, text=True, check=False
        )
        assert proc.returncode == 0, (path, proc.stderr)
        validators.shellcheck(target, "bash")


def test_hostile_values_survive_the_round_trip(tmp_path: Path):
    Path(PWNED).unlink(missing_ok=True)
    evil_app = spec(nasty_data())
    files = render_node_files(context(evil_app, secrets=nasty_secrets(evil_app)))
    box = Sandbox(tmp_path, files)
    for name in ("web", "redis", "worker"):
        proc = box.run(f"run-{name}", "start", "1")
        assert proc.returncode == 0, proc.stderr
        assert box.recorded() == [expected_docker_run(evil_app, name)]
    box.run("health-worker", "check")
    assert box.recorded() == [
        ["docker", "exec", "worker-1", *evil_app.services["worker"].health.command]
    ]
    box.run("health-web", "check")
    urls = [c[-1] for c in box.recorded() if c[0] == "curl"]
    assert urls == [f"http://10.0.0.2:8000{NASTY_PATH}"] * 2
    for name, value in nasty_secrets(evil_app).items():
        holders = [p for p, t in files.items() if f"\n{name}={value}\n" in "\n" + t]
        assert holders and all(p.startswith(SECRETS) for p in holders)
    assert not Path(PWNED).exists()


# Values a process can receive: anything but NUL (surrogates cannot be encoded at all). Half the
# examples draw from characters that mean something to a shell, YAML, jinja or systemd.
SPECIAL = "'\"\\$`!#%*?[]{}()<>;|&~=-: \t\n\r\x1b\x85\u2028\u00a0\u201c\u2019ab"
env_value = st.one_of(
    st.text(st.sampled_from(SPECIAL), max_size=16),
    st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\0"), max_size=40),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    env=st.dictionaries(
        st.from_regex(r"[A-Z_][A-Z0-9_]{0,8}", fullmatch=True), env_value, max_size=4
    ),
    command=st.lists(env_value, max_size=4),
)
def test_any_env_value_and_argument_round_trips(tmp_path_factory, env, command):
    data = copy.deepcopy(EXAMPLE_DATA)
    data["services"]["redis"]["env"] = {k: v.replace("${", "$${") for k, v in env.items()}
    data["services"]["redis"]["command"] = command
    app = spec(data)
    ctx = context(app)
    files = render_node_files(ctx)
    # the values travel in the release document (YAML, texts as blocks where they can be)
    document = parse_release(release_documents(app, "key", secrets_for(app)).release)
    written = {path: entry["text"] for path, entry in document["files"].items()}
    assert written == {path: f.content for path, f in release_files(app).items()}
    box = Sandbox(tmp_path_factory.mktemp("box"), files)
    proc = box.run("run-redis", "start", "1")
    assert proc.returncode == 0, proc.stderr
    assert box.recorded() == [expected_docker_run(app, "redis")]


@settings(max_examples=15, deadline=None)
@given(values=st.lists(env_value, min_size=1, max_size=5))
def test_scripts_with_any_values_pass_shellcheck(tmp_path_factory, values):
    data = copy.deepcopy(EXAMPLE_DATA)
    data["services"]["redis"]["env"] = {
        f"V{i}": v.replace("${", "$${") for i, v in enumerate(values)
    }
    data["services"]["redis"]["command"] = values
    data["services"]["worker"]["health"]["command"] = values
    files = render_node_files(primary(spec(data)))
    workdir = tmp_path_factory.mktemp("shellcheck")
    for name in ("run-redis", "health-worker"):
        target = workdir / name
        target.write_text(files[APP + name])
        validators.shellcheck(target, "bash")


@given(st.text(st.characters(blacklist_categories=["Cs"]), max_size=60))
def test_yaml_serializer_round_trips_any_text(text):
    assert yaml.safe_load(dump_yaml({"content": text, "other": [text]})) == {
        "content": text,
        "other": [text],
    }


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"env": {"BAD": "a\0b"}}, "env.BAD"),
        ({"command": ["ok", "a\0b"]}, "command[1]"),
        ({"entrypoint": ["a\0b", "ok"]}, "entrypoint[0]"),
        ({"health": {"type": "command", "command": ["a\0b"]}}, "health.command[0]"),
        ({"health": {"type": "http", "path": "/a\0b"}, "ports": [{"port": 1}]}, "health.path"),
    ],
)
def test_value_with_nul_is_rejected(fields: dict[str, Any], named: str):
    data = with_service(EXAMPLE_DATA, "redis", **fields)
    with pytest.raises(ValueError) as raised:
        render_node_files(primary(spec(data)))
    assert str(raised.value) == f"services.redis.{named}: {NUL}"


# --- golden files --------------------------------------------------------------------------------


# Every node of a stack gets the same user data, so one golden set per cloud: hcloud (floating
# IP configured in the OS, a stack with backup storage) and aws (neither).
GOLDEN_NODES = {
    "hcloud": lambda: dataclasses.replace(spare(), backup_storage=STORAGE),
    "aws": aws_node,
}


@pytest.mark.parametrize("node", sorted(GOLDEN_NODES))
def test_golden_files(node: str, update_golden: bool):
    ctx = GOLDEN_NODES[node]()
    rendered = {p.lstrip("/"): t for p, t in render_node_files(ctx).items()}
    rendered["cloud-init.yaml"] = render_cloud_init(ctx)
    # what the release channel sends (its digests keyed with a fixed stand-in key)
    rendered["release.yaml"] = release_documents(
        ctx.app, "golden-key", ctx.secrets, ctx.backup_storage
    ).release
    check_golden(GOLDEN / node, rendered, update_golden)


def test_golden_sets_are_exactly_the_nodes(update_golden: bool):
    stale = {p for p in GOLDEN.iterdir() if p.name not in GOLDEN_NODES}
    check_no_stale_sets(stale, update_golden)


def test_golden_example_mentions_no_real_secret():
    for path in GOLDEN.rglob("*"):
        if path.is_file():
            assert re.search(r"PASSWORD=(?!PLACEHOLDER-)", path.read_text()) is None, path


# --- every field of the spec (tests/everything/app.yaml) -----------------------------------------

EVERYTHING = ROOT / "tests" / "everything" / "app.yaml"
SECRET_MARK = "S3CR3T-xyz"


def everything(edit=None) -> AppSpec:
    data = yaml.safe_load(EVERYTHING.read_text())
    if edit is not None:
        edit(data)
    return parse_spec(data, str(EVERYTHING), EVERYTHING.parent)


def everything_secrets(app: AppSpec) -> dict[str, str]:
    return secrets_for(app, lambda name: f"{SECRET_MARK}-{name}")


def everything_documents(app: AppSpec) -> tuple[dict[str, Any], dict[str, Any]]:
    docs = release_documents(app, "key", everything_secrets(app))
    assert docs.secrets is not None
    return parse_release(docs.release), yaml.safe_load(docs.secrets)


def test_every_new_field_reaches_the_rendered_files(tmp_path: Path):
    app = everything()
    release, secret = everything_documents(app)
    files = {p: e["text"] for p, e in release["files"].items()}
    web = app.services["web"]
    box = Sandbox(tmp_path, render_node_files(context(app, secrets=everything_secrets(app))))
    # entrypoint: docker's --entrypoint takes the program, the rest goes before the command
    box.run("run-web", "start", "1")
    (run,) = box.recorded()
    assert run == expected_docker_run(app, "web")
    image_at = run.index(web.image)
    assert run[run.index("--entrypoint") + 1] == "/usr/bin/tini"
    command = ["gunicorn", "full.wsgi", "--bind", "0.0.0.0:80", "--workers", "3"]
    assert run[image_at + 1 :] == ["--", *command]
    # env: plain values resolved on the command line, secret ones only in the secret env file
    assert {"WORKERS=3", "DEBUG=false", "REDIS_URL=redis://redis:6379/0"} <= set(run)
    assert not [a for a in run if a.startswith("DATABASE_URL")]
    web_env = secret["files"][f"{SECRETS}web.env"]["text"]
    password = f"{SECRET_MARK}-POSTGRES_PASSWORD"
    assert f"DATABASE_URL=postgres://full:{password}@postgres:5432/full\n" in web_env
    assert f"DJANGO_SECRET_KEY={SECRET_MARK}-DJANGO_SECRET_KEY\n" in web_env
    # files: plain ones are release files with their mode, secret ones secret files with theirs
    by_path = {f.path: f for f in web.files}
    settings_file = f"/etc/blueprints/files/web/{by_path['/etc/full/settings.ini'].key}"
    nginx = f"/etc/blueprints/files/web/{by_path['/etc/full/nginx.conf'].key}"
    secret_file = f"{SECRETS}files/web/{by_path['/run/secrets/db_password'].key}"
    assert release["files"][settings_file] == {
        "mode": "0444",
        "text": "[web]\nupstream = redis:6379\n",
    }
    assert release["files"][nginx]["mode"] == "0440"
    assert release["files"][nginx]["text"] == (EVERYTHING.parent / "config/nginx.conf").read_text()
    assert secret["files"][secret_file] == {"mode": "0400", "text": password}
    assert not [p for p in release["files"] if "db_password" in p]
    for path, target in [
        (settings_file, "/etc/full/settings.ini"),
        (nginx, "/etc/full/nginx.conf"),
        (secret_file, "/run/secrets/db_password"),
    ]:
        assert f"{path}:{target}:ro" in run
    # registries: a docker config in the secrets, read by what pulls a ghcr.io image
    config = json.loads(secret["files"]["/etc/blueprints/secrets/docker/config.json"]["text"])
    token = config["auths"]["ghcr.io"]["auth"]
    assert base64.b64decode(token).decode() == f"full-bot:{SECRET_MARK}-GHCR_TOKEN"
    assert secret["files"]["/etc/blueprints/secrets/docker/config.json"]["mode"] == "0600"
    docker_config = "export DOCKER_CONFIG=/etc/blueprints/secrets/docker\n"
    for script in ("run-web", "run-worker", "task-migrate", "schedule-report"):
        assert docker_config in files[APP + script], script
    assert docker_config not in files[APP + "run-postgres"]  # docker.io: no credentials
    # container_port: the proxy, probes and other services reach the container side
    caddy = json.loads(files["/etc/blueprints/caddy.json"])
    dials = [
        u["dial"]
        for u in caddy["apps"]["http"]["servers"]["app"]["routes"][0]["handle"][0]["upstreams"]
    ]
    assert dials == ["web-1:80", "web-2:80"]
    assert "port=6379\n" in files[APP + "health-redis"]
    assert "port=80\n" in files[APP + "health-web"]
    # shared volumes: the same directory in each service
    box.run("run-worker", "start", "1")
    assert "/srv/data/uploads:/srv/uploads:ro" in box.recorded()[0]
    assert "/srv/data/uploads:/srv/uploads" in run
    # tasks: a script each, in the release document in the order written
    assert release["tasks"] == [
        {
            "name": "migrate",
            "argv": [APP + "task-migrate"],
            "timeout": 300,
            "needs": ["postgres", "redis"],
        },
        {
            "name": "seed",
            "argv": [APP + "task-seed"],
            "timeout": 600,
            "needs": ["postgres", "redis"],
        },
    ]
    proc = box.run("task-migrate")
    assert proc.returncode == 0, proc.stderr
    assert box.recorded() == [
        ["docker", "rm", "--force", "blueprints_task_migrate"],
        expected_docker_run(
            app, "web", "migrate", command=["python", "manage.py", "migrate", "--noinput"]
        ),
    ]
    # schedules: a oneshot service with the timeout and a timer with the calendar, started
    # by the release
    assert release["units"] == ["app-schedule-clear-sessions.timer", "app-schedule-report.timer"]
    timer = files[UNITS + "app-schedule-report.timer"]
    assert unit_values(timer, "OnCalendar") == ["Mon,Tue,Wed,Thu,Fri", "*-*-*", "06:30:00", "UTC"]
    report = files[UNITS + "app-schedule-report.service"]
    assert unit_values(report, "TimeoutStartSec") == ["1200s"]
    assert unit_values(report, "ExecStart") == [APP + "schedule-report", "run"]
    assert "Wants=app-schedule-report.timer" in files[UNITS + "app.target"]
    clear = files[UNITS + "app-schedule-clear-sessions.timer"]
    assert unit_values(clear, "OnCalendar") == ["*-*-*", "*:00/5:00", "UTC"]


def test_every_rendered_calendar_is_one_systemd_accepts():
    exe = validators.require("systemd-analyze")
    app = everything()
    files = {p: f.content for p, f in release_files(app).items()}
    timers = [t for p, t in files.items() if p.endswith(".timer") and "schedule" in p]
    assert len(timers) == len(app.schedules)
    for text in timers:
        (calendar,) = [
            ln.split("=", 1)[1] for ln in text.splitlines() if ln.startswith("OnCalendar=")
        ]
        proc = subprocess.run(
            [exe, "calendar", calendar], capture_output=True, text=True, check=False
        )
        assert proc.returncode == 0, (calendar, proc.stderr)


def test_a_secret_value_is_only_ever_in_the_secrets_document():
    app = everything()
    docs = release_documents(app, "key", everything_secrets(app))
    assert SECRET_MARK not in docs.release
    assert docs.secrets is not None and SECRET_MARK in docs.secrets
    files = render_node_files(context(app, secrets=everything_secrets(app)))
    holders = sorted(p for p, t in files.items() if SECRET_MARK in t)
    assert holders and all(p.startswith(SECRETS) for p in holders)
    # the docker config holds it base64-encoded
    assert "/etc/blueprints/secrets/docker/config.json" in set(
        secret_files(app, everything_secrets(app))
    )


def test_a_changed_file_restarts_its_service_only():
    def changed(edit) -> set[str]:
        before, after = everything(), everything(edit)
        b = {s["name"]: s["digest"] for s in everything_documents(before)[0]["services"]}
        a = {s["name"]: s["digest"] for s in everything_documents(after)[0]["services"]}
        return {n for n in b if a[n] != b[n]}

    def edit_settings(data):
        data["services"]["web"]["files"][0]["content"] += "workers = 4\n"

    def edit_mode(data):
        data["services"]["web"]["files"][0]["mode"] = "0440"

    assert changed(edit_settings) == {"web"}
    assert changed(edit_mode) == {"web"}
    # a secret file's value: both readers of the password restart (web's file, postgres's)
    app = everything()
    one = release_services_digests(app, everything_secrets(app))
    other = release_services_digests(app, {**everything_secrets(app), "POSTGRES_PASSWORD": "new"})
    assert {n for n in one if one[n] != other[n]} == {"web", "worker", "postgres"}


def release_services_digests(app: AppSpec, secrets: Mapping[str, str]) -> dict[str, str]:
    docs = release_documents(app, "key", secrets)
    return {s["name"]: s["digest"] for s in parse_release(docs.release)["services"]}


HOSTILE = 'it\'s "q" $(touch /tmp/blueprints-pwned) `id` $HOME ; rm -rf / #\n\\ %n %% * \t end'


def hostile_everything(data: dict[str, Any]) -> None:
    web = data["services"]["web"]
    web["entrypoint"] = [HOSTILE, HOSTILE]
    web["env"]["HOSTILE"] = HOSTILE
    web["files"][0]["content"] = HOSTILE + "\n$${literal}\n"
    data["tasks"]["migrate"]["command"] = ["sh", "-c", HOSTILE, HOSTILE]
    data["schedules"]["clear-sessions"]["command"] = [HOSTILE, "-"]


def test_hostile_values_in_new_fields_change_no_structure(tmp_path: Path):
    Path(PWNED).unlink(missing_ok=True)
    clean, evil = everything(), everything(hostile_everything)
    clean_files = render_node_files(context(clean, secrets=everything_secrets(clean)))
    evil_files = render_node_files(context(evil, secrets=everything_secrets(evil)))
    assert list(clean_files) == list(evil_files)
    assert units(clean_files) == units(evil_files)
    (tmp_path / "shellcheck").mkdir()
    _all_scripts_pass_shellcheck(evil_files, tmp_path / "shellcheck")
    _verify_units(evil_files, tmp_path / "units")
    box = Sandbox(tmp_path / "box", evil_files)
    proc = box.run("task-migrate")
    assert proc.returncode == 0, proc.stderr
    assert box.recorded()[1] == expected_docker_run(
        evil, "web", "migrate", command=["sh", "-c", HOSTILE, HOSTILE]
    )
    run = box.recorded()[1]
    assert run[run.index("--entrypoint") + 1] == HOSTILE
    assert f"HOSTILE={HOSTILE}" in run
    box.run("schedule-clear-sessions")
    assert box.recorded()[1][-2:] == [HOSTILE, "-"]
    (settings_path,) = [p for p in evil_files if "settings.ini" in p]
    assert evil_files[settings_path] == HOSTILE + "\n${literal}\n"
    assert not Path(PWNED).exists()


def test_a_task_past_its_timeout_is_stopped_and_fails(tmp_path: Path):
    def quick(data):
        data["tasks"]["migrate"]["timeout"] = "1s"

    app = everything(quick)
    box = Sandbox(tmp_path, render_node_files(context(app, secrets=everything_secrets(app))))
    slow = box.bin / "docker"
    slow.write_text(
        STUB.replace(
            'record "$@"\n    exit', 'record "$@"\n    [[ $1 == run ]] && sleep 20\n    exit', 1
        )
    )
    began = time.monotonic()
    proc = box.run("task-migrate")
    assert time.monotonic() - began < 15
    assert proc.returncode == 124
    assert "did not finish within 1s" in proc.stderr
    assert box.recorded()[-1] == ["docker", "rm", "--force", "blueprints_task_migrate"]


def test_a_failing_task_script_exits_with_its_status(tmp_path: Path):
    app = everything()
    box = Sandbox(tmp_path, render_node_files(context(app, secrets=everything_secrets(app))))
    proc = box.run("task-seed", STUB_DOCKER_STATUS="3")
    assert proc.returncode == 3
    # the agent reports the status; the script adds no line that would hide the task's own
    assert "exited with status" not in proc.stderr


def test_check_app_refuses_nul_in_task_and_schedule_commands():
    def nul(data):
        data["tasks"]["seed"]["command"] = ["ok", "a\0b"]
        data["schedules"]["report"]["command"] = ["a\0b"]

    assert check_app(everything(nul)) == [
        (("tasks", "seed", "command", 1), NUL),
        (("schedules", "report", "command", 0), NUL),
    ]


def test_a_removed_schedule_leaves_the_release():
    def drop(data):
        del data["schedules"]["report"]

    release, _ = everything_documents(everything(drop))
    assert release["units"] == ["app-schedule-clear-sessions.timer"]
    assert not [p for p in release["files"] if "schedule-report" in p]
