"""The single-VM blueprint's node: cloud-init user data and every file it writes.

Each node (primary and cold spare) gets the same files: containers as systemd units, Caddy in
front, the data volume mounted at /srv/data when it is attached. Which node is *active* never
shows up here, so promoting the spare changes no user data; only the park flag (power off after
the first boot) sets the spare's user data apart.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass

from blueprints.render.common import (
    docker_env_file,
    dump_json,
    dump_yaml,
    render_template,
    static_file,
    systemd_escape_path,
)
from blueprints.render.context import NodeContext
from blueprints.spec import AppSpec, Service

SCRIPTS = "/usr/local/lib/blueprints"
UNITS = "/etc/systemd/system"
SECRETS = "/etc/blueprints/secrets"
CADDY_CONFIG = "/etc/blueprints/caddy.json"
# Pinned so that a rebuilt VM runs the same proxy as the one it replaces.
CADDY_IMAGE = "caddy:2.8.4"
# A docker container name, not a DNS label (underscore), so no service name can collide with it.
CADDY_CONTAINER = "blueprints_caddy"
# Reserved directory under /srv/data for Caddy's TLS state.
CADDY_DIR = "caddy"
DATA_LABEL = "blueprints-data"
# How long a node waits at boot for the data volume to be attached.
DEVICE_WAIT_SECONDS = 180
STOP_TIMEOUT_SECONDS = 30
DEPLOY_USER = "deploy"

# What the health script needs to know about a replica's container, in one docker call. A
# container sits on exactly one network (the app's), so the range yields one address.
_INSPECT_FORMAT = (
    "{{.State.Running}} {{.State.StartedAt}} "
    "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"
)
_DEVICE = re.compile(r"^/[A-Za-z0-9._:/-]+$")


@dataclass(frozen=True)
class RenderedFile:
    """One file cloud-init writes on the node."""

    content: str
    permissions: str  # octal, as cloud-init's write_files wants it


def render_node_files(ctx: NodeContext) -> dict[str, str]:
    """Absolute path on the VM -> text, for every file the node's cloud-init writes."""
    return {path: f.content for path, f in _node_files(ctx).items()}


def render_cloud_init(ctx: NodeContext) -> str:
    """The node's user data: a #cloud-config document embedding every file it needs."""
    files = _node_files(ctx)
    # Fixed commands only (no spec values), so plain strings run by sh read best.
    runcmd = [
        # The drop-in in sshd_config.d only counts once sshd re-reads its config.
        "systemctl try-reload-or-restart ssh.service",
        # The docker group only exists once docker.io is installed, after cloud-init created the
        # user; naming it in `groups` would make cloud-init create it first as an ordinary group.
        f"usermod --append --groups docker {DEPLOY_USER}",
    ]
    if ctx.floating_ip is not None:
        runcmd.append("netplan apply")
    runcmd += [
        "systemctl daemon-reload",
        "systemctl enable app.target",
        # --no-block: starting waits for the data volume, which cloud-init must not wait for.
        "systemctl start --no-block app.target",
    ]
    deploy_user: dict[str, object] = {
        "name": DEPLOY_USER,
        "shell": "/bin/bash",
        "lock_passwd": True,
        "sudo": "ALL=(ALL) NOPASSWD:ALL",
    }
    if ctx.app.admin.ssh_keys:
        # cloud-init's schema wants at least one key when the list is given at all.
        deploy_user["ssh_authorized_keys"] = list(ctx.app.admin.ssh_keys)
    config: dict[str, object] = {
        "package_update": True,
        "packages": ["curl", "docker.io", "unattended-upgrades"],
        "ssh_pwauth": False,
        "disable_root": True,
        "users": [deploy_user],
        "write_files": [
            {
                "path": path,
                "content": f.content,
                "owner": "root:root",
                "permissions": f.permissions,
            }
            for path, f in sorted(files.items())
        ],
        "runcmd": runcmd,
    }
    if ctx.park_after_first_boot:
        config["power_state"] = {
            "mode": "poweroff",
            "condition": True,
            "message": "blueprints: cold spare set up; powering off until it is promoted",
        }
    return "#cloud-config\n" + dump_yaml(config)


