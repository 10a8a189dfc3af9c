"""The compose renderer: the compose file against the spec and the compose-spec schema, real
health probes, the secret wrapper and autoheal script run against stand-ins, the VM's files
(the backup units included, tests/test_backup_vm.py has the rest) through
cloud-init/shellcheck/systemd validators, injection, determinism and goldens."""

from __future__ import annotations

import copy
import http.server
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import validators
import yaml
from golden_files import check_golden
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_render_single_vm import (
    AWS_DEVICE,
    EXAMPLE_DATA,
    HCLOUD_DEVICE,
    MINIMAL,
    NASTY,
    NASTY_MULTILINE,
    NASTY_PATH,
    PWNED,
    SCRIPTS,
    STORAGE,
    STUB,
    UNITS,
    env_value,
    programs,
    scripts,
    secrets_for,
    spec,
    units,
    with_service,
)

from blueprints.backup.storage import Storage
from blueprints.render import compose as rc
from blueprints.render.common import systemd_escape_path
from blueprints.spec import AppSpec

GOLDEN = Path(__file__).resolve().parent / "golden" / "compose"
FLOATING_IP = "203.0.113.10"
BUSYBOX = shutil.which("busybox")


def ctx(
    app: AppSpec | None = None,
    *,
    device: str = HCLOUD_DEVICE,
    floating_ip: str | None = FLOATING_IP,
    storage: Storage | None = None,
    secrets: Mapping[str, str] | None = None,
) -> rc.ComposeContext:
    app = app or spec()
    return rc.ComposeContext(
        app=app,
        data_device=device,
        floating_ip=floating_ip,
        storage=storage,
        secrets=secrets_for(app) if secrets is None else secrets,
    )


def compose_of(app: AppSpec) -> dict[str, Any]:
    """The compose file as Compose reads it: parsed, with `$$` turned back into `$`."""
    return rc.unescape_interpolation(yaml.safe_load(rc.render_compose_file(app)))


def check_compose_schema(text: str, tmp_path: Path) -> None:
    path = tmp_path / "compose.yaml"
    path.write_text(text)
    validators.check_jsonschema("vendor.compose-spec", path)


# --- the compose file: schema and every spec field -------------------------------------------


def test_example_compose_file_passes_the_compose_spec_schema(tmp_path: Path):
    check_compose_schema(rc.render_compose_file(spec()), tmp_path)


def test_minimal_compose_file_passes_the_compose_spec_schema(tmp_path: Path):
    app = spec(MINIMAL)
    doc = compose_of(app)
    assert set(doc["services"]) == {"job"}  # no http port, so no proxy
    check_compose_schema(rc.render_compose_file(app), tmp_path)


def test_schema_check_catches_a_broken_file(tmp_path: Path):
    """The harness itself: a misspelt key must fail the schema check."""
    broken = rc.render_compose_file(spec()).replace("restart:", "restrat:", 1)
    with pytest.raises(pytest.fail.Exception):
        check_compose_schema(broken, tmp_path)


def expected_health(app: AppSpec, name: str) -> list[str] | None:
    health = app.services[name].health
    if health is None:
        return None
    svc = app.services[name]
    port = str(health.port or svc.ports[0].port) if health.type != "command" else None
    if health.type == "command":
        return ["CMD", *(health.command or [])]
    if health.type == "tcp":
        return ["CMD", rc.PROBE_BUSYBOX, "nc", "-w", str(health.timeout), "127.0.0.1", port]
    return ["CMD", rc.PROBE_BUSYBOX, "sh", "-c"]


