"""The nomad blueprint's nodes: Nomad agent configuration, the app's job, cloud-init.

Three nodes, each a Nomad server and client. Every node gets the agent configuration (its own
address, TLS certificate and key, the shared gossip key), Nomad from HashiCorp's apt repository
at a pinned version and Docker as the task driver. The first node (the data node) also holds the
cloud data volume, exposed to Nomad as host volumes, and bootstraps the cluster: ACLs with the
token Pulumi generated, the app's secrets into Nomad Variables, then the ingress and app jobs.

Every spec value reaching an HCL file passes the `hcl` filter (a JSON string literal with `${`
and `%{` doubled), every one reaching a script the `shell` filter; JSON comes from a serializer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from blueprints.render.common import (
    dump_json,
    render_template,
    systemd_escape_path,
)
from blueprints.render.single_vm import (
    DATA_LABEL,
    DEVICE_WAIT_SECONDS,
    METADATA_GUARD_UNIT,
    _checked_device,
    _metadata_guard_files,
)
from blueprints.render.vm import DEPLOY_USER, cloud_config, host_files, secret_values
from blueprints.spec import AppSpec, Service, format_path

Problem = tuple[tuple[str | int, ...], str]

NODE_COUNT = 3
NODE_NAMES = tuple(f"node-{i + 1}" for i in range(NODE_COUNT))
# The node the data volume is attached to: its host volumes, the stateful groups and the ingress.
DATA_NODE = 0
DATACENTER = "dc1"
REGION = "global"
# Nomad's HTTP API, RPC and Serf (gossip) ports.
NOMAD_HTTP, NOMAD_RPC, NOMAD_SERF = 4646, 4647, 4648
# Ports the host already uses: SSH, the ingress and Nomad itself.
RESERVED_PORTS = {22: "SSH", 80: "the ingress", 443: "the ingress"} | {
    p: "Nomad" for p in (NOMAD_HTTP, NOMAD_RPC, NOMAD_SERF)
}
# Nomad schedules CPU in MHz. The spec's cores are converted at 2000 MHz per core, a floor for the
# default server types (Hetzner cx23, AWS t3.small both run at 2.0 GHz or more), so what the spec
# reserves fits on the node. It is a reservation for placement and a relative weight under
# contention (docker CPU shares), not a hard cap.
MHZ_PER_CORE = 2000
NOMAD_VERSION_SUFFIX = "-1"  # HashiCorp's deb revision
HASHICORP_KEY_URL = "https://apt.releases.hashicorp.com/gpg"
# HashiCorp's archive signing key (https://www.hashicorp.com/trust/security); the key fetched at
# boot is used only if its primary key has exactly this fingerprint.
HASHICORP_FINGERPRINT = "798AEC654E5C15428C8E42EEAA16FCBCA621E701"
HASHICORP_APT = "https://apt.releases.hashicorp.com"
TRAEFIK_IMAGE = "traefik:v3.5.3"
WAIT_IMAGE = "busybox:1.37.0"
# The ingress job; an underscore cannot appear in an app name, so no app job can collide.
INGRESS_JOB = "blueprints_ingress"
# Host volume of the ingress's ACME account and certificates (on the data volume).
INGRESS_VOLUME = "blueprints_traefik"
INGRESS_DIR = "traefik"
DATA_META = "blueprints_data"

SCRIPTS = "/usr/local/lib/blueprints"
UNITS = "/etc/systemd/system"
NOMAD_DIR = "/etc/nomad.d"
TLS_DIR = f"{NOMAD_DIR}/tls"
AGENT_CONFIG = f"{NOMAD_DIR}/blueprints.hcl"
GOSSIP_CONFIG = f"{NOMAD_DIR}/gossip.hcl"
CA_FILE = f"{TLS_DIR}/ca.pem"
CERT_FILE = f"{TLS_DIR}/node.pem"
KEY_FILE = f"{TLS_DIR}/node-key.pem"
BOOTSTRAP_DIR = "/etc/blueprints/nomad"
TOKEN_FILE = f"{BOOTSTRAP_DIR}/bootstrap-token"
VARIABLES_DIR = f"{BOOTSTRAP_DIR}/variables"
JOBS_DIR = f"{BOOTSTRAP_DIR}/jobs"
APP_JOB_FILE = f"{JOBS_DIR}/app.nomad.hcl"
INGRESS_JOB_FILE = f"{JOBS_DIR}/ingress.nomad.hcl"
KILL_TIMEOUT_SECONDS = 30
# Nomad's own defaults for service jobs, written out so the job says what it does.
RESTART = {"attempts": 2, "interval": "30m", "delay": "15s", "mode": "fail"}
RESCHEDULE_MAX_DELAY = "1h"
# Files only root may read: key material, the gossip key, the token, the secret values.
SECRET_PATHS = (GOSSIP_CONFIG, KEY_FILE, TOKEN_FILE, VARIABLES_DIR + "/")


@dataclass(frozen=True)
class Timing:
    """Failure timing; see StackSettings for what each means and its default."""

    heartbeat_grace: int = 10
    min_heartbeat_ttl: int = 10
    lost_after: int = 0
    reschedule_delay: int = 30

    @classmethod
    def from_settings(cls, settings: Any) -> Timing:
        return cls(
            heartbeat_grace=settings.heartbeat_grace,
            min_heartbeat_ttl=settings.min_heartbeat_ttl,
            lost_after=settings.lost_after,
            reschedule_delay=settings.reschedule_delay,
        )


@dataclass(frozen=True)
class NomadNode:
    """Everything one node's files depend on. Secrets are real inside Pulumi (the user data is
    then a secret) and placeholders when rendered to disk."""

    app: AppSpec
    index: int
    node_ips: tuple[str, ...]
    subnet_cidr: str
    data_device: str
    ca_pem: str
    cert_pem: str
    key_pem: str
    gossip_key: str
    bootstrap_token: str
    nomad_version: str = "1.10.5"
    timing: Timing = field(default_factory=Timing)
    secrets: Mapping[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return NODE_NAMES[self.index]

    @property
    def ip(self) -> str:
        return self.node_ips[self.index]

    @property
    def data_node(self) -> bool:
        return self.index == DATA_NODE


# --- spec rules of this blueprint ------------------------------------------------------------


NUL_MESSAGE = "contains a NUL character, which no process can receive"


def check_nomad(app: AppSpec) -> list[Problem]:
    """Every rule of the nomad blueprint on top of the spec's own, one (path, message) each."""
    problems: list[Problem] = []
    if INGRESS_DIR in app.volumes:
        problems.append(
            (
                ("volumes", INGRESS_DIR),
                "is reserved by the nomad blueprint for the ingress's TLS state "
                f"(/srv/data/{INGRESS_DIR}); rename the volume",
            )
        )
    # Every port is a static host port (the spec's env reaches services as name:port), so one
    # port can be used by at most one instance per node.
    users: dict[int, list[tuple[str, int]]] = {}
    for name, svc in app.sorted_services():
        base: tuple[str | int, ...] = ("services", name)
        for i, port in enumerate(svc.ports):
            host = _host_port(port)
            if host in RESERVED_PORTS:
                where = "public_port" if port.expose == "tcp" else "port"
                problems.append(
                    (
                        (*base, "ports", i, where),
                        f"port {host} is used by {RESERVED_PORTS[host]} on every nomad node; "
                        "choose another",
                    )
                )
            users.setdefault(host, []).append((name, svc.replicas))
        names = [_service_name(app, name)] + [
            _service_name(app, name, p.port) for p in svc.ports[1:] if p.expose == "http"
        ]
        for label in names:
            if len(label) > 63:
                problems.append(
                    (
                        base,
                        f"Nomad service name {label!r} is longer than 63 characters; "
                        "shorten the app or service name",
                    )
                )
        health = svc.health
        if (
            health is not None
            and health.type in ("http", "tcp")
            and health.port is not None
            and health.port not in [p.port for p in svc.ports]
        ):
            problems.append(
                (
                    (*base, "health", "port"),
                    f"port {health.port} is not among the service's ports; Nomad checks a "
                    "declared port",
                )
            )
        for var, value in sorted(svc.env.items()):
            if "\0" in value:
                problems.append(((*base, "env", var), NUL_MESSAGE))
        for i, arg in enumerate(svc.command or []):
            if "\0" in arg:
                problems.append(((*base, "command", i), NUL_MESSAGE))
        if health is not None and "\0" in health.path:
            problems.append(((*base, "health", "path"), NUL_MESSAGE))
    for host, holders in sorted(users.items()):
        total = sum(replicas for _, replicas in holders)
        if total > NODE_COUNT:
            name = holders[-1][0]
            who = ", ".join(f"{n} ({r})" for n, r in holders)
            problems.append(
                (
                    ("services", name, "replicas"),
                    f"port {host} is a static host port on {NODE_COUNT} nodes, so at most "
                    f"{NODE_COUNT} instances can use it (got {total}: {who})",
                )
            )
    return problems


