"""The nomad renderer: HCL parsed back and compared with what the spec implies, hostile values,
real validators (cloud-init, shellcheck, systemd-analyze), determinism, goldens."""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hcl2
import pytest
import validators
import yaml
from golden_files import SHIPPED, check_golden, check_no_stale_sets
from hcl2.utils import SerializationOptions
from hypothesis import given, settings
from hypothesis import strategies as st

from blueprints.backup import backup_source
from blueprints.backup.storage import Storage
from blueprints.render.common import hcl_name, hcl_string
from blueprints.render.single_vm import METADATA_GUARD_UNIT
from blueprints.rungs.nomad.bootstrap import (
    AGENT_CONFIG,
    CA_FILE,
    CERT_FILE,
    GOSSIP_CONFIG,
    HASHICORP_FINGERPRINT,
    INSTALL_NODE_READY,
    KEY_FILE,
    NODE_CONFIG,
    NODE_READY,
    TOKEN_FILE,
    NomadNode,
    file_permissions,
    node_ready_source,
    render_cloud_init,
    render_node_files,
)
from blueprints.rungs.nomad.release import (
    MHZ_PER_CORE,
    Timing,
    render_backup_jobs,
    render_ingress_job,
    render_jobs,
    render_service_job,
    secrets_digest,
    variables,
)
from blueprints.rungs.nomad.rules import check_nomad, unenforced_health
from blueprints.spec import AppSpec

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden" / "nomad"
EXAMPLE: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "app.yaml").read_text())
IPS = ("10.0.1.10", "10.0.1.11", "10.0.1.12")
DEVICE = "/dev/disk/by-id/scsi-0HC_Volume_12345678"
SCRIPTS = "/usr/local/lib/blueprints/"
UNITS = "/etc/systemd/system/"
# Strings come back as written between the quotes; hcl_decode reads them as HCL does.
PARSE = SerializationOptions(explicit_blocks=False, with_comments=False, preserve_heredocs=False)
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\"}


def hcl_decode(raw: str) -> str:
    """The text an HCL quoted string literal stands for (written here independently of the
    renderer's filter): backslash escapes, and $${ / %%{ for a literal ${ / %{."""
    assert raw[:1] == raw[-1:] == '"' and len(raw) >= 2, raw
    body, out, i = raw[1:-1], [], 0
    while i < len(body):
        ch = body[i]
        if ch == "\\":
            nxt = body[i + 1]
            if nxt in _ESCAPES:
                out.append(_ESCAPES[nxt])
                i += 2
            elif nxt in "uU":
                width = 4 if nxt == "u" else 8
                out.append(chr(int(body[i + 2 : i + 2 + width], 16)))
                i += 2 + width
            else:
                raise AssertionError(f"unknown escape in {raw!r}")
        elif body.startswith(("$${", "%%{"), i):
            out.append(ch + "{")
            i += 3
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def spec(data: Mapping[str, Any] | None = None) -> AppSpec:
    return AppSpec.model_validate(copy.deepcopy(dict(data or EXAMPLE)))


def pem(label: str, body: str) -> str:
    return f"-----BEGIN {label}-----\n{body}\n-----END {label}-----\n"


DEFAULT_TIMING = Timing()


def node(
    app: AppSpec | None = None,
    index: int = 0,
    timing: Timing = DEFAULT_TIMING,
) -> NomadNode:
    app = app or spec()
    return NomadNode(
        index=index,
        node_ips=IPS,
        subnet_cidr="10.0.1.0/24",
        data_device=DEVICE,
        deploy_key="ssh-ed25519 AAAAPLACEHOLDER deploy",
        volumes=tuple(sorted(app.volumes)) if index == 0 else (),
        timing=timing,
    )


CA_PEM = pem("CERTIFICATE", "PLACEHOLDER-CA")


