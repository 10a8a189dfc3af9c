"""`blueprints import`: each real compose file in tests/apps imported without a terminal, and
compared with its hand translation (tests/apps/*/app.yaml); bad input refused in one sentence."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from blueprints.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
APPS = ROOT / "tests/apps"
BASE_FLAGS = ["--domain", "app.example.com", "--acme-email", "ops@example.com"]

# app: (compose file, extra flags, lines that must be printed, secret values never in the spec,
#       env names the import keeps that the hand translation leaves out)
CASES = {
    "wordpress-mysql": (
        "compose.yaml",
        [],
        [
            "services.db.restart: dropped (the blueprints restart a failed service always)",
            "services.wordpress.ports[0]: guessed expose: http for published port 80",
            "volumes.db_data: renamed db-data (volume names are DNS labels)",
            "volumes.db_data: guessed size_gb: 10 (compose does not size volumes)",
        ],
        ["somewordpress"],
        set(),
    ),
    "nginx-flask-mysql": (
        "compose.yaml",
        [
            "--image",
            "backend=ghcr.io/example/nginx-flask-mysql-backend:1.0",
            "--image",
            "proxy=nginx:1.27-alpine",
            "--http",
            "proxy:80",
        ],
        [
            "services.db.secrets[0]: becomes a file at /run/secrets/db-password holding secret "
            "DB_PASSWORD",
            "networks: dropped (every service of an app shares one private network)",
        ],
        ["db-78n9n"],
        set(),
    ),
    "prometheus-grafana": (
        "compose.yaml",
        ["--http", "grafana:3000"],
        [
            "services.prometheus.volumes[0]: dropped (./prometheus is a directory; put it in the "
            "image, or list its files under files by hand)",
            "services.prometheus.ports[0]: published port 9090 kept private (route it with --http "
            "prometheus:9090, or write expose: tcp)",
        ],
        [],
        set(),
    ),
    "gitea-postgres": (
        "compose.yaml",
        [],
        [
            "services.gitea.ports[0]: guessed expose: http for published port 3000",
            "services.gitea.environment.DB_PASSWD: guessed secret POSTGRES_PASSWORD (the same "
            "value as services.db.environment.POSTGRES_PASSWORD)",
        ],
        [],
        set(),
    ),
    "nextcloud-redis-mariadb": (
        "compose.yaml",
        [],
        [
            "services.nc.ports[0]: guessed port 8080 for published port 80 (80 is the reverse "
            "proxy's or SSH's on every blueprint)"
        ],
        [],
        set(),
    ),
    "miniflux": (
        "basic.yml",
        [],
        [
            "version: dropped (obsolete; compose ignores it too)",
            "services.miniflux.environment.DATABASE_URL: the password in the URL becomes "
            "${secrets.POSTGRES_PASSWORD} (the same value as "
            "services.db.environment.POSTGRES_PASSWORD)",
            "services.db.ports: none given (compose sees the image's EXPOSE, the spec does not); "
            "add the port the services depending on it connect to",
        ],
        ["test123", ":secret@"],
        {"DEBUG", "RUN_MIGRATIONS"},
    ),
    "umami": (
        "docker-compose.yml",
        [],
        ["services.umami.ports[0]: guessed expose: http for published port 3000"],
        ["replace-me-with-a-random-string", ":umami@"],
        set(),
    ),
    "uptime-kuma": (
        "compose.yaml",
        [],
        [
            "services.uptime-kuma.hostname: dropped (a service is reached by its name)",
            "services.uptime-kuma.volumes[0]: dropped (./data is not beside the compose file, so "
            "docker would make it a directory; keep data on a volume instead)",
        ],
        [],
        set(),
    ),
    "plausible": (
        "compose.yml",
        ["--http", "plausible:8000"],
        [
            "services.plausible_db: renamed plausible-db (service names are DNS labels)",
            "services.plausible.environment.BASE_URL: dropped (${BASE_URL} is set when compose "
            "runs; give --env-file)",
            "services.plausible.ports: added port 8000 from --http (compose does not publish it)",
            "services.plausible_events_db.ulimits: dropped (the blueprints keep the runtime's "
            "limits)",
        ],
        [":postgres@"],
        {
            "GOOGLE_CLIENT_SECRET",
            "MAILGUN_API_KEY",
            "MANDRILL_API_KEY",
            "MAXMIND_LICENSE_KEY",
            "POSTMARK_API_KEY",
            "SENDGRID_API_KEY",
            "SMTP_USER_PWD",
        },
    ),
}


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "blueprints.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "300", "NO_COLOR": "1"},
    )


def one_error(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """app -> (process, written spec path); each written beside its compose file's copy."""
    out = {}
    for app, (compose, flags, *_) in CASES.items():
        where = tmp_path_factory.mktemp(app)
        # Copy the app folder so files' `source:` paths stay inside the spec's directory.
        for f in (APPS / app).rglob("*"):
            if f.is_file():
                (where / f.relative_to(APPS / app)).parent.mkdir(parents=True, exist_ok=True)
                (where / f.relative_to(APPS / app)).write_bytes(f.read_bytes())
        spec = where / "imported.yaml"
        res = run("import", str(where / compose), "-o", str(spec), *BASE_FLAGS, *flags)
        out[app] = (res, spec)
    return out