def unenforced_health(app: AppSpec) -> list[str]:
    """Notes on health checks Nomad's own service catalogue cannot run (command checks)."""
    notes = []
    for name, svc in app.sorted_services():
        if svc.health is not None and svc.health.type == "command":
            if svc.ports:
                fallback = f"a tcp check on port {svc.ports[0].port} stands in"
            else:
                fallback = "the service has no port, so it runs without a check"
            notes.append(
                f"services.{name}.health: Nomad's built-in service checks are http and tcp only "
                f"(script checks need Consul), so the command check is not run; {fallback}"
            )
    return notes


# --- the app's job ---------------------------------------------------------------------------


def _host_port(port: Any) -> int:
    return port.published if port.expose == "tcp" else port.port


def _service_name(app: AppSpec, name: str, port: int | None = None) -> str:
    """Name in Nomad's service catalogue: the service's first port (or none) registers as
    <app>-<service>, every further http port as <app>-<service>-<port>."""
    return f"{app.name}-{name}" + (f"-{port}" if port is not None else "")


def _port_label(port: int) -> str:
    return f"p{port}"


def _variable_path(app: AppSpec, name: str) -> str:
    """The Nomad Variable of one service's secrets: readable by that task alone."""
    return f"nomad/jobs/{app.name}/{name}/{name}"