def literal(value: Any) -> Any:
    """Parsed HCL with every string (and block label) decoded to the text it stands for."""
    if isinstance(value, dict):
        return {literal(k): literal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [literal(v) for v in value]
    if isinstance(value, str) and value.startswith('"'):
        return hcl_decode(value)
    return value


def parse(text: str) -> dict[str, Any]:
    return literal(hcl2.loads(text, serialization_options=PARSE))


def blocks(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Labelled blocks (group "web" {...}) as one mapping label -> body."""
    out: dict[str, Any] = {}
    for item in items:
        out.update(item)
    return out


def job_of(job_text: str) -> tuple[str, dict[str, Any]]:
    [job] = parse(job_text)["job"]
    [(name, body)] = job.items()
    return name, body


def group_of(job_text: str) -> tuple[str, dict[str, Any]]:
    """A service's job: its one group, by name."""
    _, body = job_of(job_text)
    [(name, group)] = blocks(body["group"]).items()
    return name, group


def jobs_of(app: AppSpec, timing: Timing = DEFAULT_TIMING) -> dict[str, dict[str, Any]]:
    """Service name -> its job's group."""
    out = {}
    for job, text in render_jobs(app, timing).items():
        name, group = group_of(text)
        assert job == f"{app.name}-{name}"
        out[name] = group
    return out


# --- what the spec implies, written from the spec's side ---------------------------------------


def expected_group(app: AppSpec, name: str, timing: Timing = DEFAULT_TIMING) -> dict[str, Any]:
    svc = app.services[name]
    group: dict[str, Any] = {"count": svc.replicas}
    update: dict[str, Any] = {"max_parallel": 1}
    # a canary beside the old instances where one fits: not with a volume, nor when every node
    # already holds one of its static ports (counting every service on that port)
    on_port = {
        host: sum(
            s.replicas
            for _, s in app.sorted_services()
            for q in s.ports
            if (q.published if q.expose == "tcp" else q.port) == host
        )
        for host in [p.published if p.expose == "tcp" else p.port for p in svc.ports]
    }
    if not svc.volumes and all(count < 3 for count in on_port.values()):
        update |= {"canary": 1, "auto_promote": True}
    update |= {
        "health_check": "checks",
        "min_healthy_time": "10s",
        "healthy_deadline": "5m",
        "progress_deadline": "10m",
        "auto_revert": True,
    }
    group["update"] = [update]
    constraints = []
    if svc.ports:
        constraints.append({"operator": "distinct_hosts", "value": "true"})
    if svc.volumes:
        constraints.append({"attribute": "${meta.blueprints_data}", "value": "true"})
    if constraints:
        group["constraint"] = constraints
    if svc.ports:
        ports = [
            {
                f"p{p.port}": {
                    "static": p.published if p.expose == "tcp" else p.port,
                    "to": p.port,
                    "host_network": "private",
                }
            }
            for p in svc.ports
        ]
        group["network"] = [{"port": ports}]
    if svc.volumes:
        group["volume"] = [
            {m.volume: {"type": "host", "source": m.volume, "read_only": m.read_only}}
            for m in svc.volumes
        ]
    group["restart"] = [{"attempts": 2, "interval": "30m", "delay": "15s", "mode": "fail"}]
    group["reschedule"] = [
        {
            "delay": f"{timing.reschedule_delay}s",
            "delay_function": "exponential",
            "max_delay": "1h",
            "unlimited": True,
        }
    ]
    if timing.lost_after:
        group["disconnect"] = [
            {"lost_after": f"{timing.lost_after}s", "replace": True, "reconcile": "keep_original"}
        ]
    main: dict[str, Any] = {"name": f"{app.name}-{name}", "provider": "nomad"}
    if svc.ports:
        main["port"] = f"p{svc.ports[0].port}"
    services = [main]
    for i, p in enumerate(svc.ports):
        if p.expose != "http":
            continue
        router = f"{name}-{p.port}"
        rule = f"Host(`{p.host or app.domain}`)"
        if p.path != "/":
            rule += f" && PathPrefix(`{p.path.rstrip('/')}`)"
        tags = [
            "traefik.enable=true",
            f"traefik.http.routers.{router}.rule={rule}",
            f"traefik.http.routers.{router}.entrypoints=websecure",
            f"traefik.http.routers.{router}.tls.certresolver=le",
        ]
        if i == 0:
            main["tags"] = tags
        else:
            services.append(
                {
                    "name": f"{app.name}-{name}-{p.port}",
                    "provider": "nomad",
                    "port": f"p{p.port}",
                    "tags": tags,
                }
            )
    health = svc.health
    if health is not None and (health.type != "command" or svc.ports):
        kind = "tcp" if health.type == "command" else health.type
        port = svc.ports[0].port if health.type == "command" else health.port or svc.ports[0].port
        check: dict[str, Any] = {"type": kind, "port": f"p{port}"}
        if kind == "http":
            check["path"] = health.path
        check |= {
            "interval": f"{health.interval}s",
            "timeout": f"{health.timeout}s",
            "check_restart": [{"limit": health.retries, "grace": f"{health.start_period}s"}],
        }
        main["check"] = [check]
    group["service"] = services
    tasks = []
    if svc.depends_on:
        deps = sorted(svc.depends_on)
        tasks.append(
            {
                "wait-for-dependencies": {
                    "driver": "docker",
                    "lifecycle": [{"hook": "prestart", "sidecar": False}],
                    "config": [
                        {
                            "image": "busybox:1.37.0",
                            "command": "sh",
                            "args": [
                                "-c",
                                'for dep in "$@"; do until grep -qx "$dep" /local/dependencies; '
                                'do echo "waiting for $dep"; sleep 2; done; done',
                                "wait",
                                *deps,
                            ],
                        }
                    ],
                    "template": [
                        {
                            "data": "".join(
                                f'{{{{ range nomadService "{app.name}-{d}" }}}}{d}\n{{{{ end }}}}'
                                for d in deps
                            ),
                            "destination": "local/dependencies",
                            "change_mode": "noop",
                        }
                    ],
                    "resources": [{"cpu": 50, "memory": 32}],
                }
            }
        )
    config: dict[str, Any] = {"image": svc.image}
    if svc.command:
        config |= {"command": svc.command[0], "args": list(svc.command[1:])}
    if svc.ports:
        config["ports"] = [f"p{p.port}" for p in svc.ports]
    # by name: its dependencies and the services its env values or command name as a word
    words = "\n".join([*svc.env.values(), *(svc.command or [])])

    def named(other: str) -> bool:
        return re.search(rf"(?<![\w-]){re.escape(other)}(?![\w-])", words) is not None

    reachable = [
        n
        for n, s in app.sorted_services()
        if n != name and s.ports and (n in svc.depends_on or named(n))
    ]
    if reachable:
        config["volumes"] = ["local/hosts:/etc/hosts:ro"]
    task: dict[str, Any] = {"driver": "docker", "kill_timeout": "30s", "config": [config]}
    if svc.env:
        task["env"] = [dict(svc.env)]
    templates = []
    if svc.secret_env:
        path = f"nomad/jobs/{app.name}-{name}/{name}/{name}"
        data = f'{{{{ with nomadVar "{path}" }}}}\n'
        data += "".join(f"{v}={{{{ .{v} | toJSON }}}}\n" for v in sorted(svc.secret_env))
        templates.append(
            {
                "data": data + "{{ end }}\n",
                "destination": "secrets/env",
                "env": True,
                # new values come as a new job version (the digest in its meta): a deployment
                "change_mode": "noop",
            }
        )
    if reachable:
        hosts = "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n" + "".join(
            f'{{{{ range nomadService "{app.name}-{n}" }}}}{{{{ .Address }}}} {n}\n{{{{ end }}}}'
            for n in reachable
        )
        templates.append({"data": hosts, "destination": "local/hosts", "change_mode": "restart"})
    if templates:
        task["template"] = templates
    if svc.volumes:
        task["volume_mount"] = [
            {"volume": m.volume, "destination": m.path, "read_only": m.read_only}
            for m in svc.volumes
        ]
    task["resources"] = [{"cpu": math.ceil(svc.cpu * MHZ_PER_CORE), "memory": svc.memory}]
    tasks.append({name: task})
    group["task"] = tasks
    return group


# --- hostile values ----------------------------------------------------------------------------

NASTY = [
    'say "hi"',
    "$$",
    "$HOME and $$ and $",
    "back\\slash\\",
    "line one\nline two",
    "ends with newline\n",
    "tab\there\r",
    "control \x01\x1b[31m\x7f",
    '{{ env "NOMAD_TOKEN" }}',
    '" }\n  evil = "1',
    "unicode é ✓ \u2028 \x85",
    "",
    "#!/bin/sh",
    "<<EOF\nheredoc\nEOF",
    "100% {braces} $ {spaced}",
]
# What the Nomad client would expand at run time: refused on this blueprint.
EXPANDED = ["${HOME}", '${file("/etc/shadow")}', "%{ if true }x%{ endif }", "$${already}", "a%{b"]


def nasty_data() -> dict[str, Any]:
    data = copy.deepcopy(EXAMPLE)
    web = data["services"]["web"]
    web["env"] = {**web["env"], **{f"NASTY_{i}": v for i, v in enumerate(NASTY)}}
    web["command"] = list(NASTY)
    web["health"]["path"] = "/h'\"$(id)`id`$HOME$$%6e;&|<>*?~!#"
    data["services"]["redis"]["command"] = [*NASTY, "--", "-"]
    return data


EXAMPLES = {
    "example": EXAMPLE,
    "hostile": nasty_data(),
    "minimal": {
        "name": "tiny",
        "domain": "tiny.example.com",
        "acme_email": "ops@example.com",
        "services": {"job": {"image": "busybox:1.36", "command": ["sleep", "infinity"]}},
    },
    "routes": {
        **copy.deepcopy(EXAMPLE),
        "services": {
            **copy.deepcopy(EXAMPLE["services"]),
            "api": {
                "image": "ghcr.io/example/api:2",
                "replicas": 3,
                "ports": [
                    {"port": 9000, "expose": "http", "path": "/api"},
                    {"port": 9001, "expose": "http", "host": "admin.example.com"},
                    {"port": 9002, "expose": "tcp", "public_port": 19002},
                ],
                "health": {"type": "http", "port": 9001, "path": "/ready"},
                # names redis in its env, postgres nowhere: reaches redis only
                "env": {"CACHE": "redis:6379", "NOTE": "postgresql-like"},
            },
        },
    },
}


@pytest.mark.parametrize("case", sorted(EXAMPLES))
def test_each_job_is_exactly_what_the_spec_implies(case: str):
    """Walks the spec: every service's image, command, ports, env, secret env names, health
    check, mounts, dependencies, replicas, cpu and memory, and nothing else, reach its job."""
    app = spec(EXAMPLES[case])
    groups = jobs_of(app)
    assert list(groups) == sorted(app.services)
    for svc in app.services:
        assert groups[svc] == expected_group(app, svc), svc


def test_timing_reaches_every_job():
    app = spec()
    timing = Timing(heartbeat_grace=20, min_heartbeat_ttl=15, lost_after=300, reschedule_delay=5)
    groups = jobs_of(app, timing)
    for svc in app.services:
        assert groups[svc] == expected_group(app, svc, timing)
    agent = parse(render_node_files(node(timing=timing))[AGENT_CONFIG])
    [server] = agent["server"]
    assert server["heartbeat_grace"] == "20s" and server["min_heartbeat_ttl"] == "15s"


def test_job_level_settings():
    app = spec()
    for job, text in render_jobs(app, Timing()).items():
        name, body = job_of(text)
        assert name == job
        assert body["type"] == "service" and body["datacenters"] == ["dc1"]
        service = job.removeprefix("shop-")
        assert body["meta"] == [{"blueprints_app": "shop", "blueprints_service": service}]
        assert "update" not in body  # each group says how it rolls


def test_changing_web_leaves_every_other_job_byte_identical():
    """Image, env, replicas, command and secrets of web: postgres, redis and worker are the
    same text, so Pulumi does not even submit them."""
    before = render_jobs(spec(), Timing())
    data = copy.deepcopy(EXAMPLE)
    web = data["services"]["web"]
    web["image"] = "ghcr.io/example/shop-web:1.4.3"
    web["env"]["LOG_LEVEL"] = "debug"
    web["replicas"] = 3
    web["command"] = [*web["command"], "--timeout", "60"]
    web["secret_env"] = [*web["secret_env"], "SENTRY_DSN"]
    after = render_jobs(spec(data), Timing())
    assert set(before) == set(after)
    assert [j for j in before if before[j] != after[j]] == ["shop-web"]
    # and no task of postgres or redis reads web's address: web moving restarts neither
    for job in ("shop-postgres", "shop-redis"):
        assert '"shop-web"' not in after[job] and "nomadService" not in after[job]


def test_no_canary_where_no_node_has_the_port_free():
    """web (2 replicas) and api (1) share port 8000: three instances, one per node, so neither
    can start a canary beside its old instances; worker (no port) and redis (alone) can."""
    data = copy.deepcopy(EXAMPLE)
    data["services"]["api"] = {"image": "ghcr.io/example/api:2", "ports": [{"port": 8000}]}
    groups = jobs_of(spec(data))
    canary = {name: "canary" in g["update"][0] for name, g in groups.items()}
    assert canary == {
        "api": False,
        "postgres": False,
        "redis": True,
        "web": False,
        "worker": True,
    }
    assert "canary" in jobs_of(spec())["web"]["update"][0]  # alone on 8000: a node is free


def test_a_new_secret_value_is_a_new_job_version():
    app = spec()
    plain = render_jobs(app, Timing())
    first = render_jobs(app, Timing(), {"web": "d1", "worker": "d1", "postgres": "d2"})
    second = render_jobs(app, Timing(), {"web": "d3", "worker": "d1", "postgres": "d2"})
    assert [j for j in first if first[j] != second[j]] == ["shop-web"]
    _, body = job_of(second["shop-web"])
    assert body["meta"] == [
        {"blueprints_app": "shop", "blueprints_service": "web", "blueprints_secrets": "d3"}
    ]
    assert first["shop-redis"] == plain["shop-redis"]  # no secrets, no digest


def test_the_secrets_digest_is_keyed_and_reveals_nothing():
    app = spec()
    values = {"DATABASE_PASSWORD": "hunter2", "DJANGO_SECRET_KEY": "k", "POSTGRES_PASSWORD": "p"}
    one = secrets_digest("key-one", app, "web", values)
    assert one == secrets_digest("key-one", app, "web", dict(values))
    assert one != secrets_digest("key-two", app, "web", values)
    assert one != secrets_digest("key-one", app, "web", {**values, "DJANGO_SECRET_KEY": "k2"})
    assert "hunter2" not in one and secrets_digest("key-one", app, "redis", values) is None


# go-envparse (hashicorp/go-envparse, envparse.go parseLine), the double-quoted value as Nomad
# reads a template's env file, written here from its source: the escapes it takes.
_ENVPARSE = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "r": "\r", "n": "\n", "t": "\t"}


def envparse_double_quoted(raw: str) -> str:
    assert raw[0] == raw[-1] == '"'
    out, i, body = [], 0, raw[1:-1]
    while i < len(body):
        ch = body[i]
        assert ord(ch) >= 32, "a control character is an error"
        if ch == '"':
            raise AssertionError("unescaped quote")
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        nxt = body[i + 1]
        if nxt == "u":
            code = int(body[i + 2 : i + 6], 16)
            i += 6
            if 0xD800 <= code < 0xDC00:
                assert body[i : i + 2] == "\\u"
                low = int(body[i + 2 : i + 6], 16)
                code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                i += 6
            out.append(chr(code))
        else:
            out.append(_ENVPARSE[nxt])  # any other escape is an error there too
            i += 2
    return "".join(out)


def go_to_json(value: str) -> str:
    """Go's json.Marshal of a string (consul-template's toJSON): HTML-safe, with U+2028/9
    escaped, and UTF-16 escapes for the rest of the control range."""
    text = json.dumps(value, ensure_ascii=False)
    for ch in "<>&\u2028\u2029":
        text = text.replace(ch, f"\\u{ord(ch):04x}")
    return text


@pytest.mark.parametrize(
    "secret",
    ["p&ss<word>", 'quote" and \\ back', "tab\tin", "\u2028line\u2029sep", "😀 é", "$HOME ${X}"],
)
def test_secret_values_reach_the_task_env_as_stored(secret: str):
    """The secrets template writes NAME={{ .NAME | toJSON }}; what Nomad's env parser makes of
    that is the value itself."""
    assert envparse_double_quoted(go_to_json(secret)) == secret


def test_hosts_list_only_the_services_a_task_reaches():
    groups = jobs_of(spec(EXAMPLES["routes"]))

    def hosts(group: dict[str, Any]) -> str | None:
        [(_, task)] = [
            (n, t) for n, t in blocks(group["task"]).items() if n != "wait-for-dependencies"
        ]
        found = [t["data"] for t in task.get("template", []) if t["destination"] == "local/hosts"]
        return found[0] if found else None

    assert hosts(groups["postgres"]) is None and hosts(groups["redis"]) is None
    web = hosts(groups["web"])
    assert web is not None and re.findall(r'nomadService "([^"]+)"', web) == [
        "shop-postgres",
        "shop-redis",
    ]
    api = hosts(groups["api"])
    assert api is not None and re.findall(r'nomadService "([^"]+)"', api) == ["shop-redis"]


def test_jobs_grow_linearly_with_the_services():
    """Each job holds its own service and what it reaches; a chain of n services, each naming
    the one before, gives jobs of constant size."""

    def chain(n: int) -> AppSpec:
        services = {
            f"s{i:04d}": {
                "image": "busybox:1.36",
                "ports": [{"port": 10000 + i}],
                **({"env": {"UPSTREAM": f"s{i - 1:04d}:{9999 + i}"}} if i else {}),
            }
            for i in range(n)
        }
        return spec(
            {**{k: EXAMPLE[k] for k in ("name", "domain", "acme_email")}, "services": services}
        )

    small, large = render_jobs(chain(50), Timing()), render_jobs(chain(400), Timing())
    total = {n: sum(len(t) for t in jobs.values()) for n, jobs in ((50, small), (400, large))}
    assert total[400] / total[50] < 8 * 1.05
    assert max(len(t) for t in large.values()) <= max(len(t) for t in small.values()) + 16


def test_hostile_values_change_no_structure():
    """Quotes, $$, newlines, control characters: the clean and the hostile job differ in
    values only, and each value reads back as written."""

    def shape(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: shape(v) for k, v in value.items() if not k.startswith("NASTY_")}
        if isinstance(value, list):
            return [shape(v) for v in value] if value and isinstance(value[0], dict) else "list"
        return type(value).__name__

    clean = parse(render_jobs(spec(), Timing())["shop-web"])
    evil_app = spec(nasty_data())
    evil_text = render_jobs(evil_app, Timing())["shop-web"]
    evil = parse(evil_text)
    assert shape(clean) == shape(evil)
    _, group = group_of(evil_text)
    web = blocks(group["task"])["web"]
    assert web["env"][0] == dict(evil_app.services["web"].env)
    assert [web["config"][0]["command"], *web["config"][0]["args"]] == NASTY
    assert "evil" not in evil["job"][0]["shop-web"]


@pytest.mark.parametrize("value", EXPANDED)
@pytest.mark.parametrize("where", ["env", "command", "health"])
def test_values_nomad_would_expand_are_refused_with_one_line(value: str, where: str):
    data = copy.deepcopy(EXAMPLE)
    web = data["services"]["web"]
    if where == "env":
        # written so that the value the task receives (references resolved) is `value`
        web["env"]["GREETING"] = value.replace("${", "$${")
        path = ("services", "web", "env", "GREETING")
    elif where == "command":
        web["command"] = ["sh", "-c", value]
        path = ("services", "web", "command", 2)
    else:
        web["health"]["path"] = "/" + value.replace(" ", "")  # a path holds no space
        path = ("services", "web", "health", "path")
        if "%{" in value:  # not a %XX escape: the spec refuses the path before any rung
            with pytest.raises(ValueError, match="does not start a %XX escape"):
                spec(data)
            return
    problems = check_nomad(spec(data))
    assert [p for p, _ in problems] == [path]
    [(_, message)] = problems
    seq = "${" if "${" in value else "%{"
    assert f"contains {seq!r}, which the Nomad client expands at run time" in message
    assert "\n" not in message
    with pytest.raises(ValueError, match="expands at run time"):
        render_jobs(spec(data), Timing())


def test_validate_with_the_blueprint_refuses_them(tmp_path: Path):
    from typer.testing import CliRunner

    from blueprints.cli import app as cli

    data = copy.deepcopy(EXAMPLE)
    data["services"]["web"]["env"]["HOME_DIR"] = "$${HOME}"
    path = tmp_path / "app.yaml"
    path.write_text(yaml.safe_dump(data))
    runner = CliRunner()
    refused = runner.invoke(cli, ["validate", str(path), "--blueprint", "nomad"])
    assert refused.exit_code == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "services.web.env.HOME_DIR: contains '${'" in lines[0]
    assert "Traceback" not in refused.output
    # the same spec is fine where nothing expands it
    assert runner.invoke(cli, ["validate", str(path), "--blueprint", "compose"]).exit_code == 0
    unknown = runner.invoke(cli, ["validate", str(path), "--blueprint", "swarm"])
    assert (
        unknown.exit_code == 2 and "choose one of single-vm, compose, nomad, k8s" in unknown.stderr
    )


def test_secret_values_are_never_in_a_job_or_the_user_data():
    app = spec()
    secrets = {n: f"s3cr3t-{n}-{i}" for i, n in enumerate(app.secret_names())}
    texts = [*render_jobs(app, Timing()).values(), render_ingress_job(app, CA_PEM, Timing())]
    texts += [render_cloud_init(node(app, index=i)) for i in range(3)]
    for value in secrets.values():
        assert all(value not in text for text in texts)
    # each service's own Variable, readable by its task alone
    stored = variables(app, secrets)
    assert stored == {
        f"nomad/jobs/shop-{svc}/{svc}/{svc}": {v: secrets[v] for v in app.services[svc].secret_env}
        for svc in ("postgres", "web", "worker")
    }
    jobs = render_jobs(app, Timing())
    for svc in ("web", "worker", "postgres"):
        assert f'nomadVar \\"nomad/jobs/shop-{svc}/{svc}/{svc}\\"' in jobs[f"shop-{svc}"]


def test_no_secret_and_no_key_material_is_in_the_user_data():
    """TLS files, the gossip key and the management token arrive over SSH (nomad-node-ready),
    which writes the secret ones root-only; the user data only says where they go."""
    files = render_node_files(node())
    assert not {CA_FILE, CERT_FILE, KEY_FILE, GOSSIP_CONFIG, TOKEN_FILE} & set(files)
    assert all(file_permissions(path) != "0600" for path in files)
    for path in (AGENT_CONFIG, NODE_CONFIG):
        assert file_permissions(path) == "0644", path
    assert file_permissions(INSTALL_NODE_READY) == "0755"
    config = json.loads(files[NODE_CONFIG])
    assert (config["gossip_file"], config["token_file"]) == (GOSSIP_CONFIG, TOKEN_FILE)
    unit = files["/etc/systemd/system/nomad.service"]
    assert f"-config {GOSSIP_CONFIG}" in unit and f"ConditionPathExists={CERT_FILE}" in unit


def test_user_data_holds_nothing_of_the_app_but_its_volumes():
    """Principle 9: images, env, secrets, commands, routes, replicas and admin keys of the app
    change no byte of any node's user data."""
    data = copy.deepcopy(nasty_data())
    data["admin"]["ssh_keys"].append("ssh-ed25519 AAAAOTHER other@example.com")
    data["domain"] = "other.example.com"
    for index in range(3):
        assert render_cloud_init(node(spec(), index)) == render_cloud_init(node(spec(data), index))
    text = render_cloud_init(node(spec(), 0))
    for app_value in ("shop-web", "gunicorn", "DATABASE_HOST", "shop.example.com", "ops@"):
        assert app_value not in text


def test_node_config_and_ready_script():
    for index in range(3):
        files = render_node_files(node(index=index))
        config = json.loads(files[NODE_CONFIG])
        assert config["name"] == f"node-{index + 1}" and config["region"] == "global"
        # the other servers; this one is "local"
        assert config["peers"] == [f"https://{ip}:4646" for ip in IPS if ip != IPS[index]]
        assert config["first"] is (index == 0)
        assert config["formed_marker"] == (
            "/srv/data/.blueprints/nomad-cluster-formed" if index == 0 else None
        )
        assert config["servers"] == 3 and config["local"] == "https://127.0.0.1:4646"
        assert (config["ca_file"], config["cert_file"], config["key_file"]) == (
            CA_FILE,
            CERT_FILE,
            KEY_FILE,
        )
        assert config["token_file"] == TOKEN_FILE
        assert config["admin_keys_file"] == "/etc/blueprints/admin-keys/deploy"
        # the script itself arrives over SSH; the user data has its installer
        assert NODE_READY not in files
        installer = files[INSTALL_NODE_READY]
        assert f"target={NODE_READY}\n" in installer
        assert "grep -qx '#!/usr/bin/env python3'" in installer
        assert node_ready_source().startswith("#!/usr/bin/env python3\n")


# --- the agent -----------------------------------------------------------------------------------


@pytest.mark.parametrize("index", [0, 1, 2])
def test_agent_config(index: int):
    agent = parse(render_node_files(node(index=index))[AGENT_CONFIG])
    ip = IPS[index]
    assert agent["name"] == f"node-{index + 1}"
    assert agent["addresses"] == [{"http": "0.0.0.0", "rpc": ip, "serf": ip}]
    assert agent["advertise"] == [{"http": ip, "rpc": ip, "serf": ip}]
    [server] = agent["server"]
    assert server["enabled"] is True and server["bootstrap_expect"] == 3
    assert server["server_join"] == [{"retry_join": list(IPS), "retry_interval": "15s"}]
    [client] = agent["client"]
    assert client["servers"] == [f"{i}:4647" for i in IPS]
    assert client["host_network"] == [{"private": {"cidr": "10.0.1.0/24"}}]
    assert agent["acl"] == [{"enabled": True}]
    [tls] = agent["tls"]
    assert tls["http"] is True and tls["rpc"] is True and tls["verify_server_hostname"] is True
    assert (tls["ca_file"], tls["cert_file"], tls["key_file"]) == (CA_FILE, CERT_FILE, KEY_FILE)
    plugins = blocks(agent["plugin"])
    assert sorted(plugins) == ["docker", "raw_exec"]
    assert plugins["docker"]["config"][0]["volumes"] == [{"enabled": False}]
    # for the backup jobs (blueprints-backup as root on the data node); on every node, so the
    # user data does not depend on where the data is
    assert plugins["raw_exec"] == {"config": [{"enabled": True}]}
    if index == 0:
        assert client["meta"] == [{"blueprints_data": "true"}]
        assert blocks(client["host_volume"]) == {
            "pgdata": {"path": "/srv/data/pgdata", "read_only": False},
            "blueprints_traefik": {"path": "/srv/data/traefik", "read_only": False},
        }
    else:
        assert "meta" not in client and "host_volume" not in client


def test_ingress_job():
    text = render_ingress_job(spec(), CA_PEM, Timing())
    name, body = job_of(text)
    assert name == "blueprints_ingress"
    group = blocks(body["group"])["traefik"]
    assert group["count"] == 1
    assert group["constraint"] == [{"attribute": "${meta.blueprints_data}", "value": "true"}]
    ports = blocks(group["network"][0]["port"])
    assert {k: v["static"] for k, v in ports.items()} == {"http": 80, "https": 443}
    assert {v["host_network"] for v in ports.values()} == {"private"}
    task = blocks(group["task"])["traefik"]
    assert task["identity"] == [{"env": True}]
    args = task["config"][0]["args"]
    assert task["config"][0]["image"] == "traefik:v3.5.3"
    assert "--certificatesresolvers.le.acme.email=ops@example.com" in args
    assert "--providers.nomad.exposedByDefault=false" in args
    assert "--providers.nomad.endpoint.token=${NOMAD_TOKEN}" in args
    assert task["template"][0]["data"] == CA_PEM


# --- spec rules ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "path", "message"),
    [
        (
            {"services": {"redis": {"ports": [{"port": 4646}]}}},
            ("services", "redis", "ports", 0, "port"),
            "port 4646 is used by Nomad on every nomad node; choose another",
        ),
        (
            {"services": {"web": {"replicas": 4}}},
            ("services", "web", "replicas"),
            "port 8000 is a static host port on 3 nodes, so at most 3 instances can use it "
            "(got 4: web (4))",
        ),
        (
            {"volumes": {"traefik": {"size_gb": 1}}},
            ("volumes", "traefik"),
            "is reserved by the nomad blueprint for the ingress's TLS state "
            "(/srv/data/traefik); rename the volume",
        ),
        (
            {"services": {"redis": {"health": {"type": "tcp", "port": 7000}}}},
            ("services", "redis", "health", "port"),
            "port 7000 is not among the service's ports; Nomad checks a declared port",
        ),
    ],
)
def test_spec_rules_of_the_blueprint(change, path, message):
    data = copy.deepcopy(EXAMPLE)
    for key, value in change.items():
        for sub, fields in value.items():
            data[key].setdefault(sub, {}).update(fields)
    assert (path, message) in check_nomad(spec(data))


