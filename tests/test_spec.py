"""The app spec: the example, a corpus of bad specs with their exact messages, and the models'
own rules (descriptions, defaults, extra="forbid")."""

from __future__ import annotations

import copy
import re
import string
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from blueprints import spec as spec_module
from blueprints.spec import (
    AppSpec,
    Backups,
    HealthCheck,
    Port,
    SpecError,
    format_path,
    load_spec,
    parse_spec,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "app.yaml"
CASES_DIR = Path(__file__).resolve().parent / "spec_cases"
CASES = sorted(CASES_DIR.glob("*.yaml"))
EXPECT = "# expect: "

DNS_RULE = (
    "is not a DNS label (lower-case letters, digits and '-', starting with a letter, "
    "not ending with '-', at most 63 characters)"
)

MINIMAL: dict[str, Any] = {
    "name": "shop",
    "domain": "shop.example.com",
    "acme_email": "ops@example.com",
    "services": {"web": {"image": "nginx:1.27", "ports": [{"port": 8000, "expose": "http"}]}},
}


def spec_models() -> list[type[BaseModel]]:
    """Every pydantic model defined in blueprints/spec.py (including the shared base)."""
    return [
        obj
        for obj in vars(spec_module).values()
        if isinstance(obj, type)
        and issubclass(obj, BaseModel)
        and obj.__module__ == spec_module.__name__
    ]


# ---------------------------------------------------------------- the example


def test_example_loads_with_expected_shape() -> None:
    app = load_spec(EXAMPLE)
    assert app.name == "shop"
    assert app.domain == "shop.example.com"
    assert sorted(app.services) == ["postgres", "redis", "web", "worker"]
    assert sorted(app.volumes) == ["pgdata"]
    assert app.volumes["pgdata"].size_gb == 20
    assert app.data_size_gb == 21
    assert app.start_order() == ["postgres", "redis", "web", "worker"]
    assert [name for name, svc in app.sorted_services() if svc.stateful] == ["postgres"]
    assert app.secret_names() == ["DATABASE_PASSWORD", "DJANGO_SECRET_KEY", "POSTGRES_PASSWORD"]

    web = app.services["web"]
    assert web.replicas == 2
    assert web.memory == 384
    assert [p.port for p in web.public_http_ports] == [8000]
    assert web.health is not None and web.health.timeout == 3
    assert app.services["postgres"].memory == 1024
    worker_health = app.services["worker"].health
    assert worker_health is not None
    assert (worker_health.interval, worker_health.timeout) == (30, 10)
    assert app.admin.cidrs == ["203.0.113.0/24"]
    assert app.backups == Backups(schedule="daily", at="03:00", keep=7)


# ---------------------------------------------------------------- the corpus of bad specs


def expected_message(path: Path) -> str:
    first = path.read_text(encoding="utf-8").split("\n", 1)[0]
    assert first.startswith(EXPECT), f"{path.name} must start with '{EXPECT}<message>'"
    return first[len(EXPECT) :]


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 20


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_bad_spec_gives_its_one_line(path: Path) -> None:
    expected = expected_message(path)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert info.value.lines == [f"{path}: {expected}"]
    assert str(info.value) == f"{path}: {expected}"


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "app.yaml"
    path.write_bytes(b"")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert info.value.lines == [
        f"{path}: is empty; an app spec is a YAML mapping with name, domain, acme_email "
        "and services"
    ]


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert info.value.lines == [f"{path}: no such file"]


def test_two_independent_problems_give_two_lines(tmp_path: Path) -> None:
    data = copy.deepcopy(MINIMAL)
    data["services"]["web"]["replicas"] = "two"
    data["services"]["web"]["ports"][0]["port"] = 70000
    path = tmp_path / "app.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert sorted(info.value.lines) == [
        f"{path}: services.web.ports[0].port: must be at most 65535 (got 70000)",
        f"{path}: services.web.replicas: must be a whole number (got 'two')",
    ]