def file_permissions(path: str) -> str:
    """The mode a rendered file gets on the node (and should get when written to disk)."""
    if path.startswith(SECRETS + "/") or path.startswith("/etc/netplan/"):
        # Secrets are for root only; netplan refuses to be quiet about readable configs.
        return "0600"
    if path.startswith(SCRIPTS + "/"):
        return "0755"
    return "0644"


def _node_files(ctx: NodeContext) -> dict[str, RenderedFile]:
    app = ctx.app
    _check_app(app)
    texts: dict[str, str] = {
        "/etc/ssh/sshd_config.d/10-blueprints.conf": static_file("sshd-hardening.conf"),
        "/etc/apt/apt.conf.d/52blueprints-auto-upgrades": static_file("auto-upgrades.conf"),
        # The default json-file log driver never rotates; a chatty container would fill the disk.
        "/etc/docker/daemon.json": dump_json(
            {"log-driver": "json-file", "log-opts": {"max-file": "3", "max-size": "10m"}}
        ),
    }
    texts.update(_data_volume_files(ctx))
    texts.update(_network_files(app))
    texts.update(_secret_files(app, ctx.secrets))
    for name, svc in app.sorted_services():
        texts.update(_service_files(app, name, svc))
    caddy = _caddy_config(app)
    if caddy is not None:
        texts[CADDY_CONFIG] = dump_json(caddy)
        texts[f"{SCRIPTS}/caddy"] = _t(
            "caddy.sh.j2",
            container=CADDY_CONTAINER,
            image=CADDY_IMAGE,
            network=_network(app),
            config_path=CADDY_CONFIG,
        )
        texts[f"{UNITS}/blueprints-caddy.service"] = _t(
            "caddy.service.j2", script=f"{SCRIPTS}/caddy", config_path=CADDY_CONFIG
        )
    texts[f"{UNITS}/app.target"] = _t("app.target.j2", units=_app_units(app, caddy is not None))
    if ctx.floating_ip is not None:
        texts["/etc/netplan/60-floating-ip.yaml"] = _floating_ip_netplan(ctx.floating_ip)
    return {
        path: RenderedFile(content=texts[path], permissions=file_permissions(path))
        for path in sorted(texts)
    }


def _t(template: str, **values: object) -> str:
    return render_template(f"single-vm/{template}", **values)


def _check_app(app: AppSpec) -> None:
    """Rules of this blueprint on top of the spec's own."""
    if CADDY_DIR in app.volumes:
        raise ValueError(
            f"volume name {CADDY_DIR!r} is reserved by the single-vm blueprint for the reverse "
            "proxy's TLS state (/srv/data/caddy); rename the volume"
        )
    for name, svc in app.sorted_services():
        if svc.public_tcp_ports and svc.replicas > 1:
            raise ValueError(
                f"service {name} exposes a tcp port and has replicas: {svc.replicas}; "
                "the single-vm blueprint publishes a host port once; set replicas: 1"
            )


def _network(app: AppSpec) -> str:
    # Suffixed so that no app name can pick one of docker's own networks (host, bridge, none).
    return f"{app.name}-net"


def _instances(name: str, svc: Service) -> list[str]:
    return [f"app-{name}@{n}.service" for n in range(1, svc.replicas + 1)]


def _app_units(app: AppSpec, caddy: bool) -> list[str]:
    units: list[str] = []
    for name, svc in app.sorted_services():
        units += _instances(name, svc)
        if svc.health is not None:
            units.append(f"app-{name}-health.timer")
    if caddy:
        units.append("blueprints-caddy.service")
    return sorted(units)