def test_example_breaks_no_rule_and_command_checks_are_reported():
    assert check_nomad(spec()) == []
    notes = unenforced_health(spec())
    assert [n.split(":")[0] for n in notes] == [
        "services.postgres.health",
        "services.worker.health",
    ]


# --- files, cloud-init and the real validators -------------------------------------------------


def test_only_the_data_node_holds_the_volume_and_bootstraps_acls():
    first, second = render_node_files(node(index=0)), render_node_files(node(index=1))
    data_only = set(first) - set(second)
    assert data_only == {
        UNITS + "srv-data.mount",
        UNITS + "dev-disk-by\\x2did-scsi\\x2d0HC_Volume_12345678.device.d/blueprints-timeout.conf",
        UNITS + "blueprints-format-data.service",
        UNITS + "blueprints-nomad-volumes.service",
        UNITS + "blueprints-nomad-acl-bootstrap.service",
        SCRIPTS + "format-data",
        SCRIPTS + "nomad-volumes",
        SCRIPTS + "nomad-acl-bootstrap",
    }
    assert set(second) - set(first) == set()


@pytest.mark.parametrize("index", [0, 1])
def test_cloud_init(index: int, tmp_path: Path):
    n = node(index=index)
    text = render_cloud_init(n)
    validators.cloud_init_schema(text, tmp_path)
    data = yaml.safe_load(text)
    # restic: what the backup jobs run (blueprints-backup, in python3)
    assert {"docker.io", "curl", "gnupg", "python3", "restic"} <= set(data["packages"])
    assert data["ssh_pwauth"] is False and data["disable_root"] is True
    [user] = data["users"]
    assert user["ssh_authorized_keys"] == ["ssh-ed25519 AAAAPLACEHOLDER deploy"]
    files = render_node_files(n)
    written = {f["path"]: f for f in data["write_files"]}
    assert {p: f["content"] for p, f in written.items()} == files
    assert all(f["permissions"] == file_permissions(p) for p, f in written.items())
    runcmd = data["runcmd"]
    install = runcmd.index(SCRIPTS + "install-nomad")
    assert install < runcmd.index("systemctl daemon-reload")
    # enabled, not started: the agent starts when its TLS files arrive
    assert runcmd[-1] == "systemctl enable nomad.service" + (
        " blueprints-nomad-volumes.service blueprints-nomad-acl-bootstrap.service"
        if index == 0
        else ""
    )
    assert not any(c.startswith("systemctl start") for c in runcmd)