def test_every_spec_field_reaches_the_compose_file():
    """Walk the spec: nothing a service declares may be silently dropped."""
    app = spec()
    doc = compose_of(app)
    assert doc["name"] == app.name
    assert set(doc["services"]) == {*app.services, rc.PROXY_SERVICE}
    for name, svc in app.services.items():
        out = doc["services"][name]
        assert out["image"] == svc.image
        assert out.get("command") == (list(svc.command) if svc.command else None)
        assert out["restart"] == "unless-stopped"
        assert out["deploy"]["replicas"] == svc.replicas
        limits = out["deploy"]["resources"]["limits"]
        assert float(limits["cpus"]) == svc.cpu
        assert limits["memory"] == f"{svc.memory}M"
        env = out.get("environment", {})
        for var, value in svc.env.items():
            assert env[var] == value
        for var in svc.secret_env:
            assert var in env and env[var] is None  # the name only; the value is not here
        assert set(env) == set(svc.env) | set(svc.secret_env)
        exposed = set(out.get("expose", []))
        published = set(out.get("ports", []))
        for port in svc.ports:
            if port.expose == "tcp":
                assert f"{port.published}:{port.port}" in published
            else:
                assert str(port.port) in exposed
        mounts = [v for v in out.get("volumes", []) if v["target"] != rc.PROBE_BUSYBOX]
        assert [(m["source"], m["target"], m["read_only"]) for m in mounts] == [
            (f"/srv/data/{m.volume}", m.path, m.read_only) for m in svc.volumes
        ]
        assert all(m["type"] == "bind" and m["bind"]["create_host_path"] is False for m in mounts)
        if svc.health is None:
            assert "healthcheck" not in out
        else:
            check = out["healthcheck"]
            want = expected_health(app, name)
            assert check["test"][: len(want)] == want
            assert check["interval"] == f"{svc.health.interval}s"
            assert check["timeout"] == f"{svc.health.timeout}s"
            assert check["retries"] == svc.health.retries
            assert check["start_period"] == f"{svc.health.start_period}s"
            if svc.health.type == "http":
                assert check["test"][-4:] == [
                    svc.health.path,
                    app.domain,
                    str(svc.health.port or svc.ports[0].port),
                    str(svc.health.timeout),
                ]
        deps = out.get("depends_on", {})
        assert set(deps) == set(svc.depends_on)
        for dep in svc.depends_on:
            healthy = app.services[dep].health is not None
            want_condition = "service_healthy" if healthy else "service_started"
            assert deps[dep] == {"condition": want_condition}


def test_proxy_serves_the_domain_and_keeps_its_state_on_the_volume():
    app = spec()
    proxy = compose_of(app)["services"][rc.PROXY_SERVICE]
    assert proxy["ports"] == ["80:80", "443:443"]
    assert {(v["source"], v["target"]) for v in proxy["volumes"]} == {
        ("/etc/blueprints/caddy.json", "/etc/caddy/caddy.json"),
        ("/srv/data/caddy", "/data"),
    }
    files = rc.render_vm_files(ctx(app))
    caddy = yaml.safe_load(files["/etc/blueprints/caddy.json"])
    [route] = caddy["apps"]["http"]["servers"]["app"]["routes"]
    assert route["match"] == [{"host": [app.domain]}]
    [handler] = route["handle"]
    # Every replica behind the service name, looked up again as replicas come and go.
    assert handler["dynamic_upstreams"] == {
        "source": "a",
        "name": "web",
        "port": "8000",
        "refresh": "1s",
    }
    # a dial to a removed container's address gives up fast and is retried on another
    assert handler["transport"] == {"protocol": "http", "dial_timeout": "1s"}
    # Caddy runs no active checks for dynamic upstreams: none is configured to pretend it does
    assert "health_checks" not in handler


def test_depends_on_without_a_health_check_waits_for_start_only():
    data = copy.deepcopy(EXAMPLE_DATA)
    del data["services"]["redis"]["health"]
    deps = compose_of(spec(data))["services"]["web"]["depends_on"]
    assert deps == {
        "postgres": {"condition": "service_healthy"},
        "redis": {"condition": "service_started"},
    }


def test_public_tcp_port_is_published_and_replicas_must_be_one():
    data = with_service(
        EXAMPLE_DATA, "redis", ports=[{"port": 6379, "expose": "tcp", "public_port": 16379}]
    )
    out = compose_of(spec(data))["services"]["redis"]
    assert out["ports"] == ["16379:6379"] and "expose" not in out
    bad = with_service(data, "redis", replicas=2)
    [(path, message)] = rc.check_app(spec(bad))
    assert path == ("services", "redis", "replicas")
    assert "compose blueprint" in message


# --- health probes, run for real with busybox against local servers --------------------------