def _data_volume_files(ctx: NodeContext) -> dict[str, str]:
    device = ctx.data_device
    if not _DEVICE.match(device) or "/../" in device + "/" or "//" in device:
        raise ValueError(
            f"data_device {device!r} is not a plain device path like "
            "/dev/disk/by-id/scsi-0HC_Volume_12345678"
        )
    escaped = systemd_escape_path(device)
    volumes = sorted(ctx.app.volumes)
    caddy = any(svc.public_http_ports for svc in ctx.app.services.values())
    return {
        f"{UNITS}/srv-data.mount": _t("srv-data.mount.j2", device=device),
        f"{UNITS}/{escaped}.device.d/blueprints-timeout.conf": _t(
            "device-timeout.conf.j2", device_wait=DEVICE_WAIT_SECONDS
        ),
        f"{UNITS}/blueprints-format-data.service": _t(
            "format-data.service.j2",
            script=f"{SCRIPTS}/format-data",
            device_wait=DEVICE_WAIT_SECONDS,
        ),
        f"{SCRIPTS}/format-data": _t(
            "format-data.sh.j2", device=device, device_wait=DEVICE_WAIT_SECONDS, label=DATA_LABEL
        ),
        f"{UNITS}/blueprints-data.service": _t("data.service.j2", script=f"{SCRIPTS}/prepare-data"),
        f"{SCRIPTS}/prepare-data": _t("prepare-data.sh.j2", volumes=volumes, caddy=caddy),
    }


def _network_files(app: AppSpec) -> dict[str, str]:
    return {
        f"{UNITS}/blueprints-network.service": _t(
            "network.service.j2", script=f"{SCRIPTS}/create-network"
        ),
        f"{SCRIPTS}/create-network": _t("create-network.sh.j2", network=_network(app)),
    }


def _secret_files(app: AppSpec, secrets: Mapping[str, str]) -> dict[str, str]:
    out = {}
    for name, svc in app.sorted_services():
        if not svc.secret_env:
            continue
        values = {}
        for var in svc.secret_env:
            if var not in secrets:
                raise ValueError(
                    f"secret {var} (secret_env of service {name}) has no value; set it with "
                    f"`pulumi config set --secret --path 'secrets.{var}'`"
                )
            values[var] = secrets[var]
        out[f"{SECRETS}/{name}.env"] = docker_env_file(values, what="secret")
    return out


def _service_files(app: AppSpec, name: str, svc: Service) -> dict[str, str]:
    script = f"{SCRIPTS}/run-{name}"
    health_script = f"{SCRIPTS}/health-{name}" if svc.health else None
    deps = sorted(unit for dep in svc.depends_on for unit in _instances(dep, app.services[dep]))
    # A process can receive any text except NUL, so name the field that has one.
    checked = {f"env {var}": [value] for var, value in svc.env.items()}
    checked["command"] = list(svc.command or [])
    checked["health.command"] = list(svc.health.command or []) if svc.health else []
    for field, values in checked.items():
        if any("\0" in value for value in values):
            raise ValueError(
                f"service {name}: {field} contains a NUL character, which no process can receive"
            )
    files = {
        f"{UNITS}/app-{name}@.service": _t(
            "service@.service.j2",
            name=name,
            instances=_instances(name, svc),
            deps=deps,
            script=script,
            health_script=health_script,
            stop_timeout=STOP_TIMEOUT_SECONDS,
        ),
        script: _t(
            "run-service.sh.j2",
            name=name,
            image=svc.image,
            network=_network(app),
            cpus=f"{svc.cpu:g}",
            memory=f"{svc.memory}m",
            env_args=[f"{var}={value}" for var, value in sorted(svc.env.items())],
            env_file=f"{SECRETS}/{name}.env" if svc.secret_env else None,
            volume_args=[
                f"/srv/data/{m.volume}:{m.path}" + (":ro" if m.read_only else "")
                for m in svc.volumes
            ],
            publish_args=[f"{p.published}:{p.port}" for p in svc.public_tcp_ports],
            command=list(svc.command or []),
            stop_timeout=STOP_TIMEOUT_SECONDS,
        ),
    }
    health = svc.health
    if health is not None and health_script is not None:
        port = health.port or (svc.ports[0].port if svc.ports else None)
        files[health_script] = _t(
            "health.sh.j2",
            name=name,
            kind=health.type,
            replicas=svc.replicas,
            interval=health.interval,
            timeout=health.timeout,
            retries=health.retries,
            start_period=health.start_period,
            port=port,
            path=health.path,
            command=list(health.command or []),
            inspect_format=_INSPECT_FORMAT,
        )
        files[f"{UNITS}/app-{name}-health.service"] = _t(
            "health.service.j2",
            name=name,
            health_script=health_script,
            # Probes run one replica after another, each bounded by the probe timeout.
            check_timeout=svc.replicas * (health.timeout + 5) + 30,
        )
        files[f"{UNITS}/app-{name}-health.timer"] = _t(
            "health.timer.j2", name=name, interval=health.interval
        )
    return files


