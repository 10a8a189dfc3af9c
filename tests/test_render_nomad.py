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
from golden_files import check_golden, check_no_stale_sets
from hcl2.utils import SerializationOptions
from hypothesis import given, settings
from hypothesis import strategies as st

from blueprints.render.common import hcl_name, hcl_string
from blueprints.render.nomad import (
    AGENT_CONFIG,
    APP_JOB_FILE,
    CA_FILE,
    CERT_FILE,
    GOSSIP_CONFIG,
    HASHICORP_FINGERPRINT,
    INGRESS_JOB_FILE,
    KEY_FILE,
    MHZ_PER_CORE,
    TOKEN_FILE,
    NomadNode,
    Timing,
    check_nomad,
    file_permissions,
    render_cloud_init,
    render_job,
    render_node_files,
    unenforced_health,
)
from blueprints.render.single_vm import METADATA_GUARD_UNIT
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
    secrets: Mapping[str, str] | None = None,
    timing: Timing = DEFAULT_TIMING,
) -> NomadNode:
    app = app or spec()
    return NomadNode(
        app=app,
        index=index,
        node_ips=IPS,
        subnet_cidr="10.0.1.0/24",
        data_device=DEVICE,
        ca_pem=pem("CERTIFICATE", "PLACEHOLDER-CA"),
        cert_pem=pem("CERTIFICATE", f"PLACEHOLDER-NODE-{index}"),
        key_pem=pem("PRIVATE KEY", f"PLACEHOLDER-KEY-{index}"),
        gossip_key="PLACEHOLDER-GOSSIP",
        bootstrap_token="PLACEHOLDER-TOKEN",
        timing=timing,
        secrets={n: f"PLACEHOLDER-{n}" for n in app.secret_names()} if secrets is None else secrets,
    )


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


def groups_of(job_text: str) -> tuple[str, dict[str, Any]]:
    [job] = parse(job_text)["job"]
    [(name, body)] = job.items()
    return name, blocks(body["group"])


# --- what the spec implies, written from the spec's side ---------------------------------------


def expected_group(app: AppSpec, name: str, timing: Timing = DEFAULT_TIMING) -> dict[str, Any]:
    svc = app.services[name]
    group: dict[str, Any] = {"count": svc.replicas}
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
    reachable = [n for n, s in app.sorted_services() if n != name and s.ports]
    if reachable:
        config["volumes"] = ["local/hosts:/etc/hosts:ro"]
    task: dict[str, Any] = {"driver": "docker", "kill_timeout": "30s", "config": [config]}
    if svc.env:
        task["env"] = [dict(svc.env)]
    templates = []
    if svc.secret_env:
        path = f"nomad/jobs/{app.name}/{name}/{name}"
        data = f'{{{{ with nomadVar "{path}" }}}}\n'
        data += "".join(f"{v}={{{{ .{v} | toJSON }}}}\n" for v in sorted(svc.secret_env))
        templates.append(
            {
                "data": data + "{{ end }}\n",
                "destination": "secrets/env",
                "env": True,
                "change_mode": "restart",
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
    "${HOME}",
    '${file("/etc/shadow")}',
    "%{ if true }x%{ endif }",
    "$${already}",
    "$$${triple}",
    "%%{double}",
    "back\\slash\\",
    "\\${escaped}",
    "line one\nline two",
    "ends with newline\n",
    "tab\there\r",
    '{{ env "NOMAD_TOKEN" }}',
    '" }\n  evil = "1',
    "unicode é ✓ \u2028 \x85 \x7f",
    "",
    "#!/bin/sh",
    "<<EOF\nheredoc\nEOF",
]


def nasty_data() -> dict[str, Any]:
    data = copy.deepcopy(EXAMPLE)
    web = data["services"]["web"]
    web["env"] = {**web["env"], **{f"NASTY_{i}": v for i, v in enumerate(NASTY)}}
    web["command"] = list(NASTY)
    web["health"]["path"] = "/h'\"$(id)`id`${HOME}%{x}%n;&|<>*?~!#"
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
            },
        },
    },
}


@pytest.mark.parametrize("case", sorted(EXAMPLES))
def test_job_is_exactly_what_the_spec_implies(case: str):
    """Walks the spec: every service's image, command, ports, env, secret env names, health
    check, mounts, dependencies, replicas, cpu and memory, and nothing else, reach its group."""
    app = spec(EXAMPLES[case])
    name, groups = groups_of(render_job(app, Timing()))
    assert name == app.name
    assert list(groups) == sorted(app.services)
    for svc in app.services:
        assert groups[svc] == expected_group(app, svc), svc