def test_every_app_folder_is_a_case():
    folders = {p.parent.name for p in APPS.glob("*/app.yaml")}
    assert folders == set(CASES)
    assert len(folders) >= 8


@pytest.mark.parametrize("app", sorted(CASES))
def test_import_prints_what_it_dropped_and_guessed(imported, app):
    res, spec = imported[app]
    assert res.returncode == 0, res.stderr
    printed = res.stdout.splitlines()
    for line in CASES[app][2]:
        assert line in printed, f"{line!r} not in:\n{res.stdout}"
    assert f"wrote {spec}" in res.stdout
    load_spec(spec)  # validates, files' sources read


@pytest.mark.parametrize("app", sorted(CASES))
def test_no_secret_value_reaches_the_spec(imported, app):
    res, spec = imported[app]
    text = spec.read_text()
    data = yaml.safe_load(text)
    compose = yaml.safe_load((APPS / app / CASES[app][0]).read_text())
    from blueprints.importer import looks_secret

    for svc in compose["services"].values():
        env = (svc or {}).get("environment") or {}
        pairs = [str(e).partition("=")[::2] for e in env] if isinstance(env, list) else env.items()
        for name, _value in pairs:
            if not looks_secret(name):
                continue
            # A secret variable is secret_env, or a reference to a secret: never its value.
            for service in data["services"].values():
                if name in service.get("env", {}):
                    assert service["env"][name].startswith("${secrets."), name
    for value in CASES[app][3]:
        assert value not in text
    app_spec = load_spec(spec)
    for name in app_spec.secret_names():
        assert f"pulumi config set --secret --path 'blueprints:secrets.{name}'" in res.stdout


def _view(path: Path):
    app = load_spec(path)
    return {
        name: {
            "image": svc.image.rsplit(":", 1)[0],
            "env": set(svc.env) | set(svc.secret_env),
            "mounts": {m.path for m in svc.volumes},
            "files": {f.path for f in svc.files},
            "http": {p.target for p in svc.ports if p.expose == "http"},
            "targets": {p.target for p in svc.ports},
        }
        for name, svc in app.services.items()
    }, set(app.secret_names())


@pytest.mark.parametrize("app", sorted(CASES))
def test_import_matches_the_hand_translation(imported, app, capsys):
    _, spec = imported[app]
    got, got_secrets = _view(spec)
    want, want_secrets = _view(APPS / app / "app.yaml")
    extra_env = CASES[app][4]
    assert set(got) == set(want)  # service names (renamed to DNS labels)
    differences = []
    for name in sorted(want):
        g, w = got[name], want[name]
        assert g["image"] == w["image"], name
        assert g["http"] == w["http"], name
        assert g["targets"] <= w["targets"] | {33060}, name
        assert g["mounts"] <= w["mounts"], name
        assert g["files"] <= w["files"], name
        assert g["env"] - w["env"] <= extra_env, name
        for key in ("env", "mounts", "files", "targets"):
            if g[key] != w[key]:
                differences.append(
                    f"{app}: services.{name}.{key}: import {sorted(g[key])}, hand {sorted(w[key])}"
                )
    assert got_secrets - want_secrets <= extra_env | {"GHCR_TOKEN"}
    if got_secrets != want_secrets:
        differences.append(
            f"{app}: secrets: import {sorted(got_secrets)}, hand {sorted(want_secrets)}"
        )
    with capsys.disabled():
        for line in differences:
            print(f"\n  known difference: {line}", end="")


# --- bad input: one sentence, exit 2, nothing written --------------------------------------------


def _bad(tmp_path: Path, compose_text: str | None, *flags: str) -> str:
    compose = tmp_path / "compose.yaml"
    if compose_text is not None:
        compose.write_text(compose_text)
    out = tmp_path / "app.yaml"
    res = run("import", str(compose), "-o", str(out), *flags)
    line = one_error(res)
    assert not out.exists()
    return line


GOOD = "services:\n  web:\n    image: nginx:1.27\n    ports: ['80:80']\n"