class _Status(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        status = int(self.path.rsplit("/", 1)[-1])
        self.server.seen.append((self.path, self.headers.get("Host")))  # type: ignore[attr-defined]
        self.send_response(status)
        self.send_header("Location", "https://elsewhere.example/")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def http_server() -> Iterator[http.server.HTTPServer]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Status)
    server.seen = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def run_probe(test: list[str]) -> int:
    """Run a compose healthcheck test on this machine, the image's busybox being the host's."""
    assert BUSYBOX, "busybox is not installed; run scripts/install-validators"
    assert test[0] == "CMD"
    argv = [BUSYBOX if a == rc.PROBE_BUSYBOX else a for a in test[1:]]
    return subprocess.run(argv, capture_output=True, timeout=20, check=False).returncode


@pytest.mark.parametrize(
    ("status", "healthy"), [(200, True), (204, True), (302, True), (404, False), (500, False)]
)
def test_http_probe_accepts_2xx_and_3xx_only(http_server, status: int, healthy: bool):
    port = http_server.server_address[1]
    data = with_service(
        EXAMPLE_DATA,
        "web",
        ports=[{"port": port, "expose": "http"}],
        health={"type": "http", "path": f"/probe/{status}", "timeout": "2s"},
    )
    test = compose_of(spec(data))["services"]["web"]["healthcheck"]["test"]
    assert (run_probe(test) == 0) is healthy
    assert http_server.seen[-1] == (f"/probe/{status}", "shop.example.com")


def test_http_probe_fails_when_nothing_listens():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    data = with_service(
        EXAMPLE_DATA, "web", ports=[{"port": free, "expose": "http"}], health={"type": "http"}
    )
    assert run_probe(compose_of(spec(data))["services"]["web"]["healthcheck"]["test"]) != 0


def test_tcp_probe_needs_an_accepting_port():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    port = listener.getsockname()[1]
    data = with_service(
        EXAMPLE_DATA, "redis", ports=[{"port": port}], health={"type": "tcp", "timeout": "2s"}
    )
    test = compose_of(spec(data))["services"]["redis"]["healthcheck"]["test"]
    try:
        # The server keeps the connection open (as redis does): the probe must not hang.
        assert run_probe(test) == 0
    finally:
        listener.close()
    assert run_probe(test) != 0


def test_probe_mount_only_for_probes_that_need_it():
    doc = compose_of(spec())["services"]
    for name in ("web", "redis"):  # http, tcp
        assert any(v["target"] == rc.PROBE_BUSYBOX for v in doc[name]["volumes"])
    for name in ("worker", "postgres"):  # command checks
        assert all(v["target"] != rc.PROBE_BUSYBOX for v in doc[name].get("volumes", []))


# --- secrets -------------------------------------------------------------------------------------


def test_secrets_never_in_the_compose_file_only_in_the_root_only_env_file():
    app = spec()
    secrets = {n: f"s3cret-{n}" for n in app.secret_names()}
    files = rc.render_vm_files(ctx(app, secrets=secrets, storage=None))
    for path, text in files.items():
        if path != rc.SECRETS_FILE:
            assert not any(v in text for v in secrets.values()), path
    assert files[rc.SECRETS_FILE] == "".join(f"{n}={v}\n" for n, v in sorted(secrets.items()))
    assert rc.file_permissions(rc.SECRETS_FILE) == "0600"
    # the secrets travel in their own document, never in the user data or the release document
    written = {f["path"]: f for f in yaml.safe_load(rc.render_cloud_init(ctx(app)))["write_files"]}
    assert rc.SECRETS_FILE not in written
    docs = rc.release_documents(app, "key", secrets)
    assert not any(v in docs.release for v in secrets.values())
    sent = yaml.safe_load(docs.secrets)["files"][rc.SECRETS_FILE]
    assert sent == {"mode": "0600", "text": files[rc.SECRETS_FILE]}


def test_missing_secret_is_named():
    app = spec()
    with pytest.raises(ValueError, match="secret DATABASE_PASSWORD has no value"):
        rc.render_vm_files(ctx(app, secrets={}, storage=None))