def _router_tags(app: AppSpec, name: str, port: Any) -> list[str]:
    router = f"{name}-{port.port}"
    rule = f"Host(`{port.host or app.domain}`)"
    if port.path != "/":
        rule += f" && PathPrefix(`{port.path.rstrip('/')}`)"
    return [
        "traefik.enable=true",
        f"traefik.http.routers.{router}.rule={rule}",
        f"traefik.http.routers.{router}.entrypoints=websecure",
        f"traefik.http.routers.{router}.tls.certresolver=le",
    ]


def _check(svc: Service) -> dict[str, Any] | None:
    health = svc.health
    if health is None:
        return None
    if health.type == "command":
        if not svc.ports:
            return None
        kind, port = "tcp", svc.ports[0].port
    else:
        kind, port = health.type, health.port or svc.ports[0].port
    check: dict[str, Any] = {
        "type": kind,
        "port": _port_label(port),
        "interval": health.interval,
        "timeout": health.timeout,
        "limit": health.retries,
        "grace": health.start_period,
    }
    if kind == "http":
        check["path"] = health.path
    return check


def _hosts_template(app: AppSpec, name: str) -> str | None:
    """An /etc/hosts from Nomad's service catalogue: every other service with a port, by name,
    so the spec's `postgres:5432` reaches the node the postgres instance runs on."""
    others = [n for n, s in app.sorted_services() if n != name and s.ports]
    if not others:
        return None
    lines = ["127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n"]
    for other in others:
        lines.append(
            f'{{{{ range nomadService "{_service_name(app, other)}" }}}}'
            f"{{{{ .Address }}}} {other}\n{{{{ end }}}}"
        )
    return "".join(lines)