def test_timing_reaches_every_group():
    app = spec()
    timing = Timing(heartbeat_grace=20, min_heartbeat_ttl=15, lost_after=300, reschedule_delay=5)
    _, groups = groups_of(render_job(app, timing))
    for svc in app.services:
        assert groups[svc] == expected_group(app, svc, timing)
    agent = parse(render_node_files(node(timing=timing))[AGENT_CONFIG])
    [server] = agent["server"]
    assert server["heartbeat_grace"] == "20s" and server["min_heartbeat_ttl"] == "15s"


def test_job_level_settings():
    [job] = parse(render_job(spec(), Timing()))["job"]
    body = job["shop"]
    assert body["type"] == "service" and body["datacenters"] == ["dc1"]
    [update] = body["update"]
    assert update["auto_revert"] is True and update["health_check"] == "checks"


def test_hostile_values_change_no_structure():
    """Quotes, ${...}, %{...}, newlines: the clean and the hostile job differ in values only."""

    def shape(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: shape(v) for k, v in value.items() if not k.startswith("NASTY_")}
        if isinstance(value, list):
            return [shape(v) for v in value] if value and isinstance(value[0], dict) else "list"
        return type(value).__name__

    clean = parse(render_job(spec(), Timing()))
    evil_app = spec(nasty_data())
    evil_text = render_job(evil_app, Timing())
    evil = parse(evil_text)
    assert shape(clean) == shape(evil)
    web = blocks(blocks(evil["job"][0]["shop"]["group"])["web"]["task"])["web"]
    assert web["env"][0] == dict(evil_app.services["web"].env)
    assert [web["config"][0]["command"], *web["config"][0]["args"]] == NASTY
    # no ${ or %{ from the spec reaches the text: the only ones are the template's own
    assert re.findall(r"[$%]\{[^}]*\}?", evil_text) == ["${meta.blueprints_data}"]
    assert "evil" not in evil["job"][0]["shop"]


def test_secret_values_are_never_in_a_job_file():
    app = spec()
    secrets = {n: f"s3cr3t-{n}-{i}" for i, n in enumerate(app.secret_names())}
    files = render_node_files(node(app, secrets=secrets))
    holders = {p for p, t in files.items() for v in secrets.values() if v in t}
    assert holders == {
        f"/etc/blueprints/nomad/variables/{s}.json" for s in ("postgres", "web", "worker")
    }
    for path in holders:
        assert file_permissions(path) == "0600"
        items = json.loads(files[path])["Items"]
        service = Path(path).stem
        assert items == {v: secrets[v] for v in app.services[service].secret_env}
    # the job reads each service's own variable only
    for svc in ("web", "worker", "postgres"):
        assert f'nomadVar \\"nomad/jobs/shop/{svc}/{svc}\\"' in files[APP_JOB_FILE]


def test_key_material_is_root_only():
    files = render_node_files(node())
    for path in (GOSSIP_CONFIG, KEY_FILE, TOKEN_FILE):
        assert file_permissions(path) == "0600", path
    for path in (CA_FILE, CERT_FILE, AGENT_CONFIG, APP_JOB_FILE, INGRESS_JOB_FILE):
        assert file_permissions(path) == "0644", path
    assert parse(files[GOSSIP_CONFIG])["server"] == [{"encrypt": "PLACEHOLDER-GOSSIP"}]
    assert files[TOKEN_FILE] == "PLACEHOLDER-TOKEN\n"
    for path, text in files.items():
        if path not in (GOSSIP_CONFIG,):
            assert "PLACEHOLDER-GOSSIP" not in text, path
        if path != TOKEN_FILE:
            assert "PLACEHOLDER-TOKEN" not in text, path


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
    [docker] = agent["plugin"]
    assert docker["docker"]["config"][0]["volumes"] == [{"enabled": False}]
    if index == 0:
        assert client["meta"] == [{"blueprints_data": "true"}]
        assert blocks(client["host_volume"]) == {
            "pgdata": {"path": "/srv/data/pgdata", "read_only": False},
            "blueprints_traefik": {"path": "/srv/data/traefik", "read_only": False},
        }
    else:
        assert "meta" not in client and "host_volume" not in client