WRAPPER_STUB = r"""#!/bin/bash
# Test stand-in for docker: records argv and the secret variables it was given.
{
  printf '%s\0' "$@"
  printf '\n'
  for name in $STUB_NAMES; do printf '%s=%s\0' "$name" "${!name-<unset>}"; done
} >"$STUB_OUT"
"""


def test_wrapper_passes_secrets_verbatim_and_runs_the_project(tmp_path: Path):
    app = spec()
    single_line = [v for v in NASTY if "\n" not in v and "\x85" not in v]
    secrets = {
        n: single_line[i % len(single_line)] + "=x" for i, n in enumerate(app.secret_names())
    }
    files = rc.render_vm_files(ctx(app, secrets=secrets))
    secrets_file = tmp_path / "app.env"
    secrets_file.write_text(files[rc.SECRETS_FILE])
    wrapper = tmp_path / "app-compose"
    wrapper.write_text(files[rc.WRAPPER].replace(rc.SECRETS_FILE, str(secrets_file)))
    wrapper.chmod(0o755)
    stub_bin = tmp_path / "bin"
    stub_bin.mkdir()
    (stub_bin / "docker").write_text(WRAPPER_STUB)
    (stub_bin / "docker").chmod(0o755)
    out = tmp_path / "out"
    Path(PWNED).unlink(missing_ok=True)
    proc = subprocess.run(
        [str(wrapper), "up", "--detach"],
        env={
            "PATH": f"{stub_bin}:{os.environ['PATH']}",
            "STUB_OUT": str(out),
            "STUB_NAMES": " ".join(app.secret_names()),
        },
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    argv, env = out.read_bytes().decode().split("\n", 1)
    assert argv.split("\0")[:-1] == [
        "compose",
        "--project-name",
        app.name,
        "--file",
        rc.COMPOSE_FILE,
        "up",
        "--detach",
    ]
    got = dict(item.split("=", 1) for item in env.split("\0")[:-1])
    assert got == secrets
    assert not Path(PWNED).exists()


# --- autoheal and backup scripts, against stand-ins ----------------------------------------------


def stub_bin(tmp_path: Path, names: tuple[str, ...]) -> Path:
    bin_dir = tmp_path / "stub-bin"
    bin_dir.mkdir(exist_ok=True)
    for name in names:
        (bin_dir / name).write_text(STUB)
        (bin_dir / name).chmod(0o755)
    (tmp_path / "calls").mkdir(exist_ok=True)
    return bin_dir


def recorded(tmp_path: Path) -> list[list[str]]:
    calls = sorted((tmp_path / "calls").iterdir(), key=lambda p: int(p.name))
    return [p.read_bytes().decode().split("\0")[:-1] for p in calls]


AUTOHEAL_DOCKER = r"""#!/bin/bash
name=${0##*/}
i=0
while [[ -e $STUB_CALLS/$i ]]; do i=$((i + 1)); done
printf '%s\0' "$name" "$@" >"$STUB_CALLS/$i"
case $1 in
  ps) printf '%s' "$STUB_UNHEALTHY" ;;
  inspect) echo "/shop-${*: -1}-1" ;;
esac
exit 0
"""


@pytest.mark.parametrize("unhealthy", [[], ["abc123"], ["abc123", "def456"]])
def test_autoheal_restarts_exactly_the_unhealthy_containers(tmp_path: Path, unhealthy: list[str]):
    files = rc.render_vm_files(ctx())
    script = tmp_path / "autoheal"
    script.write_text(files[SCRIPTS + "autoheal"])
    script.chmod(0o755)
    bin_dir = stub_bin(tmp_path, ())
    (bin_dir / "docker").write_text(AUTOHEAL_DOCKER)
    (bin_dir / "docker").chmod(0o755)
    proc = subprocess.run(
        [str(script)],
        env={
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "STUB_CALLS": str(tmp_path / "calls"),
            "STUB_UNHEALTHY": "\n".join(unhealthy) + ("\n" if unhealthy else ""),
        },
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    calls = recorded(tmp_path)
    assert calls[0] == [
        "docker",
        "ps",
        "--quiet",
        "--filter",
        "label=com.docker.compose.project=shop",
        "--filter",
        "health=unhealthy",
    ]
    restarts = [c for c in calls if c[1] == "restart"]
    assert restarts == [["docker", "restart", "--time", "30", cid] for cid in unhealthy]
    for cid in unhealthy:
        assert f"shop-{cid}-1 is unhealthy; restarting it" in proc.stdout


def test_autoheal_timer_follows_the_shortest_health_interval():
    assert rc.autoheal_period(spec()) == 10
    assert rc.autoheal_period(spec(MINIMAL)) == rc.AUTOHEAL_MAX_SECONDS
    fast = with_service(
        EXAMPLE_DATA, "redis", health={"type": "tcp", "interval": "1s", "timeout": "1s"}
    )
    assert rc.autoheal_period(spec(fast)) == rc.AUTOHEAL_MIN_SECONDS
    timer = rc.render_vm_files(ctx())[UNITS + "app-autoheal.timer"]
    assert "OnUnitActiveSec=10s" in timer


# --- the VM: cloud-init, shell, systemd ------------------------------------------------------


@pytest.mark.parametrize(
    "context",
    [
        ctx(storage=STORAGE),
        ctx(device=AWS_DEVICE, floating_ip=None),
        ctx(spec(MINIMAL), storage=STORAGE),
    ],
    ids=["hcloud-with-backups", "aws", "minimal-with-backups"],
)
def test_vm_files_pass_every_validator(context: rc.ComposeContext, tmp_path: Path):
    validators.cloud_init_schema(rc.render_cloud_init(context), tmp_path)
    files = rc.render_vm_files(context)
    executable = [*scripts(files), rc.WRAPPER]
    for path in executable:
        target = tmp_path / "sh" / Path(path).name
        target.parent.mkdir(exist_ok=True)
        target.write_text(files[path])
        validators.shellcheck(target, "bash")
    root = validators.systemd_root(
        files, tmp_path / "root", executable=[*programs(files), rc.WRAPPER]
    )
    names = [
        Path(p).name
        for p in units(files)
        if p.count("/") == 4 and p.endswith((".service", ".timer", ".mount"))
    ]
    device_unit = systemd_escape_path(context.data_device) + ".device"
    validators.systemd_verify(root, [*names, device_unit])
    validators.systemctl_enable(root, "blueprints-release.service")
    wants = root / "etc/systemd/system" / f"{device_unit}.wants" / "blueprints-release.service"
    assert wants.is_symlink(), "a volume attached after boot must start the app's release"


def test_cloud_init_installs_docker_and_compose_and_starts_the_app():
    config = yaml.safe_load(rc.render_cloud_init(ctx()))
    assert {"docker.io", "docker-compose-v2", "busybox-static"} <= set(config["packages"])
    # the app itself starts from the release on the data volume
    assert "systemctl enable blueprints-release.service" in config["runcmd"]
    assert "systemctl start --no-block blueprints-release.service" in config["runcmd"]
    assert "netplan apply" in config["runcmd"]
    aws = yaml.safe_load(rc.render_cloud_init(ctx(floating_ip=None, storage=None)))
    assert "netplan apply" not in aws["runcmd"]
    assert "systemctl enable blueprints-release.service" in aws["runcmd"]
    assert config["ssh_pwauth"] is False and config["disable_root"] is True


def test_app_unit_stops_with_down_so_docker_never_starts_it_before_the_volume():
    unit = rc.render_vm_files(ctx())[UNITS + rc.APP_UNIT]
    assert f"ExecStop={rc.WRAPPER} down\n" in unit
    assert f"ExecStart={rc.WRAPPER} up --detach --remove-orphans\n" in unit
    assert "RequiresMountsFor=/srv/data\n" in unit
    assert "blueprints-metadata-guard.service" in unit


# --- injection and determinism ------------------------------------------------------------------


def nasty_data() -> dict[str, Any]:
    data = copy.deepcopy(EXAMPLE_DATA)
    web = data["services"]["web"]
    web["env"] = {f"NASTY_{i}": v for i, v in enumerate(NASTY_MULTILINE)}
    web["command"] = list(NASTY_MULTILINE)
    web["health"]["path"] = NASTY_PATH
    data["services"]["worker"]["health"]["command"] = ["sh", "-c", *NASTY_MULTILINE]
    data["services"]["redis"]["command"] = [*NASTY, "--", "-"]
    return data


def test_hostile_values_change_no_structure_and_survive(tmp_path: Path):
    clean, evil = spec(), spec(nasty_data())
    clean_doc, evil_doc = compose_of(clean), compose_of(evil)
    assert set(clean_doc["services"]) == set(evil_doc["services"])
    for name in clean_doc["services"]:
        assert set(clean_doc["services"][name]) == set(evil_doc["services"][name])
    web = evil_doc["services"]["web"]
    assert web["command"] == list(evil.services["web"].command)
    assert {k: v for k, v in web["environment"].items() if k.startswith("NASTY_")} == dict(
        evil.services["web"].env
    )
    assert web["healthcheck"]["test"][-4] == NASTY_PATH
    worker = evil_doc["services"]["worker"]["healthcheck"]["test"]
    assert worker == ["CMD", *evil.services["worker"].health.command]
    check_compose_schema(rc.render_compose_file(evil), tmp_path)
    validators.cloud_init_schema(rc.render_cloud_init(ctx(evil)), tmp_path)
    # Spec values reach only the serialized files (compose file, Caddy's JSON): every script
    # and unit is byte for byte the same.
    clean_files, evil_files = rc.render_vm_files(ctx(clean)), rc.render_vm_files(ctx(evil))
    assert set(clean_files) == set(evil_files)
    for path in clean_files:
        if path not in (rc.COMPOSE_FILE, "/etc/blueprints/caddy.json"):
            assert clean_files[path] == evil_files[path], path


def test_every_dollar_is_escaped_for_compose_interpolation():
    data = with_service(EXAMPLE_DATA, "redis", env={"A": "${HOME}", "B": "$$x"}, command=["$PATH"])
    raw = yaml.safe_load(rc.render_compose_file(spec(data)))["services"]["redis"]
    assert raw["environment"] == {"A": "$${HOME}", "B": "$$$$x"}
    assert raw["command"] == ["$$PATH"]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    env=st.dictionaries(st.from_regex(r"[A-Z_][A-Z0-9_]{0,8}", fullmatch=True), env_value),
    command=st.lists(env_value, max_size=4),
)
def test_any_value_round_trips_through_the_compose_file(env, command):
    data = with_service(EXAMPLE_DATA, "redis", env=env, command=command)
    app = spec(data)
    out = compose_of(app)["services"]["redis"]
    assert out.get("environment", {}) == env
    assert out.get("command") == (command or None)


def test_same_input_same_bytes():
    assert rc.render_cloud_init(ctx()) == rc.render_cloud_init(ctx())
    data = copy.deepcopy(EXAMPLE_DATA)
    data["services"] = dict(reversed(list(data["services"].items())))
    for svc in data["services"].values():
        svc["env"] = dict(reversed(list(svc.get("env", {}).items())))
        svc["depends_on"] = list(reversed(svc.get("depends_on", [])))
    assert rc.render_cloud_init(ctx(spec(data))) == rc.render_cloud_init(ctx())


# --- golden files (review a diff, then refresh with pytest --update-golden) --------------------

GOLDEN_CASES = {
    # with the stack's backup storage (the backup's files in the release)
    "hcloud": lambda: ctx(storage=STORAGE),
    "aws": lambda: ctx(device=AWS_DEVICE, floating_ip=None),
}


@pytest.mark.parametrize("cloud", sorted(GOLDEN_CASES))
def test_golden_files(cloud: str, update_golden: bool):
    context = GOLDEN_CASES[cloud]()
    rendered = {"cloud-init.yaml": rc.render_cloud_init(context)}
    rendered.update({p.lstrip("/"): t for p, t in rc.render_vm_files(context).items()})
    # what the release channel sends (its digests keyed with a fixed stand-in key)
    rendered["release.yaml"] = rc.release_documents(
        context.app, "golden-key", context.secrets or {}, context.storage
    ).release
    check_golden(GOLDEN / cloud, rendered, update_golden)