def _dependency_template(app: AppSpec, deps: list[str]) -> str:
    return "".join(
        f'{{{{ range nomadService "{_service_name(app, dep)}" }}}}{dep}\n{{{{ end }}}}'
        for dep in deps
    )


# Waits until each dependency named in the arguments has an instance in the catalogue.
WAIT_SCRIPT = (
    'for dep in "$@"; do '
    'until grep -qx "$dep" /local/dependencies; do echo "waiting for $dep"; sleep 2; done; '
    "done"
)


def _secret_template(app: AppSpec, name: str, svc: Service) -> str:
    # toJSON: Nomad parses the env file with go-envparse, which reads JSON strings exactly.
    lines = [f'{{{{ with nomadVar "{_variable_path(app, name)}" }}}}\n']
    lines += [f"{var}={{{{ .{var} | toJSON }}}}\n" for var in sorted(svc.secret_env)]
    lines.append("{{ end }}\n")
    return "".join(lines)


def job_groups(app: AppSpec) -> list[dict[str, Any]]:
    """The app job's groups as plain data, one per service (what the template prints)."""
    groups = []
    for name, svc in app.sorted_services():
        services = []
        check = _check(svc)
        first_tags = _router_tags(app, name, svc.ports[0]) if svc.ports else []
        if svc.ports and svc.ports[0].expose != "http":
            first_tags = []
        services.append(
            {
                "name": _service_name(app, name),
                "port": _port_label(svc.ports[0].port) if svc.ports else None,
                "tags": first_tags,
                "check": check,
            }
        )
        for port in svc.ports[1:]:
            if port.expose == "http":
                services.append(
                    {
                        "name": _service_name(app, name, port.port),
                        "port": _port_label(port.port),
                        "tags": _router_tags(app, name, port),
                        "check": None,
                    }
                )
        templates = []
        if svc.secret_env:
            templates.append(
                {
                    "data": _secret_template(app, name, svc),
                    "destination": "secrets/env",
                    "env": True,
                }
            )
        hosts = _hosts_template(app, name)
        if hosts is not None:
            templates.append({"data": hosts, "destination": "local/hosts", "env": False})
        deps = sorted(svc.depends_on)
        groups.append(
            {
                "name": name,
                "count": svc.replicas,
                "distinct": bool(svc.ports),
                "data_node": svc.stateful,
                "ports": [
                    {"label": _port_label(p.port), "static": _host_port(p), "to": p.port}
                    for p in svc.ports
                ],
                "volumes": [
                    {"name": m.volume, "source": m.volume, "read_only": m.read_only}
                    for m in svc.volumes
                ],
                "services": services,
                "wait": {"deps": deps, "template": _dependency_template(app, deps)}
                if deps
                else None,
                "image": svc.image,
                "command": list(svc.command or []),
                "port_labels": [_port_label(p.port) for p in svc.ports],
                "hosts": hosts is not None,
                "env": sorted(svc.env.items()),
                "templates": templates,
                "mounts": [
                    {"volume": m.volume, "destination": m.path, "read_only": m.read_only}
                    for m in svc.volumes
                ],
                "cpu": math.ceil(svc.cpu * MHZ_PER_CORE),
                "memory": svc.memory,
            }
        )
    return groups


def render_job(app: AppSpec, timing: Timing) -> str:
    """The app's Nomad job (HCL): one group per service; no secret values in it."""
    problems = check_nomad(app)
    if problems:
        raise ValueError("\n".join(f"{format_path(path)}: {msg}" for path, msg in problems))
    return _t(
        "app.nomad.hcl.j2",
        job=app.name,
        datacenter=DATACENTER,
        groups=job_groups(app),
        timing=timing,
        restart=RESTART,
        max_delay=RESCHEDULE_MAX_DELAY,
        kill_timeout=KILL_TIMEOUT_SECONDS,
        wait_image=WAIT_IMAGE,
        wait_script=WAIT_SCRIPT,
        data_meta=DATA_META,
    )