def test_install_script_pins_version_and_key(tmp_path: Path):
    text = render_node_files(node())[SCRIPTS + "install-nomad"]
    assert "version=1.10.5-1\n" in text
    assert f"fingerprint={HASHICORP_FINGERPRINT}\n" in text
    assert "signed-by=$keyring" in text and "apt-mark hold nomad" in text


def _shellcheck_all(files: Mapping[str, str], tmp_path: Path) -> None:
    found = {
        p: t for p, t in files.items() if p.startswith(SCRIPTS) and t.startswith("#!/bin/bash")
    }
    assert found
    for path, text in found.items():
        target = tmp_path / Path(path).name
        target.write_text(text)
        validators.shellcheck(target, "bash")


def test_every_script_passes_shellcheck(tmp_path: Path):
    _shellcheck_all(render_node_files(node()), tmp_path)


def test_every_unit_passes_systemd_analyze_verify(tmp_path: Path):
    files = dict(render_node_files(node()))
    units = [
        Path(p).name
        for p in files
        if p.startswith(UNITS) and p.count("/") == 4 and p.endswith((".service", ".mount"))
    ]
    # Nomad comes with its package at boot, kill with the image; stand-ins for Exec*= checks.
    stubs = ["/usr/bin/nomad", "/usr/bin/kill"]
    files.update({stub: "#!/bin/sh\nexit 0\n" for stub in stubs})
    executable = [p for p in files if p.startswith(SCRIPTS)] + stubs
    root = validators.systemd_root(files, tmp_path / "root", executable=executable)
    assert "nomad.service" in units and METADATA_GUARD_UNIT in units
    validators.systemd_verify(root, sorted(units))
    for unit in (
        "nomad.service",
        "blueprints-nomad-volumes.service",
        "blueprints-nomad-acl-bootstrap.service",
    ):
        validators.systemctl_enable(root, unit)
    # the ACL bootstrap starts with the agent
    wants = root / "etc/systemd/system/nomad.service.wants"
    assert (wants / "blueprints-nomad-acl-bootstrap.service").is_symlink()