@pytest.mark.parametrize(
    ("where", "value", "message"),
    [
        (("services", "web", "image"), "nginx:1.27\n", "must be a container image reference"),
        (("domain",), "shop.example.com\n", "must be a lower-case DNS name"),
        (("services", "web", "ports", 0, "path"), "/api\n", "must be a URL path prefix"),
        (("backups", "at"), "03:00\n", "must be a time of day"),
    ],
)
def test_trailing_newline_is_not_accepted(
    where: tuple[str | int, ...], value: str, message: str
) -> None:
    """A value ending in a newline must not slip past a pattern check into a generated file."""
    data = copy.deepcopy(MINIMAL)
    node: Any = data
    for part in where[:-1]:
        node = node[part] if isinstance(part, int) else node.setdefault(part, {})
    node[where[-1]] = value
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    [line] = info.value.lines
    assert line.startswith(f"<spec>: {format_path(where)}: {message}")


def test_problem_lines_never_span_lines() -> None:
    data = copy.deepcopy(MINIMAL)
    data["services"]["web"]["env"] = {"BAD\nNAME": "x"}
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    assert info.value.lines == [
        "<spec>: services.web.env['BAD\\nNAME']: 'BAD\\nNAME' is not a valid environment "
        "variable name (letters, digits and _, not starting with a digit)"
    ]


# ---------------------------------------------------------------- service names (property tests)