def test_ingress_job():
    text = render_node_files(node())[INGRESS_JOB_FILE]
    [job] = parse(text)["job"]
    [(name, body)] = job.items()
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
    assert task["template"][0]["data"] == node().ca_pem


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


def test_only_the_data_node_bootstraps_and_holds_the_volume():
    first, second = render_node_files(node(index=0)), render_node_files(node(index=1))
    data_only = set(first) - set(second)
    assert data_only == {
        TOKEN_FILE,
        APP_JOB_FILE,
        INGRESS_JOB_FILE,
        "/etc/blueprints/nomad/variables/postgres.json",
        "/etc/blueprints/nomad/variables/web.json",
        "/etc/blueprints/nomad/variables/worker.json",
        UNITS + "srv-data.mount",
        UNITS + "dev-disk-by\\x2did-scsi\\x2d0HC_Volume_12345678.device.d/blueprints-timeout.conf",
        UNITS + "blueprints-format-data.service",
        UNITS + "blueprints-nomad-volumes.service",
        UNITS + "blueprints-nomad-bootstrap.service",
        SCRIPTS + "format-data",
        SCRIPTS + "nomad-volumes",
        SCRIPTS + "nomad-bootstrap",
    }
    assert set(second) - set(first) == set()


@pytest.mark.parametrize("index", [0, 1])
def test_cloud_init(index: int, tmp_path: Path):
    n = node(index=index)
    text = render_cloud_init(n)
    validators.cloud_init_schema(text, tmp_path)
    data = yaml.safe_load(text)
    assert {"docker.io", "curl", "gnupg"} <= set(data["packages"])
    assert data["ssh_pwauth"] is False and data["disable_root"] is True
    files = render_node_files(n)
    written = {f["path"]: f for f in data["write_files"]}
    assert {p: f["content"] for p, f in written.items()} == files
    assert all(f["permissions"] == file_permissions(p) for p, f in written.items())
    runcmd = data["runcmd"]
    install = runcmd.index(SCRIPTS + "install-nomad")
    assert install < runcmd.index("systemctl daemon-reload")
    start = runcmd[-1]
    assert start == (
        "systemctl start --no-block "
        + ("blueprints-nomad-bootstrap.service" if index == 0 else "nomad.service")
    )


def test_install_script_pins_version_and_key(tmp_path: Path):
    text = render_node_files(node())[SCRIPTS + "install-nomad"]
    assert "version=1.10.5-1\n" in text
    assert f"fingerprint={HASHICORP_FINGERPRINT}\n" in text
    assert "signed-by=$keyring" in text and "apt-mark hold nomad" in text


def _shellcheck_all(files: Mapping[str, str], tmp_path: Path) -> None:
    found = {p: t for p, t in files.items() if p.startswith(SCRIPTS)}
    assert found
    for path, text in found.items():
        target = tmp_path / Path(path).name
        target.write_text(text)
        validators.shellcheck(target, "bash")


def test_every_script_passes_shellcheck(tmp_path: Path):
    _shellcheck_all(render_node_files(node()), tmp_path)


def test_hostile_scripts_pass_shellcheck(tmp_path: Path):
    app = spec(nasty_data())
    secrets = {
        n: NASTY[i % len(NASTY)].replace("\n", " ") for i, n in enumerate(app.secret_names())
    }
    _shellcheck_all(render_node_files(node(app, secrets=secrets)), tmp_path)


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
    for unit in ("nomad.service", "blueprints-nomad-volumes.service"):
        validators.systemctl_enable(root, unit)


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
    assert render_cloud_init(node(spec(data))) == render_cloud_init(node())


GOLDEN_NODES = {"node-1": 0, "node-2": 1}


@pytest.mark.parametrize("name", sorted(GOLDEN_NODES))
def test_golden_files(name: str, update_golden: bool):
    n = node(index=GOLDEN_NODES[name])
    rendered = {p.lstrip("/"): t for p, t in render_node_files(n).items()}
    rendered["cloud-init.yaml"] = render_cloud_init(n)
    check_golden(GOLDEN / name, rendered, update_golden)


def test_golden_sets_are_exactly_the_nodes(update_golden: bool):
    stale = (
        {p for p in GOLDEN.iterdir() if p.name not in GOLDEN_NODES} if GOLDEN.is_dir() else set()
    )
    check_no_stale_sets(stale, update_golden)