def test_not_yaml(tmp_path):
    line = _bad(tmp_path, "services: [\n", *BASE_FLAGS)
    assert "is not valid YAML at line" in line and "not a compose file" in line


def test_not_a_mapping(tmp_path):
    assert "is not a compose file" in _bad(tmp_path, "- a\n- b\n", *BASE_FLAGS)


def test_no_services(tmp_path):
    assert "no services mapping" in _bad(tmp_path, "volumes: {}\n", *BASE_FLAGS)


def test_missing_file(tmp_path):
    assert "no such file" in _bad(tmp_path, None, *BASE_FLAGS)


def test_build_only_service_names_the_flag(tmp_path):
    line = _bad(tmp_path, "services:\n  web:\n    build: .\n", *BASE_FLAGS)
    assert line.endswith(
        "services.web: is built from source (build:) and names no image; build and push it, "
        "then pass --image web=REF"
    )


def test_missing_domain_without_a_terminal(tmp_path):
    line = _bad(tmp_path, GOOD, "--acme-email", "ops@example.com")
    assert "there is no terminal to ask; pass --domain" in line


def test_missing_email_without_a_terminal(tmp_path):
    line = _bad(tmp_path, GOOD, "--domain", "app.example.com")
    assert line.endswith("pass --acme-email")


def test_ambiguous_http_port_without_a_terminal(tmp_path):
    text = "services:\n  a:\n    image: x:1\n    ports: ['3000:3000']\n  b:\n    image: y:1\n"
    text += "    ports: ['9090:9090']\n"
    line = _bad(tmp_path, text, *BASE_FLAGS)
    assert "pass --http SERVICE:PORT" in line


def test_existing_output_needs_force(tmp_path):
    (tmp_path / "compose.yaml").write_text(GOOD)
    out = tmp_path / "app.yaml"
    out.write_text("keep me\n")
    res = run("import", str(tmp_path / "compose.yaml"), "-o", str(out), *BASE_FLAGS)
    assert "exists; pass --force to replace it" in one_error(res)
    assert out.read_text() == "keep me\n"
    res = run("import", str(tmp_path / "compose.yaml"), "-o", str(out), "--force", *BASE_FLAGS)
    assert res.returncode == 0, res.stderr
    assert load_spec(out).services["web"].ports[0].container_port == 80


def test_same_input_same_bytes(tmp_path):
    (tmp_path / "compose.yaml").write_text(GOOD)
    texts = []
    for i in range(2):
        out = tmp_path / f"app{i}.yaml"
        assert (
            run("import", str(tmp_path / "compose.yaml"), "-o", str(out), *BASE_FLAGS).returncode
            == 0
        )
        texts.append(out.read_text())
    assert texts[0] == texts[1]