def render_ingress_job(app: AppSpec, ca_pem: str, timing: Timing) -> str:
    """Traefik as one instance on the data node, its ACME state on the data volume."""
    return _t(
        "ingress.nomad.hcl.j2",
        job=INGRESS_JOB,
        datacenter=DATACENTER,
        image=TRAEFIK_IMAGE,
        acme_email=app.acme_email,
        ca_pem=ca_pem,
        volume=INGRESS_VOLUME,
        data_meta=DATA_META,
        timing=timing,
        restart=RESTART,
        max_delay=RESCHEDULE_MAX_DELAY,
        http_port=NOMAD_HTTP,
    )


# --- the agent ---------------------------------------------------------------------------------


def render_agent_config(node: NomadNode) -> str:
    """Nomad agent configuration (HCL) of one node: server and client, ACLs, TLS."""
    return _t(
        "agent.hcl.j2",
        name=node.name,
        datacenter=DATACENTER,
        region=REGION,
        ip=node.ip,
        node_ips=list(node.node_ips),
        expect=NODE_COUNT,
        subnet=node.subnet_cidr,
        timing=node.timing,
        data_node=node.data_node,
        data_meta=DATA_META,
        host_volumes=_host_volumes(node.app) if node.data_node else [],
        ca_file=CA_FILE,
        cert_file=CERT_FILE,
        key_file=KEY_FILE,
        rpc_port=NOMAD_RPC,
    )


def _host_volumes(app: AppSpec) -> list[dict[str, str]]:
    vols = [{"name": v, "path": f"/srv/data/{v}"} for v in sorted(app.volumes)]
    vols.append({"name": INGRESS_VOLUME, "path": f"/srv/data/{INGRESS_DIR}"})
    return vols


def render_gossip_config(key: str) -> str:
    return _t("gossip.hcl.j2", key=key)


# --- files and cloud-init ----------------------------------------------------------------------


def file_permissions(path: str) -> str:
    if path in SECRET_PATHS or any(path.startswith(p) for p in SECRET_PATHS if p.endswith("/")):
        return "0600"
    if path.startswith(SCRIPTS + "/"):
        return "0755"
    return "0644"


def render_node_files(node: NomadNode) -> dict[str, str]:
    """Absolute path on the VM -> text, for every file the node's cloud-init writes."""
    app = node.app
    problems = check_nomad(app)
    if problems:
        raise ValueError("\n".join(f"{format_path(path)}: {msg}" for path, msg in problems))
    files: dict[str, str] = {
        **host_files(),
        f"{SCRIPTS}/install-nomad": _t(
            "install-nomad.sh.j2",
            version=node.nomad_version + NOMAD_VERSION_SUFFIX,
            key_url=HASHICORP_KEY_URL,
            fingerprint=HASHICORP_FINGERPRINT,
            repository=HASHICORP_APT,
        ),
        AGENT_CONFIG: render_agent_config(node),
        GOSSIP_CONFIG: render_gossip_config(node.gossip_key),
        CA_FILE: _pem(node.ca_pem),
        CERT_FILE: _pem(node.cert_pem),
        KEY_FILE: _pem(node.key_pem),
        f"{UNITS}/nomad.service": _t(
            "nomad.service.j2",
            agent_config=AGENT_CONFIG,
            gossip_config=GOSSIP_CONFIG,
            guard=METADATA_GUARD_UNIT,
            data_node=node.data_node,
        ),
    }
    files.update(_metadata_guard_files())
    if node.data_node:
        files.update(_data_node_files(node))
    return dict(sorted(files.items()))


def _pem(text: str) -> str:
    return text if text.endswith("\n") else text + "\n"