# --- the hcl filter ------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\0"), max_size=40))
def test_hcl_filter_round_trips_any_text(text: str):
    parsed = parse(f"a = {hcl_string(text)}\nb = [{hcl_string(text)}]\n")
    assert parsed == {"a": text, "b": [text]}


@given(st.text('${}%"\\\n ab', max_size=24))
def test_hcl_filter_round_trips_special_characters(text: str):
    assert parse(f"a = {hcl_string(text)}\n") == {"a": text}


def test_hcl_filters_refuse_what_they_cannot_hold():
    with pytest.raises(ValueError, match="NUL"):
        hcl_string("a\0b")
    for bad in ("A-B", "1A", "A B", "A=1\nB", ""):
        with pytest.raises(ValueError):
            hcl_name(bad)


# --- determinism and golden files --------------------------------------------------------------


def test_same_input_same_bytes():
    assert render_cloud_init(node()) == render_cloud_init(node())
    data = copy.deepcopy(EXAMPLE)
    data["services"] = dict(reversed(list(data["services"].items())))
    for svc in data["services"].values():
        svc["env"] = dict(reversed(list(svc.get("env", {}).items())))
        svc["depends_on"] = list(reversed(svc.get("depends_on", [])))
    assert render_jobs(spec(data), Timing()) == render_jobs(spec(), Timing())
    assert list(render_jobs(spec(data), Timing())) == sorted(f"shop-{s}" for s in data["services"])
    assert render_service_job(spec(), "web", Timing()) == render_jobs(spec(), Timing())["shop-web"]