def test_forms_compose_allows(tmp_path):
    """Map env, long port syntax, healthcheck durations, deploy limits, configs and secrets,
    env_file (names only), and a file bind mount read into `source:`."""
    (tmp_path / "nginx.conf").write_text("events {}\n")
    (tmp_path / "web.env").write_text("API_TOKEN=s3cr3t-value\nMODE=prod\n")
    (tmp_path / "vars.env").write_text("TAG=1.2.3\nLEVEL=info\n")
    text = """
name: Shop_App
services:
  Web_1:
    image: ghcr.io/example/web:${TAG}
    entrypoint: /usr/bin/tini --
    command: ["serve", "--port", "8000"]
    environment:
      LOG_LEVEL: ${LEVEL}
      DSN_HOST: db
      PRICE: "cost $$5 and $${x}"
      WORKERS: 3
    env_file: web.env
    ports:
      - target: 8000
        published: 443
        protocol: tcp
      - "127.0.0.1:9000:9000"
      - "5000-5005:5000-5005"
      - "53:53/udp"
    volumes:
      - ./nginx.conf:/etc/nginx/nginx.conf:ro
      - type: volume
        source: up_loads
        target: /data
    configs:
      - source: inline
        target: /etc/app/inline.txt
    secrets:
      - source: api_key
        target: api-key
        mode: 0400
    deploy:
      replicas: 1
      resources:
        limits: {cpus: "1.5", memory: 1536M}
        reservations: {memory: 256M}
      placement: {constraints: ["node.role == manager"]}
    healthcheck:
      test: ["CMD", "wget", "-qO-", "http://localhost:8000/healthz"]
      interval: 1m30s
      timeout: 2m
      retries: 3
      start_period: 500ms
volumes:
  up_loads: {driver: local}
configs:
  inline:
    content: "hello ${x}"
secrets:
  api_key:
    environment: API_KEY
"""
    (tmp_path / "compose.yaml").write_text(text)
    out = tmp_path / "app.yaml"
    res = run(
        "import",
        str(tmp_path / "compose.yaml"),
        "-o",
        str(out),
        "--env-file",
        str(tmp_path / "vars.env"),
        *BASE_FLAGS,
    )
    assert res.returncode == 0, res.stderr
    printed = res.stdout.splitlines()
    for line in (
        "services.Web_1: renamed web-1 (service names are DNS labels)",
        "services.Web_1.deploy.placement: dropped (placement is decided by the blueprint)",
        "services.Web_1.deploy.resources.reservations: dropped (the spec sets limits; requests "
        "follow)",
        "services.Web_1.ports[1]: kept private (published on 127.0.0.1 only)",
        "services.Web_1.ports[2]: dropped (port ranges and variables are not supported)",
        "services.Web_1.ports[3]: dropped (udp ports are not supported; the spec has tcp only)",
        "services.Web_1.healthcheck.timeout: guessed 1m30s (no longer than the interval)",
        "services.Web_1.env_file: API_TOKEN becomes secret_env (values from env files stay out "
        "of the spec)",
        "volumes.up_loads.driver: dropped (the blueprint provides the volume on its data disk)",
    ):
        assert line in printed, f"{line!r} not in:\n{res.stdout}"
    assert "s3cr3t-value" not in out.read_text()
    app = load_spec(out)
    assert app.name == "shop-app"
    web = app.services["web-1"]
    assert web.image == "ghcr.io/example/web:1.2.3"
    assert web.entrypoint == ["/usr/bin/tini", "--"]
    assert web.command == ["serve", "--port", "8000"]
    assert web.env == {
        "DSN_HOST": "db",
        "LOG_LEVEL": "info",
        "PRICE": "cost $5 and $${x}",
        "WORKERS": "3",
    }
    assert web.secret_env == ["API_TOKEN", "MODE"]  # env_file values all stay out
    assert [(p.port, p.target, p.expose) for p in web.ports] == [
        (8000, 8000, "http"),
        (9000, 9000, "private"),
    ]
    assert web.cpu == 1.5 and web.memory == 1536
    assert web.health.interval == 90 and web.health.timeout == 90 and web.health.start_period == 1
    files = {f.path: f for f in web.files}
    assert files["/etc/nginx/nginx.conf"].content == "events {}\n"
    assert files["/etc/app/inline.txt"].content == "hello $${x}"
    assert files["/run/secrets/api-key"].content == "${secrets.API_KEY}"
    assert files["/run/secrets/api-key"].mode == "0400"
    assert [(m.volume, m.path) for m in web.volumes] == [("up-loads", "/data")]
    assert "pulumi config set --secret --path 'blueprints:secrets.API_KEY'" in res.stdout


def test_a_secret_never_reaches_a_command_a_health_check_or_a_file(tmp_path):
    """--env-file fills ${VAR} in plain fields, except names that look secret: those fields are
    dropped with the reason. A bind-mounted file that looks secret is dropped; one holding ${
    goes inline, escaped, so the spec reads it as the literal text."""
    (tmp_path / "compose.yaml").write_text(
        "services:\n"
        "  redis:\n"
        "    image: redis:7.4\n"
        "    command: redis-server --requirepass ${REDIS_PASSWORD}\n"
        '    healthcheck: {test: ["CMD", "redis-cli", "-a", "${REDIS_PASSWORD}", "ping"]}\n'
        "    volumes: [./tls.key:/etc/tls.key:ro, ./nginx.conf:/etc/nginx.conf:ro]\n"
        '    ports: ["6379:6379"]\n'
    )
    (tmp_path / ".env").write_text("REDIS_PASSWORD=EnvFileRedisPw77\n")
    (tmp_path / "tls.key").write_text("-----BEGIN PRIVATE KEY-----\nKeyBytes99\n")
    (tmp_path / "nginx.conf").write_text("server_name ${NGINX_HOST};\n")
    out = tmp_path / "app.yaml"
    res = run(
        "import",
        str(tmp_path / "compose.yaml"),
        "-o",
        str(out),
        *BASE_FLAGS,
        "--env-file",
        str(tmp_path / ".env"),
        "--http",
        "none",
    )
    assert res.returncode == 0, res.stderr
    text = out.read_text()
    assert "EnvFileRedisPw77" not in text and "KeyBytes99" not in text
    for field in ("services.redis.command", "services.redis.healthcheck.test"):
        assert f"{field}: dropped (${{REDIS_PASSWORD}} is a secret" in res.stdout
    assert "services.redis.volumes[0]: dropped (tls.key looks secret" in res.stdout
    spec = load_spec(out)
    [conf] = spec.services["redis"].files
    assert spec.file_text(conf, {}, "docker") == "server_name ${NGINX_HOST};\n"