def _data_node_files(node: NomadNode) -> dict[str, str]:
    app = node.app
    device = _checked_device(node.data_device)
    escaped = systemd_escape_path(device)
    files = {
        # The data volume, mounted as in single-vm (same units, same never-reformat script).
        f"{UNITS}/srv-data.mount": render_template("single-vm/srv-data.mount.j2", device=device),
        f"{UNITS}/{escaped}.device.d/blueprints-timeout.conf": render_template(
            "single-vm/device-timeout.conf.j2", device_wait=DEVICE_WAIT_SECONDS
        ),
        f"{UNITS}/blueprints-format-data.service": render_template(
            "single-vm/format-data.service.j2",
            script=f"{SCRIPTS}/format-data",
            device_wait=DEVICE_WAIT_SECONDS,
        ),
        f"{SCRIPTS}/format-data": render_template(
            "single-vm/format-data.sh.j2",
            device=device,
            device_wait=DEVICE_WAIT_SECONDS,
            label=DATA_LABEL,
        ),
        f"{UNITS}/blueprints-nomad-volumes.service": _t(
            "volumes.service.j2", script=f"{SCRIPTS}/nomad-volumes", device_unit=escaped + ".device"
        ),
        f"{SCRIPTS}/nomad-volumes": _t(
            "volumes.sh.j2", volumes=sorted(app.volumes), ingress_dir=INGRESS_DIR
        ),
        f"{UNITS}/blueprints-nomad-bootstrap.service": _t(
            "bootstrap.service.j2", script=f"{SCRIPTS}/nomad-bootstrap"
        ),
        f"{SCRIPTS}/nomad-bootstrap": _t(
            "bootstrap.sh.j2",
            job=app.name,
            ca_file=CA_FILE,
            token_file=TOKEN_FILE,
            variables=[
                (name, _variable_path(app, name), f"{VARIABLES_DIR}/{name}.json")
                for name, svc in app.sorted_services()
                if svc.secret_env
            ],
            jobs=[INGRESS_JOB_FILE, APP_JOB_FILE],
            http_port=NOMAD_HTTP,
        ),
        TOKEN_FILE: node.bootstrap_token + "\n",
        APP_JOB_FILE: render_job(app, node.timing),
        INGRESS_JOB_FILE: render_ingress_job(app, node.ca_pem, node.timing),
    }
    files.update(_variable_files(app, node.secrets))
    return files


def _variable_files(app: AppSpec, secrets: Mapping[str, str]) -> dict[str, str]:
    out = {}
    for name, svc in app.sorted_services():
        if not svc.secret_env:
            continue
        items = secret_values(secrets, svc.secret_env, name)
        # `nomad var put` reads a variable specification; its items are the secret values.
        out[f"{VARIABLES_DIR}/{name}.json"] = dump_json({"Items": items})
    return out


def render_cloud_init(node: NomadNode) -> str:
    """The node's user data: a #cloud-config document embedding every file it needs."""
    files = render_node_files(node)
    units = ["nomad.service"]
    start = "nomad.service"
    if node.data_node:
        units += ["blueprints-nomad-volumes.service", "blueprints-nomad-bootstrap.service"]
        start = "blueprints-nomad-bootstrap.service"
    runcmd = [
        "systemctl try-reload-or-restart ssh.service",
        f"usermod --append --groups docker {DEPLOY_USER}",
        f"{SCRIPTS}/install-nomad",
        "systemctl daemon-reload",
        "systemctl enable " + " ".join(units),
        # --no-block: the cluster forms once all three nodes are up; cloud-init must not wait.
        f"systemctl start --no-block {start}",
    ]
    return cloud_config(
        node.app.admin.ssh_keys,
        files,
        file_permissions,
        [
            "ca-certificates",
            "curl",
            "docker.io",
            "gnupg",
            "iptables",
            "unattended-upgrades",
        ],
        runcmd,
    )


def _t(template: str, **values: object) -> str:
    return render_template(f"nomad/{template}", **values)