GOLDEN_NODES = {"node-1": 0, "node-2": 1}
GOLDEN_SETS = {*GOLDEN_NODES, "release"}


@pytest.mark.parametrize("name", sorted(GOLDEN_NODES))
def test_golden_files(name: str, update_golden: bool):
    n = node(index=GOLDEN_NODES[name])
    rendered = {p.lstrip("/"): t for p, t in render_node_files(n).items()}
    rendered["cloud-init.yaml"] = render_cloud_init(n)
    check_golden(GOLDEN / name, rendered, update_golden)


GOLDEN_STORAGE = Storage(
    bucket="shop-backups",
    endpoint="https://fsn1.your-objectstorage.com",
    region="fsn1",
    access_key="AKIDEXAMPLE",
    folder="restic/shop-nomad-hcloud",
)


def test_golden_release(update_golden: bool):
    app = spec()
    rendered = {f"jobs/{job}.nomad.hcl": text for job, text in render_jobs(app, Timing()).items()}
    rendered["jobs/blueprints_ingress.nomad.hcl"] = render_ingress_job(app, CA_PEM, Timing())
    # the backup jobs, with the script they carry as one line (tests/test_node_backup.py)
    script, stand_in = hcl_string(backup_source()), hcl_string(SHIPPED)
    for job, text in render_backup_jobs(app, GOLDEN_STORAGE, "shop-nomad-hcloud").items():
        assert text.count(script) == 1
        rendered[f"jobs/{job}.nomad.hcl"] = text.replace(script, stand_in)
    check_golden(GOLDEN / "release", rendered, update_golden)


