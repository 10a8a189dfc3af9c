"""The compose blueprint's VM: a Docker Compose project rendered from the spec, and its cloud-init.

The compose file comes from a serializer (dump_yaml). Around it: the data volume mounted at
/srv/data (the single-vm units, reused), a wrapper that runs `docker compose` with the secret
environment, a systemd unit that brings the project up at boot once the volume is mounted, a
timer that restarts unhealthy containers (Compose only restarts exited ones) and, with the
stack's backup storage, the backup's timers (blueprints.backup).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from blueprints.backup import node_files as backup_files
from blueprints.backup.storage import Storage
from blueprints.release.bundle import (
    Documents,
    ServiceRelease,
    digest,
    release_document,
    secrets_document,
)
from blueprints.render import single_vm as svm
from blueprints.render.common import (
    docker_env_file,
    dump_json,
    dump_yaml,
    render_template,
)
from blueprints.render.vm import DEPLOY_USER, cloud_config, host_files, secret_values
from blueprints.spec import AppSpec, Service, format_path

Problem = svm.Problem

COMPOSE_DIR = "/etc/blueprints/compose"
COMPOSE_FILE = f"{COMPOSE_DIR}/compose.yaml"
SECRETS_FILE = f"{svm.SECRETS}/app.env"
WRAPPER = "/usr/local/sbin/app-compose"
APP_UNIT = "app-compose.service"
# Not a DNS label (underscore), so no spec service can take the proxy's name.
PROXY_SERVICE = "blueprints_proxy"
# The compose network (`<app>-proxy` in docker) of Caddy and the healthy containers it routes to,
# and the label that marks a container of a routed service with its service's name.
PROXY_NETWORK = "proxy"
PROXY_LABEL = "blueprints.proxy"
# A statically linked busybox (Ubuntu's busybox-static) is bind-mounted into every container
# with an http or tcp health check, so the probe needs no curl, wget or shell in the image.
HOST_BUSYBOX = "/usr/bin/busybox"
PROBE_BUSYBOX = "/.blueprints/busybox"
AUTOHEAL_UNIT = "app-autoheal"
STOP_GRACE_SECONDS = 30
# The autoheal timer's period is the shortest health interval, within these bounds.
AUTOHEAL_MIN_SECONDS = 5
AUTOHEAL_MAX_SECONDS = 30

# The http probe, run by busybox's sh inside the container: one GET with HTTP/1.0 (so the
# server closes the connection after answering), healthy on a 2xx or 3xx status line; redirects
# are not followed. Spec values arrive as positional parameters, never inside this text.
HTTP_PROBE = (
    'bb="$0"; '
    'printf \'GET %s HTTP/1.0\\r\\nHost: %s\\r\\nConnection: close\\r\\n\\r\\n\' "$1" "$2" '
    '| "$bb" nc -w "$4" 127.0.0.1 "$3" | "$bb" head -n 1 '
    "| \"$bb\" grep -q '^HTTP/[0-9.]* [23][0-9][0-9]'"
)


@dataclass(frozen=True)
class ComposeContext:
    """What the renderer needs beyond the spec: cloud-assigned values, resolved by the caller."""

    app: AppSpec
    # Stable by-id path of the data volume's block device (see NodeContext.data_device).
    data_device: str
    # Address the OS must configure itself (a Hetzner floating IP); None where the cloud
    # translates it (an AWS Elastic IP) or there is no floating address.
    floating_ip: str | None = None
    # The stack's deploy key (OpenSSH public key), the one key the bootstrap authorizes.
    deploy_key: str = ""
    # Secret environment values by name, for render_vm_files' view of everything the VM ends up
    # with (placeholders when rendering to disk). Never part of the user data.
    secrets: Mapping[str, str] | None = None
    # The stack's backup storage, for render_vm_files' view of the release (see
    # NodeContext.backup_storage). None: the stack takes no backups.
    storage: Storage | None = None


def check_app(app: AppSpec) -> list[Problem]:
    """The compose blueprint's rules on top of the spec's own: those of the single VM (one host,
    the proxy's reserved directory, no NUL in values a process receives)."""
    problems = svm.check_app(app)
    return [
        (path, msg.replace("single-vm blueprint", "compose blueprint")) for path, msg in problems
    ]


def render_compose_file(app: AppSpec) -> str:
    """The compose file: every service of the spec, plus the reverse proxy."""
    return dump_yaml(compose_document(app))


def compose_document(app: AppSpec) -> dict[str, Any]:
    services: dict[str, Any] = {}
    for name, svc in app.sorted_services():
        services[name] = _escape_interpolation(_service(app, name, svc))
    document: dict[str, Any] = {"name": app.name, "services": services}
    if _has_proxy(app):
        # Caddy alone on its own network: a routed service's container joins it, under the
        # service's name, only once it is healthy (the release agent, and the autoheal timer
        # for containers started otherwise), so the proxy never routes to one still starting.
        document["networks"] = {PROXY_NETWORK: {"name": proxy_network(app)}}
        for name, svc in app.sorted_services():
            if svc.public_http_ports:
                services[name]["labels"] = {PROXY_LABEL: name}
        services[PROXY_SERVICE] = {
            "image": svm.CADDY_IMAGE,
            "command": ["caddy", "run", "--config", "/etc/caddy/caddy.json"],
            "restart": "unless-stopped",
            "networks": [PROXY_NETWORK],
            "ports": ["80:80", "443:443"],
            "volumes": [
                _bind(svm.CADDY_CONFIG, "/etc/caddy/caddy.json", read_only=True),
                _bind(f"/srv/data/{svm.CADDY_DIR}", "/data"),
            ],
            "stop_grace_period": f"{STOP_GRACE_SECONDS}s",
        }
    return document


def proxy_network(app: AppSpec) -> str:
    """The docker network Caddy and the healthy containers it routes to share."""
    return f"{app.name}-proxy"


def _has_proxy(app: AppSpec) -> bool:
    return any(svc.public_http_ports for svc in app.services.values())


def _bind(source: str, target: str, read_only: bool = False) -> dict[str, Any]:
    # create_host_path false: with the volume not mounted the directory is missing and the
    # container fails to start, instead of writing its data onto the root disk.
    return {
        "type": "bind",
        "source": source,
        "target": target,
        "read_only": read_only,
        "bind": {"create_host_path": False},
    }


def _service(app: AppSpec, name: str, svc: Service) -> dict[str, Any]:
    out: dict[str, Any] = {
        "image": svc.image,
        "restart": "unless-stopped",
        "stop_grace_period": f"{STOP_GRACE_SECONDS}s",
        "deploy": {
            "replicas": svc.replicas,
            "resources": {"limits": {"cpus": f"{svc.cpu:g}", "memory": f"{svc.memory}M"}},
        },
    }
    if svc.command:
        out["command"] = list(svc.command)
    environment: dict[str, str | None] = dict(svc.env)
    # A name without a value: Compose passes the variable from its own environment, which the
    # app-compose wrapper fills from the root-only secrets file. No value is in this file.
    environment.update({var: None for var in svc.secret_env})
    if environment:
        out["environment"] = dict(sorted(environment.items()))
    private = [str(p.port) for p in svc.ports if p.expose != "tcp"]
    if private:
        out["expose"] = private
    published = [f"{p.published}:{p.port}" for p in svc.public_tcp_ports]
    if published:
        out["ports"] = published
    volumes = [_bind(f"/srv/data/{m.volume}", m.path, m.read_only) for m in svc.volumes]
    health = _healthcheck(app, svc)
    if health is not None:
        out["healthcheck"] = health
        if svc.health is not None and svc.health.type != "command":
            volumes.append(_bind(HOST_BUSYBOX, PROBE_BUSYBOX, read_only=True))
    if volumes:
        out["volumes"] = volumes
    if svc.depends_on:
        out["depends_on"] = {
            dep: {
                "condition": "service_healthy"
                if app.services[dep].health is not None
                else "service_started"
            }
            for dep in sorted(svc.depends_on)
        }
    return out


def _healthcheck(app: AppSpec, svc: Service) -> dict[str, Any] | None:
    health = svc.health
    if health is None:
        return None
    port = health.port or (svc.ports[0].port if svc.ports else None)
    if health.type == "http":
        test = ["CMD", PROBE_BUSYBOX, "sh", "-c", HTTP_PROBE, PROBE_BUSYBOX, health.path]
        test += [svm.probe_host(app, svc), str(port), str(health.timeout)]
    elif health.type == "tcp":
        # Connects, then runs `busybox true` on the connection: exit 0 once the port accepts.
        test = ["CMD", PROBE_BUSYBOX, "nc", "-w", str(health.timeout), "127.0.0.1", str(port)]
        test += ["-e", PROBE_BUSYBOX, "true"]
    else:
        test = ["CMD", *(health.command or [])]
    return {
        "test": test,
        "interval": f"{health.interval}s",
        "timeout": f"{health.timeout}s",
        "retries": health.retries,
        "start_period": f"{health.start_period}s",
    }


def _escape_interpolation(value: Any) -> Any:
    """Compose substitutes ${VAR} and $VAR in every string of the file; `$$` is a literal `$`."""
    if isinstance(value, str):
        return value.replace("$", "$$")
    if isinstance(value, list):
        return [_escape_interpolation(v) for v in value]
    if isinstance(value, dict):
        return {k: _escape_interpolation(v) for k, v in value.items()}
    return value


def unescape_interpolation(value: Any) -> Any:
    """What Compose makes of a string written by _escape_interpolation (for tests and tools)."""
    if isinstance(value, str):
        return value.replace("$$", "$")
    if isinstance(value, list):
        return [unescape_interpolation(v) for v in value]
    if isinstance(value, dict):
        return {k: unescape_interpolation(v) for k, v in value.items()}
    return value


# --- the VM around the compose file ------------------------------------------------------------
# Bootstrap (user data): the data volume, docker and Compose, the `app-compose` wrapper and the
# unit that runs the project, the autoheal script, the release agent. Release: the compose file,
# Caddy's routes, the admins' keys, the autoheal timer (its period follows the health checks),
# the backup units (their schedule and paused services follow the spec), the secrets.


def render_vm_files(ctx: ComposeContext) -> dict[str, str]:
    """Absolute path on the VM -> text, for every file the VM ends up with: its bootstrap and the
    release (secret files included, from ctx.secrets)."""
    texts = bootstrap_files(ctx)
    texts.update(release_files(ctx.app, ctx.storage))
    texts.update(secret_files(ctx.app, ctx.secrets or {}, ctx.storage))
    return dict(sorted(texts.items()))


def bootstrap_files(ctx: ComposeContext) -> dict[str, str]:
    """Every file of the VM's user data: machine-level only."""
    app = ctx.app
    device = svm._checked_device(ctx.data_device)
    data_ctx = svm.NodeContext(app=app, node="compose", data_device=device, floating_ip=None)
    texts: dict[str, str] = {
        **host_files(),
        **svm.deploy_access_files(),
        WRAPPER: _t(
            "app-compose.sh.j2",
            project=app.name,
            compose_file=COMPOSE_FILE,
            secrets_file=SECRETS_FILE,
        ),
        f"{svm.UNITS}/{APP_UNIT}": _t(
            "app-compose.service.j2", wrapper=WRAPPER, guard=svm.METADATA_GUARD_UNIT
        ),
        f"{svm.SCRIPTS}/autoheal": _t(
            "autoheal.sh.j2",
            project=app.name,
            stop_timeout=STOP_GRACE_SECONDS,
            network=proxy_network(app),
            label=PROXY_LABEL,
            # "ALIAS NETWORK NETWORK ...": the label's value, then the networks it is on.
            admit_format=(
                f'{{{{index .Config.Labels "{PROXY_LABEL}"}}}} '
                "{{range $net, $_ := .NetworkSettings.Networks}}{{$net}} {{end}}"
            ),
        ),
        f"{svm.UNITS}/{AUTOHEAL_UNIT}.service": _t(
            "autoheal.service.j2", script=f"{svm.SCRIPTS}/autoheal"
        ),
    }
    texts.update(svm._data_volume_files(data_ctx))
    texts.update(svm._metadata_guard_files())
    texts.update(svm.release_agent_files(device, requires=[]))
    if ctx.floating_ip is not None:
        texts["/etc/netplan/60-floating-ip.yaml"] = svm._floating_ip_netplan(ctx.floating_ip)
    return dict(sorted(texts.items()))


def release_files(app: AppSpec, storage: Storage | None = None) -> dict[str, str]:
    """Every non-secret file of the app's release; with the stack's backup storage, the
    backup's script, configuration and units too."""
    problems = check_app(app)
    if problems:
        raise ValueError("\n".join(f"{format_path(path)}: {msg}" for path, msg in problems))
    texts: dict[str, str] = {
        **svm.admin_keys_file(app),
        COMPOSE_FILE: render_compose_file(app),
        f"{svm.UNITS}/{AUTOHEAL_UNIT}.timer": _t("autoheal.timer.j2", period=autoheal_period(app)),
    }
    caddy = svm._caddy_config(app, dynamic=True)
    if caddy is not None:
        texts[svm.CADDY_CONFIG] = dump_json(caddy)
    if storage is not None:
        texts.update(
            backup_files.release_files(
                app, storage, BACKUP_RUNTIME, name=storage.host, after=APP_UNIT
            )
        )
    return dict(sorted(texts.items()))


# How a backup reaches the app here: through the project's compose wrapper.
BACKUP_RUNTIME = backup_files.Runtime(
    exec=lambda name: [WRAPPER, "exec", "-T", name],
    pause=lambda names: [WRAPPER, "pause", *names],
    resume=lambda names: [WRAPPER, "unpause", *names],
    stop=["systemctl", "stop", APP_UNIT],
    start=["systemctl", "start", APP_UNIT],
)


def release_units(files: Mapping[str, str]) -> list[str]:
    """The timers a release starts (the autoheal one, and the backup ones if any)."""
    prefix = f"{svm.UNITS}/"
    return sorted(p[len(prefix) :] for p in files if p.startswith(prefix) and p.endswith(".timer"))


def secret_files(
    app: AppSpec, secrets: Mapping[str, str], storage: Storage | None = None
) -> dict[str, str]:
    """The app's secret env file and, with the stack's backup storage, the backup's password
    and storage keys (secrets carries them under node_files' reserved names)."""
    secret_env = _secret_env(app, backup_files.app_secret_values(secrets))
    files = {} if secret_env is None else {SECRETS_FILE: secret_env}
    files.update(backup_files.backup_secret_files(storage, secrets))
    return files


def release_documents(
    app: AppSpec, key: str, secrets: Mapping[str, str], storage: Storage | None = None
) -> Documents:
    """The app's release as it travels to the VM: key is the deploy private key."""
    secret_digest, secret_doc = secrets_document(key, secret_files(app, secrets, storage))
    files = release_files(app, storage)
    document = compose_document(app)
    services = []
    for name, svc in svm.dependency_order(app):
        definition = dict(document["services"][name])
        definition["deploy"] = {k: v for k, v in definition["deploy"].items() if k != "replicas"}
        values = {var: secrets.get(var, "") for var in sorted(svc.secret_env)}
        services.append(
            ServiceRelease(
                name=name,
                image=svc.image,
                replicas=svc.replicas,
                rollout=svm.rollout(svc),
                digest=digest(key, "compose", name, definition, values),
                budget=svm.health_budget(svc),
            )
        )
    release = release_document(
        key,
        rung="compose",
        app=app.name,
        services=services,
        files=files,
        modes={path: file_permissions(path) for path in files},
        volumes=sorted(app.volumes),
        units=release_units(files),
        secrets=secret_digest,
    )
    return Documents(release=release, secrets=secret_doc)


def file_permissions(path: str) -> str:
    if path == WRAPPER:
        return "0755"
    return svm.file_permissions(path)


def render_cloud_init(ctx: ComposeContext) -> str:
    """The VM's user data: a #cloud-config document with its bootstrap (no app in it)."""
    files = bootstrap_files(ctx)
    runcmd = [
        "systemctl try-reload-or-restart ssh.service",
        f"usermod --append --groups docker {DEPLOY_USER}",
    ]
    if ctx.floating_ip is not None:
        runcmd.append("netplan apply")
    runcmd += [
        "systemctl daemon-reload",
        # Links the release unit into multi-user.target.wants/ and into the data device's
        # .wants/, so the app also starts when the volume is attached after boot (AWS attaches
        # it then).
        f"systemctl enable {svm.RELEASE_UNIT}",
        # --no-block: the app waits for the data volume, which cloud-init must not wait for.
        f"systemctl start --no-block {svm.RELEASE_UNIT}",
    ]
    # Ubuntu's own Docker and Compose v2 packages: security updates come with the distro's
    # (unattended-upgrades), and the release pins their major versions.
    return cloud_config(
        [ctx.deploy_key] if ctx.deploy_key else [],
        files,
        file_permissions,
        [
            "busybox-static",
            "curl",
            "docker-compose-v2",
            "docker.io",
            "iptables",
            # The backups (blueprints-backup, a release file, runs it).
            "restic",
            "unattended-upgrades",
        ],
        runcmd,
    )


def autoheal_period(app: AppSpec) -> int:
    intervals = [svc.health.interval for svc in app.services.values() if svc.health]
    shortest = min(intervals, default=AUTOHEAL_MAX_SECONDS)
    return max(AUTOHEAL_MIN_SECONDS, min(AUTOHEAL_MAX_SECONDS, shortest))


def _secret_env(app: AppSpec, secrets: Mapping[str, str]) -> str | None:
    names = app.secret_names()
    if not names:
        return None
    return docker_env_file(secret_values(secrets, names), what="secret")


def _t(template: str, **values: object) -> str:
    return render_template(f"compose/{template}", **values)