dns_labels = st.from_regex(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", fullmatch=True)
bad_char = st.sampled_from(string.ascii_uppercase + "_") | st.characters(categories=("Lu",))
bad_names = st.tuples(st.text(max_size=12), bad_char, st.text(max_size=12)).map("".join)


@settings(deadline=None)
@given(dns_labels)
def test_any_dns_label_is_a_valid_service_name(name: str) -> None:
    data = {
        "name": "shop",
        "domain": "shop.example.com",
        "acme_email": "ops@example.com",
        "services": {name: {"image": "nginx:1.27", "volumes": [{"volume": name, "path": "/data"}]}},
        "volumes": {name: {}},
    }
    app = parse_spec(yaml.safe_load(yaml.safe_dump(data)))
    assert list(app.services) == [name]
    assert app.start_order() == [name]
    assert app.services[name].volumes[0].volume == name
    assert list(app.volumes) == [name]


@settings(deadline=None)
@given(bad_names)
def test_upper_case_or_underscore_is_rejected_with_the_dns_label_message(name: str) -> None:
    data = copy.deepcopy(MINIMAL)
    data["services"] = {name: {"image": "nginx:1.27"}}
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    expected = f"<spec>: {format_path(('services', name))}: service name {name!r} {DNS_RULE}"
    assert info.value.lines == [expected]
    assert len(expected.splitlines()) == 1


# ---------------------------------------------------------------- the models themselves


def test_every_model_forbids_unknown_keys() -> None:
    models = spec_models()
    assert {m.__name__ for m in models} >= {
        "AppSpec", "Service", "Port", "HealthCheck", "Mount", "Volume", "Backups", "Admin"
    }  # fmt: skip
    for model in models:
        assert model.model_config.get("extra") == "forbid", model.__name__


def test_every_field_has_a_description() -> None:
    for model in spec_models():
        for name, field in model.model_fields.items():
            assert field.description and field.description.strip(), f"{model.__name__}.{name}"


# What the docs (field descriptions, README) promise for an omitted field.
REQUIRED = {
    "AppSpec": {"name", "domain", "acme_email", "services"},
    "Service": {"image"},
    "Port": {"port"},
    "HealthCheck": {"type"},
    "Mount": {"volume", "path"},
    "Dump": {"dump", "restore"},
    "Volume": set(),
    "Backups": set(),
    "Admin": set(),
    "File": {"path"},
    "Registry": {"username", "password"},
    "Task": {"service", "command"},
    "Schedule": {"service", "command", "cron"},
}
DEFAULTS: dict[str, dict[str, Any]] = {
    "AppSpec": {
        "volumes": {},
        "backups": Backups(),
        "admin": spec_module.Admin(),
        "tasks": {},
        "schedules": {},
        "registries": {},
    },
    "Service": {
        "entrypoint": None,
        "command": None,
        "files": [],
        "ports": [],
        "env": {},
        "secret_env": [],
        "replicas": 1,
        "cpu": 0.5,
        "memory": 256,
        "health": None,
        "volumes": [],
        "depends_on": [],
        "backup": None,
    },
    "Port": {
        "expose": "private",
        "host": None,
        "path": "/",
        "public_port": None,
        "container_port": None,
    },
    "HealthCheck": {
        "port": None,
        "path": "/",
        "command": None,
        "interval": 10,
        "timeout": 5,
        "retries": 3,
        "start_period": 30,
    },
    "Mount": {"read_only": False},
    "Dump": {},
    "Volume": {"size_gb": 10},
    "Backups": {"enabled": True, "schedule": "daily", "at": "03:00", "keep": 7},
    "Admin": {"ssh_keys": [], "cidrs": []},
    "File": {"content": None, "source": None, "mode": "0444"},
    "Registry": {},
    "Task": {"timeout": 600},
    "Schedule": {"timeout": 3600},
}


def test_defaults_are_what_the_docs_say() -> None:
    models = {m.__name__: m for m in spec_models() if m.model_fields}
    assert set(models) == set(DEFAULTS) == set(REQUIRED)
    for mname, model in models.items():
        required = {n for n, f in model.model_fields.items() if f.is_required()}
        assert required == REQUIRED[mname], mname
        defaults = {
            n: f.get_default(call_default_factory=True)
            for n, f in model.model_fields.items()
            if not f.is_required()
        }
        assert defaults == DEFAULTS[mname], mname


def test_a_minimal_spec_gets_the_documented_defaults() -> None:
    app = parse_spec(copy.deepcopy(MINIMAL))
    web = app.services["web"]
    for name, value in DEFAULTS["Service"].items():
        if name != "ports":
            assert getattr(web, name) == value, name
    port = web.ports[0]
    assert (port.host, port.path, port.public_port) == (None, "/", None)
    assert app.volumes == {} and app.backups == Backups() and app.admin.cidrs == []
    # "public_port: defaults to port"
    assert Port(port=5432, expose="tcp").published == 5432
    # durations and sizes in the documented units
    health = HealthCheck(type="http", interval="2m", timeout="1m", start_period="1h")
    assert (health.interval, health.timeout, health.start_period) == (120, 60, 3600)
    big = AppSpec.model_validate(
        {**MINIMAL, "services": {"web": {"image": "nginx:1.27", "memory": "2Gi"}}}
    )
    assert big.services["web"].memory == 2048


def test_format_path() -> None:
    assert format_path(()) == "(top level)"
    assert format_path(("services", "web", "ports", 0, "port")) == "services.web.ports[0].port"
    assert format_path(("services", "web", "env", "A B")) == "services.web.env['A B']"


# ---------------------------------------------------------------- issue 20: what real apps need

EVERYTHING = Path(__file__).resolve().parent / "everything" / "app.yaml"


def with_web(**fields: Any) -> AppSpec:
    data = copy.deepcopy(MINIMAL)
    data["services"]["web"].update(fields)
    return parse_spec(data)


def test_friendlier_units() -> None:
    web = with_web(
        command="gunicorn app:wsgi --bind '0.0.0.0:8000' --name \"a b\"",
        entrypoint="/usr/bin/tini --",
        env={"WORKERS": 3, "RATIO": 0.5, "DEBUG": False, "ON": True},
        health={"type": "command", "command": "pg_isready -U shop", "interval": "1m30s"},
    ).services["web"]
    assert web.command == ["gunicorn", "app:wsgi", "--bind", "0.0.0.0:8000", "--name", "a b"]
    assert web.entrypoint == ["/usr/bin/tini", "--"]
    assert web.env == {"WORKERS": "3", "RATIO": "0.5", "DEBUG": "false", "ON": "true"}
    assert web.health is not None and (web.health.interval, web.health.timeout) == (90, 5)
    assert with_web(command=["sleep", 5]).services["web"].command == ["sleep", "5"]
    # 500ms is rounded up to a whole second; compound durations add up
    health = HealthCheck(type="tcp", interval="500ms", start_period="2m3s")
    assert (health.interval, health.start_period) == (1, 123)
    # a short interval brings the default timeout down with it; an explicit one is kept
    assert HealthCheck(type="tcp", interval="3s").timeout == 3
    assert HealthCheck(type="tcp", interval="3s", timeout="2s").timeout == 2
    assert HealthCheck(type="tcp").timeout == 5


def test_environment_resolves_references_per_rung_and_keeps_secret_values_secret() -> None:
    app = load_spec(EVERYTHING)
    secrets = {n: f"<{n}>" for n in app.secret_names()}
    docker = app.environment("web", secrets, "docker")
    cluster = app.environment("web", secrets, "cluster")
    # redis listens on 6379 and is reached on 6380 where the rung maps ports
    assert docker.plain["REDIS_URL"] == "redis://redis:6379/0"
    assert cluster.plain["REDIS_URL"] == "redis://redis:6380/0"
    assert docker.plain["WORKERS"] == "3"
    url = "postgres://full:<POSTGRES_PASSWORD>@postgres:5432/full"
    assert docker.secret["DATABASE_URL"] == cluster.secret["DATABASE_URL"] == url
    assert docker.secret["DJANGO_SECRET_KEY"] == "<DJANGO_SECRET_KEY>"
    assert not any("<" in v for v in docker.plain.values())
    assert app.secret_names() == ["DJANGO_SECRET_KEY", "GHCR_TOKEN", "POSTGRES_PASSWORD"]
    # a literal ${ is written $${, and survives as ${
    lit = with_web(env={"TPL": "cost $${amount} ($$)"})
    assert lit.environment("web", {}, "docker").plain == {"TPL": "cost ${amount} ($$)"}


def test_files_read_their_source_and_are_secret_when_they_name_a_secret(tmp_path: Path) -> None:
    app = load_spec(EVERYTHING)
    files = {f.path: f for f in app.services["web"].files}
    nginx = files["/etc/full/nginx.conf"]
    assert nginx.content == (EVERYTHING.parent / "config" / "nginx.conf").read_text()
    assert (nginx.mode, nginx.mode_int, nginx.secret) == ("0440", 0o440, False)
    assert files["/run/secrets/db_password"].secret
    settings_ini = files["/etc/full/settings.ini"]
    assert "upstream = redis:6379" in app.file_text(settings_ini, {}, "docker")
    keys = [f.key for s in app.services.values() for f in s.files]
    assert len(set(keys)) == len(keys) and all(re.fullmatch(r"[A-Za-z0-9._-]+", k) for k in keys)
    # a spec given as data has no directory to read a source from
    data = yaml.safe_load(EVERYTHING.read_text())
    with pytest.raises(SpecError, match="a source file needs a spec loaded from a file"):
        parse_spec(data)
    # an unquoted mode is refused: YAML reads 440 as four hundred and forty, 0440 as 288
    for mode in (440, 0o440):
        with pytest.raises(SpecError, match='must be quoted octal permissions like "0440"'):
            with_web(files=[{"path": "/a", "content": "x", "mode": mode}])


def test_a_source_file_may_not_lead_out_of_the_spec_directory(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("TOKEN=shh\n")
    project = tmp_path / "project"
    (project / "config").mkdir(parents=True)
    (project / "config" / "app.conf").symlink_to(outside)
    spec = copy.deepcopy(MINIMAL)
    spec["services"]["web"]["files"] = [{"path": "/etc/app.conf", "source": "config/app.conf"}]
    (project / "app.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(SpecError, match="leads outside the spec's directory"):
        load_spec(project / "app.yaml")


def test_commands_of_tasks_and_schedules_and_registry_users_are_checked() -> None:
    base = copy.deepcopy(MINIMAL)
    for extra, message in (
        ({"tasks": {"m": {"service": "web", "command": []}}}, "tasks.m.command: must be a"),
        (
            {"registries": {"ghcr.io": {"username": "${services.web.host}", "password": "x"}}},
            "may reference secrets",
        ),
    ):
        with pytest.raises(SpecError, match=re.escape(message)):
            parse_spec({**base, **extra})
    # cron's Sunday as 7 becomes 0, which Kubernetes' CronJob also reads
    from blueprints.cron import normalise

    assert normalise("0 0 * * 7") == "0 0 * * 0"
    assert normalise("0 0 * * 5-7") == "0 0 * * 0,5,6"


def test_registries_and_shared_volumes() -> None:
    app = load_spec(EVERYTHING)
    assert app.registry_for("ghcr.io/example/full-web:2.0.1") == "ghcr.io"
    assert app.registry_for("postgres:16.4") is None
    assert spec_module.registry_host("postgres:16.4") == "docker.io"
    assert spec_module.registry_host("library/postgres") == "docker.io"
    assert spec_module.registry_host("localhost:5000/app:1") == "localhost:5000"
    assert app.registry_auth({"GHCR_TOKEN": "t0k"}) == {"ghcr.io": ("full-bot", "t0k")}
    assert app.shared_volumes() == {"uploads": ["web", "worker"]}
    assert app.volume_users("pgdata") == ["postgres"]
    assert list(app.tasks) == ["migrate", "seed"]  # the order written is the run order
    assert app.tasks["migrate"].timeout == 300 and app.tasks["seed"].timeout == 600
    assert app.schedules["report"].cron == "30 6 * * 1-5"


def _cron_matches(fields: list[str], moment: Any) -> bool:
    from blueprints.cron import _parse_field

    values = [moment.minute, moment.hour, moment.day, moment.month, (moment.weekday() + 1) % 7]
    for index, (text, value) in enumerate(zip(fields, values, strict=True)):
        ok = False
        for first, last, step, _ in _parse_field(text, index):
            allowed = set(range(first, last + 1, step or 1))
            if index == 4:
                allowed = {v % 7 for v in allowed}
            ok = ok or value in allowed
        if not ok:
            return False
    return True


@pytest.mark.parametrize(
    "cron",
    [
        "*/5 * * * *",
        "@hourly",
        "@weekly",
        "0 3 * * 1-5",
        "15,45 8-18/2 * * *",
        "0 0 1 */3 *",
        "30 2 * * 7",
        "0 9 * * 5-7",
        "7 */6 10-20 * *",
        "0 12 * 2,8 sun",
    ],
)
def test_cron_and_its_systemd_calendar_fire_at_the_same_minutes(cron: str) -> None:
    """systemd itself lists the next firings of the rendered OnCalendar; a brute-force cron
    matcher lists the cron's; they must agree."""
    import datetime
    import shutil
    import subprocess

    from blueprints.cron import normalise, on_calendar

    systemd = shutil.which("systemd-analyze")
    assert systemd, "systemd-analyze is needed (apt-get install systemd)"
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    out = subprocess.run(
        [
            systemd,
            "calendar",
            "--iterations=12",
            f"--base-time=@{int(start.timestamp())}",
            on_calendar(cron),
        ],
        capture_output=True,
        text=True,
        check=True,
        env={"TZ": "UTC", "LC_ALL": "C"},
    ).stdout
    fired = re.findall(r"(\d{4}-\d\d-\d\d \d\d:\d\d):00 UTC", out)
    fields = normalise(cron).split()
    expected, moment = [], start + datetime.timedelta(minutes=1)
    while len(expected) < 12:
        if _cron_matches(fields, moment):
            expected.append(moment.strftime("%Y-%m-%d %H:%M"))
        moment += datetime.timedelta(minutes=1)
    assert fired == expected


# ---------------------------------------------------------------- values the proxy reads


def _with_web(**fields: Any) -> dict[str, Any]:
    data = copy.deepcopy(MINIMAL)
    data["services"]["web"].update(fields)
    return data


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="/.a_~%2fF", max_size=12))
def test_a_route_path_passes_exactly_when_an_ingress_path_could_hold_it(tail: str) -> None:
    """The Kubernetes API server's rule for Prefix/Exact Ingress paths, as written in
    pkg/apis/networking/validation, plus the spec's own characters; either way one line."""
    path = "/" + tail
    ingress_ok = not any(s in path for s in ("//", "/./", "/../", "%2f", "%2F")) and not (
        path.endswith(("/..", "/."))
    )
    chars_ok = re.fullmatch(r"/[A-Za-z0-9._~/-]*", path) is not None
    data = _with_web(ports=[{"port": 8000, "expose": "http", "path": path}])
    if ingress_ok and chars_ok:
        assert parse_spec(data).services["web"].ports[0].path == path
        return
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    [line] = info.value.lines
    assert line.startswith("<spec>: services.web.ports[0].path: ")
    assert ("Kubernetes refuses in an Ingress path" in line) == chars_ok


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="/%0aF{}zx?=&", max_size=12))
def test_a_health_path_passes_exactly_when_every_percent_starts_an_escape(tail: str) -> None:
    path = "/" + tail
    health = {"type": "http", "path": path}
    data = _with_web(ports=[{"port": 8000, "expose": "http"}], health=health)
    if re.fullmatch(r"([^%]|%[0-9A-Fa-f]{2})*", path):
        assert parse_spec(data).services["web"].health.path == path
        return
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    [line] = info.value.lines
    assert line.startswith("<spec>: services.web.health.path: has a % that does not start")