def test_golden_sets_are_exactly_the_nodes_and_the_release(update_golden: bool):
    stale = {p for p in GOLDEN.iterdir() if p.name not in GOLDEN_SETS} if GOLDEN.is_dir() else set()
    check_no_stale_sets(stale, update_golden)


# --- the spec's newer fields: entrypoint, container ports, interpolation, files, registries,
# --- shared volumes, tasks and schedules (tests/everything/app.yaml uses every one) -----------

EVERYTHING = ROOT / "tests" / "everything" / "app.yaml"


def everything() -> AppSpec:
    from blueprints.spec import load_spec

    return load_spec(EVERYTHING)


def main_task(group: dict[str, Any], name: str) -> dict[str, Any]:
    return blocks(group["task"])[name]


def test_everything_is_accepted_and_every_new_field_reaches_the_jobs():
    app = everything()
    assert check_nomad(app) == []
    groups = jobs_of(app)
    for name, svc in app.services.items():
        group = groups[name]
        task = main_task(group, name)
        [config] = task["config"]
        assert config["image"] == svc.image
        assert config.get("entrypoint") == (list(svc.entrypoint) if svc.entrypoint else None)
        if svc.command:
            assert [config["command"], *config["args"]] == svc.command
        else:
            assert "command" not in config
        # static host port = the service's port, mapped to the container's
        ports = blocks(group["network"][0]["port"]) if svc.ports else {}
        assert ports == {
            f"p{p.port}": {"static": p.port, "to": p.target, "host_network": "private"}
            for p in svc.ports
        }
        # env: resolved plain values in the job, the secret ones named in the Variable template
        placeholder = dict.fromkeys(app.secret_names(), "")
        env = app.environment(name, placeholder, "cluster")
        assert task.get("env", [{}])[0] == env.plain
        templates = {t["destination"]: t for t in task.get("template", [])}
        secret_env = templates.get("secrets/env", {}).get("data", "")
        for var in env.secret:
            assert f"{var}={{{{ .{var} | toJSON }}}}" in secret_env
        # files: a template each (perms = mode) mounted read-only at the spec's path
        mounts = {m["target"]: m for m in config.get("mount", [])}
        assert sorted(mounts) == sorted(f.path for f in svc.files)
        for f in svc.files:
            mount = mounts[f.path]
            assert mount["type"] == "bind" and mount["readonly"] is True
            tpl = templates[mount["source"]]
            assert tpl["perms"] == f.mode
            assert mount["source"].startswith("secrets/" if f.secret else "local/")
            if not f.secret:
                assert tpl["data"] == app.file_text(f, placeholder, "cluster")
        # registry credentials: named in the job, read from the Variable
        if app.registry_for(svc.image):
            assert config["auth"] == [
                {
                    "username": "${BLUEPRINTS_REGISTRY_USERNAME}",
                    "password": "${BLUEPRINTS_REGISTRY_PASSWORD}",
                }
            ]
            assert 'index . "registry-password"' in secret_env
        else:
            assert "auth" not in config
        # shared volume: every user on the data node
        if svc.volumes:
            assert {"attribute": "${meta.blueprints_data}", "value": "true"} in group["constraint"]
    # the redis check probes the port's label; its port 6380 maps to 6379
    [redis] = groups["redis"]["service"]
    assert redis["check"][0]["port"] == "p6380"
    assert app.shared_volumes() == {"uploads": ["web", "worker"]}
    # DATABASE_URL is composed with a secret: never in the env block
    assert "DATABASE_URL" not in main_task(groups["web"], "web")["env"][0]
    # web reaches redis (only referenced in env and a file) and postgres by name
    hosts = {t["destination"]: t for t in main_task(groups["web"], "web")["template"]}
    assert re.findall(r'nomadService "([^"]+)"', hosts["local/hosts"]["data"]) == [
        "full-postgres",
        "full-redis",
    ]


def test_tasks_and_schedules_are_batch_jobs():
    from blueprints.rungs.nomad.release import render_run_jobs

    app = everything()
    runs = render_run_jobs(app)
    assert list(runs) == [
        "full-task-migrate",
        "full-task-seed",
        "full-schedule-clear-sessions",
        "full-schedule-report",
    ]
    for kind, items in (("task", app.tasks), ("schedule", app.schedules)):
        for name, run in items.items():
            job, body = job_of(runs[f"full-{kind}-{name}"])
            assert job == f"full-{kind}-{name}" and body["type"] == "batch"
            if kind == "task":
                assert body["parameterized"] == [
                    {"payload": "forbidden", "meta_required": ["blueprints_release"]}
                ]
                assert "periodic" not in body
            else:
                assert body["periodic"] == [
                    {"crons": [run.cron], "time_zone": "UTC", "prohibit_overlap": True}
                ]
            [(group_name, group)] = blocks(body["group"]).items()
            assert group_name == run.service
            tasks = blocks(group["task"])
            task = tasks[run.service]
            assert task["leader"] is True
            [config] = task["config"]
            assert [config["command"], *config["args"]] == run.command
            svc = app.services[run.service]
            assert config.get("entrypoint") == (list(svc.entrypoint) if svc.entrypoint else None)
            # the watchdog keeps the timeout
            assert tasks["blueprints_timeout"]["config"][0]["args"][-1] == str(run.timeout)
            assert group["restart"] == [{"attempts": 0, "mode": "fail"}]
            if svc.volumes:
                assert group["constraint"] == [
                    {"attribute": "${meta.blueprints_data}", "value": "true"}
                ]
            env = [t for t in task["template"] if t["destination"] == "secrets/env"]
            assert f'nomadVar "nomad/jobs/full-{kind}-{name}"' in env[0]["data"]