def _caddy_config(app: AppSpec) -> dict[str, object] | None:
    """Caddy's native JSON config, or None when no port is exposed over http."""
    routes = []
    for name, svc in app.sorted_services():
        for port in svc.public_http_ports:
            host = port.host or app.domain
            proxy: dict[str, object] = {
                "handler": "reverse_proxy",
                "upstreams": [
                    {"dial": f"{name}-{n}:{port.port}"} for n in range(1, svc.replicas + 1)
                ],
                # While one replica restarts, retry the request on another rather than fail it.
                "load_balancing": {
                    "selection_policy": {"policy": "round_robin"},
                    "try_duration": "5s",
                },
            }
            if svc.health is not None and svc.health.type == "http":
                active: dict[str, object] = {
                    "uri": svc.health.path,
                    "interval": f"{svc.health.interval}s",
                    "timeout": f"{svc.health.timeout}s",
                }
                health_port = svc.health.port or svc.ports[0].port
                if health_port != port.port:
                    active["port"] = health_port
                # Caddy counts only 2xx as healthy here (the host-side check also accepts 3xx).
                proxy["health_checks"] = {"active": active}
            match: dict[str, object] = {"host": [host]}
            if port.path != "/":
                prefix = port.path.rstrip("/")
                match["path"] = [prefix, prefix + "/*"]
            routes.append(
                (
                    (host, -len(port.path), port.path),
                    {
                        "match": [match],
                        "handle": [proxy],
                        "terminal": True,
                    },
                )
            )
    if not routes:
        return None
    return {
        "apps": {
            "http": {
                "servers": {
                    "app": {
                        "listen": [":443"],
                        # Only TCP 80/443 are published and open, so do not advertise HTTP/3.
                        "protocols": ["h1", "h2"],
                        # Most specific first: per host, longer path prefixes before shorter.
                        "routes": [route for _, route in sorted(routes, key=lambda r: r[0])],
                    }
                }
            },
            "tls": {
                "automation": {
                    "policies": [{"issuers": [{"module": "acme", "email": app.acme_email}]}]
                }
            },
        },
        # Inside the container /data is /srv/data/caddy on the data volume.
        "storage": {"module": "file_system", "root": "/data/caddy"},
    }


def _floating_ip_netplan(floating_ip: str) -> str:
    try:
        ip = ipaddress.ip_address(floating_ip)
    except ValueError:
        raise ValueError(f"floating_ip {floating_ip!r} is not an IP address") from None
    # A Hetzner floating IPv4 is a single address; a floating IPv6 is a /64 routed to the server.
    prefix = 32 if ip.version == 4 else 64
    return dump_yaml(
        {"network": {"version": 2, "ethernets": {"eth0": {"addresses": [f"{ip}/{prefix}"]}}}}
    )