@pytest.mark.parametrize(
    "email", ["ops+{x}@example.com", "{env.HOME}@example.com", "ops}@example.com"]
)
def test_an_acme_email_with_braces_is_refused_by_the_spec_and_new_and_import(email: str) -> None:
    from blueprints import scaffold

    data = copy.deepcopy(MINIMAL)
    data["acme_email"] = email
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    assert info.value.lines == [
        "<spec>: acme_email: must not contain { or }: the proxy (Caddy) reads {...} in it as a "
        f"placeholder and refuses to start; use an address without braces (got {email!r})"
    ]
    assert not spec_module.EMAIL.match(email)  # the rule `blueprints new` and `import` use
    with pytest.raises(scaffold.ScaffoldError):
        scaffold.check_email(email)


# --- reading a spec once per process (load_spec's cache) and the per-spec caches -------------


def _spec_with_source(tmp_path: Path, text: str) -> Path:
    (tmp_path / "app.conf").write_text(text)
    spec = yaml.safe_load((ROOT / "examples/app.yaml").read_text())
    web = spec["services"]["web"]
    web["files"] = [{"path": "/etc/app/app.conf", "source": "app.conf"}]
    path = tmp_path / "app.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _conf(app) -> str:
    return next(f.text for f in app.services["web"].files if f.path == "/etc/app/app.conf")