def test_a_service_named_timeout_runs_a_task_beside_the_watchdog():
    """The watchdog's task name has an underscore, which no service (a DNS label) can take: a
    service named `timeout` and its task's watchdog are two tasks of the group, not one."""
    from blueprints.rungs.nomad.release import WATCHDOG_TASK, render_run_jobs

    data = copy.deepcopy(EXAMPLE)
    data["services"]["timeout"] = data["services"].pop("worker")
    data["tasks"] = {"sweep": {"service": "timeout", "command": ["sweep", "--now"]}}
    app = spec(data)
    assert check_nomad(app) == []
    [text] = render_run_jobs(app).values()
    _, body = job_of(text)
    [(group_name, group)] = blocks(body["group"]).items()
    assert group_name == "timeout"
    labels = [label for item in group["task"] for label in item]
    assert sorted(labels) == sorted(["timeout", WATCHDOG_TASK])
    tasks = blocks(group["task"])
    assert tasks["timeout"]["leader"] is True
    assert tasks["timeout"]["config"][0]["command"] == "sweep"
    assert "leader" not in tasks[WATCHDOG_TASK]


def test_a_secret_value_is_in_no_job_only_in_the_variables():
    from blueprints.rungs.nomad.release import render_run_jobs

    app = everything()
    secrets = {n: f"Zq9-distinctive-{n}" for n in app.secret_names()}
    texts = [*render_jobs(app, Timing()).values(), *render_run_jobs(app).values()]
    for value in secrets.values():
        assert not any(value in text for text in texts)
    stored = variables(app, secrets)
    web = stored["nomad/jobs/full-web/web/web"]
    assert web["DATABASE_URL"] == (
        "postgres://full:Zq9-distinctive-POSTGRES_PASSWORD@postgres:5432/full"
    )
    assert web["registry-password"] == "Zq9-distinctive-GHCR_TOKEN"
    assert "Zq9-distinctive-POSTGRES_PASSWORD" in stored["nomad/jobs/full-task-migrate"].values()
    assert set(stored) >= {
        "nomad/jobs/full-postgres/postgres/postgres",
        "nomad/jobs/full-worker/worker/worker",
        "nomad/jobs/full-schedule-report",
    }


HOSTILE_FILE = '{{ env "NOMAD_TOKEN" }} «« »» ${HOME} %{ if } \\ " \n\x01 {{ end }}'


def test_file_content_is_never_read_as_a_template_and_reads_back_as_written():
    data = copy.deepcopy(EXAMPLE)
    web = data["services"]["web"]
    web["files"] = [{"path": "/etc/app/x.conf", "content": HOSTILE_FILE.replace("${", "$${")}]
    web["entrypoint"] = ["/bin/tini", "--", *NASTY]
    app = spec(data)
    _, group = group_of(render_jobs(app, Timing())["shop-web"])
    task = main_task(group, "web")
    [tpl] = [t for t in task["template"] if t["destination"].startswith("local/files/")]
    assert tpl["data"] == HOSTILE_FILE
    assert tpl["left_delimiter"] not in tpl["data"]
    assert set(tpl["left_delimiter"]) == {"«"} and len(tpl["left_delimiter"]) == 3
    assert task["config"][0]["entrypoint"] == ["/bin/tini", "--", *NASTY]


def test_an_image_on_port_80_runs_behind_another_host_port():
    data = copy.deepcopy(EXAMPLE)
    data["services"]["web"]["ports"] = [{"port": 8080, "container_port": 80, "expose": "http"}]
    app = spec(data)
    assert check_nomad(app) == []
    _, group = group_of(render_jobs(app, Timing())["shop-web"])
    assert blocks(group["network"][0]["port"])["p8080"] == {
        "static": 8080,
        "to": 80,
        "host_network": "private",
    }
    assert group["service"][0]["check"][0]["port"] == "p8080"
    # the host side is what Nomad's own ports would clash with
    data["services"]["web"]["ports"] = [{"port": 80, "container_port": 8080, "expose": "http"}]
    assert [p for p, _ in check_nomad(spec(data))] == [("services", "web", "ports", 0, "port")]


@pytest.mark.parametrize(
    ("change", "path", "message"),
    [
        (
            lambda d: (
                d["services"].__setitem__("task-migrate", {"image": "busybox:1.36"})
                or d.__setitem__("tasks", {"migrate": {"service": "web", "command": "true"}})
            ),
            ("tasks", "migrate"),
            "its Nomad job would be named shop-task-migrate, as the job of service task-migrate "
            "is; rename the task",
        ),
        (
            lambda d: d.__setitem__(
                "schedules", {"x" * 55: {"service": "web", "command": "true", "cron": "@daily"}}
            ),
            ("schedules", "x" * 55),
            f"Nomad job name 'shop-schedule-{'x' * 55}' is longer than 63 characters; shorten "
            "the app or schedule name",
        ),
        (
            lambda d: d.__setitem__(
                "tasks", {"m": {"service": "web", "command": ["sh", "-c", "echo $${HOME}"]}}
            ),
            ("tasks", "m", "command", 2),
            None,
        ),
        (
            lambda d: d["services"]["web"]["env"].__setitem__("BLUEPRINTS_REGISTRY_PASSWORD", "x"),
            ("services", "web", "env"),
            "BLUEPRINTS_REGISTRY_PASSWORD is set by the nomad blueprint (the registry's "
            "credentials for the image pull); rename the variable",
        ),
    ],
)
def test_rules_of_tasks_schedules_and_names(change, path, message):
    data = copy.deepcopy(EXAMPLE)
    change(data)
    problems = check_nomad(spec(data))
    assert [p for p, _ in problems] == [path]
    if message is not None:
        assert problems[0][1] == message