def test_a_spec_read_again_unchanged_is_the_same_spec(tmp_path: Path) -> None:
    path = _spec_with_source(tmp_path, "one\n")
    first = load_spec(path)
    assert load_spec(path) is first
    assert load_spec(tmp_path / "." / "app.yaml") is first  # the same file by another path


def test_a_changed_spec_or_source_file_is_read_again(tmp_path: Path) -> None:
    path = _spec_with_source(tmp_path, "one\n")
    first = load_spec(path)
    (tmp_path / "app.conf").write_text("two\n")
    second = load_spec(path)
    assert second is not first and _conf(second) == "two\n" and _conf(first) == "one\n"
    path.write_text(path.read_text().replace("name: shop", "name: shop2"))
    assert load_spec(path).name == "shop2"
    (tmp_path / "app.conf").unlink()
    with pytest.raises(SpecError, match=r"app\.conf: no such file"):
        load_spec(path)


def test_bad_yaml_is_still_described_by_pyyaml(tmp_path: Path) -> None:
    # libyaml reads specs; its messages leave out the character at fault, PyYAML's do not.
    path = tmp_path / "app.yaml"
    path.write_text("name: shop\nservices: @oops\n")
    with pytest.raises(SpecError, match="found character '@' that cannot start any token"):
        load_spec(path)
    path.write_text("name: a\nname: b\n")
    with pytest.raises(SpecError, match="given twice"):
        load_spec(path)


def test_volume_users_are_worked_out_once_and_follow_a_copy() -> None:
    app = load_spec(ROOT / "examples/app.yaml")
    fresh = parse_spec(yaml.safe_load((ROOT / "examples/app.yaml").read_text()))
    expected = {
        v: sorted(n for n, s in app.services.items() if any(m.volume == v for m in s.volumes))
        for v in app.volumes
    }
    assert {v: app.volume_users(v) for v in app.volumes} == expected
    assert app.volume_users("no-such-volume") == []
    users = app.volume_users(next(iter(app.volumes)))
    users.append("MUTATED")  # a caller's list is its own
    assert {v: app.volume_users(v) for v in app.volumes} == expected
    assert app == fresh  # the caches are no part of the spec
    # A copy with other services works them out again.
    volume, (user, *_) = next((v, u) for v, u in expected.items() if u)
    svc = app.services[user].model_copy(update={"volumes": []})
    copy_ = app.model_copy(update={"services": {**app.services, user: svc}})
    assert user not in copy_.volume_users(volume)
    assert app.volume_users(volume) == expected[volume]
