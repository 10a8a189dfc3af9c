"""The compose blueprint's VM: a Docker Compose project rendered from the spec, and its cloud-init.

The compose file comes from a serializer (dump_yaml). Around it: the data volume mounted at
/srv/data (the single-vm units, reused), a wrapper that runs `docker compose` with the secret
environment, a systemd unit that brings the project up at boot once the volume is mounted, a
timer that restarts unhealthy containers (Compose only restarts exited ones) and, with the
stack's backup storage, the backup's timers (blueprints.backup).

The spec's tasks and schedules are compose services too, in profiles `up` never starts
(`tasks`, `schedules`), named `task_<name>` and `schedule_<name>`: the underscore keeps them, like
the proxy, out of the DNS-label names a spec service may have. Each is run by a release script
(`app-compose run --rm --no-deps`, bounded by its timeout): a task by the release agent before
the rollout, a schedule by a systemd timer.

Secret values never enter the compose file. A service's secret variable names a variable of
Compose's own environment (`${BLUEPRINTS__web__DATABASE_URL?...}`), one per service and name (a
composed value like DATABASE_URL may differ between services), which the app-compose wrapper
exports from the root-only env file, verbatim. The same file sets DOCKER_CONFIG when the spec has
registry credentials, so every pull through the wrapper (the release agent's, `up` at boot, a
task's or schedule's run) uses them. Files are bind-mounted read-only from the node: release files
under /etc/blueprints/files/<service>/, secret ones under /etc/blueprints/secrets/files/<service>/.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from blueprints.backup import node_files as backup_files
from blueprints.backup.storage import Storage
from blueprints.cron import on_calendar
from blueprints.release.bundle import (
    Documents,
    ServiceRelease,
    TaskRelease,
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
from blueprints.render.vm import (
    ACME_RETRY_UNIT,
    DEPLOY_USER,
    acme_retry_files,
    cloud_config,
    host_files,
    secret_values,
)
from blueprints.spec import AppSpec, File, Service, format_path

Problem = svm.Problem

COMPOSE_DIR = "/etc/blueprints/compose"
COMPOSE_FILE = f"{COMPOSE_DIR}/compose.yaml"
# The wrapper's environment (root-only): the services' secret variables and DOCKER_CONFIG.
SECRETS_FILE = f"{svm.SECRETS}/app.env"
# A service's files on the node: release files, and secret ones (in the secrets document).
FILES_DIR = "/etc/blueprints/files"
SECRET_FILES_DIR = f"{svm.SECRETS}/files"
# Registry credentials: a docker config.json, read through DOCKER_CONFIG.
DOCKER_CONFIG = f"{svm.SECRETS}/docker"
DOCKER_CONFIG_FILE = f"{DOCKER_CONFIG}/config.json"
# Docker Hub's credentials are stored under its index address, not under docker.io.
DOCKER_HUB_AUTH_KEY = "https://index.docker.io/v1/"
# Compose variables carrying secret values: BLUEPRINTS__<service, - as _>__<variable>.
SECRET_VARIABLE_PREFIX = "BLUEPRINTS__"
# Profiles that keep tasks and schedules out of `up`: only `app-compose run` starts them.
TASK_PROFILE = "tasks"
SCHEDULE_PROFILE = "schedules"
# Seconds a timed-out task's run gets between SIGTERM and SIGKILL.
TASK_KILL_AFTER = 10
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
    the proxy's reserved directory, no NUL in values a process receives), and one Compose
    variable per secret variable of a service."""
    problems = svm.check_app(app)
    problems = [
        (path, msg.replace("single-vm blueprint", "compose blueprint")) for path, msg in problems
    ]
    taken: dict[str, tuple[str, str]] = {}
    placeholders = _placeholder_secrets(app)
    for name, svc in app.sorted_services():
        for var in app.environment(name, placeholders, "docker").secret:
            variable = secret_variable(name, var)
            if variable in taken and taken[variable] != (name, var):
                other, other_var = taken[variable]
                where: tuple[str | int, ...] = (
                    ("secret_env", svc.secret_env.index(var))
                    if var in svc.secret_env
                    else ("env", var)
                )
                problems.append(
                    (
                        ("services", name, *where),
                        f"travels in the same Compose variable {variable} as {other_var} of "
                        f"service {other}; rename one of the two",
                    )
                )
            taken[variable] = (name, var)
    return problems


def secret_variable(service: str, var: str) -> str:
    """The variable of Compose's environment that carries service's secret variable var."""
    return f"{SECRET_VARIABLE_PREFIX}{service.replace('-', '_')}__{var}"


def task_service(name: str) -> str:
    """The compose service of task `name` (not a DNS label, so no spec service has it)."""
    return f"task_{name}"


def schedule_service(name: str) -> str:
    """The compose service of schedule `name` (not a DNS label, so no spec service has it)."""
    return f"schedule_{name}"


def task_script(name: str) -> str:
    return f"{svm.APP_SCRIPTS}/task-{name}"


def schedule_script(name: str) -> str:
    return f"{svm.APP_SCRIPTS}/schedule-{name}"


def schedule_unit(name: str) -> str:
    return f"app-schedule-{name}"


def file_source(service: str, file: File) -> str:
    """Where the node keeps a service's file: a release file, or a secret one."""
    root = SECRET_FILES_DIR if file.secret else FILES_DIR
    return f"{root}/{service}/{file.key}"


def render_compose_file(app: AppSpec) -> str:
    """The compose file: every service of the spec, its tasks and schedules, and the proxy."""
    return dump_yaml(compose_document(app))


def compose_document(app: AppSpec) -> dict[str, Any]:
    services: dict[str, Any] = {}
    for name, svc in app.sorted_services():
        services[name] = _service(app, name, svc)
    for tname, task in sorted(app.tasks.items()):
        services[task_service(tname)] = _run_service(app, task.service, task.command, TASK_PROFILE)
    for sname, schedule in sorted(app.schedules.items()):
        services[schedule_service(sname)] = _run_service(
            app, schedule.service, schedule.command, SCHEDULE_PROFILE
        )
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


def _placeholder_secrets(app: AppSpec) -> dict[str, str]:
    # Which variables are secret does not depend on the values.
    return dict.fromkeys(app.secret_names(), "")


def _container(app: AppSpec, name: str, svc: Service) -> dict[str, Any]:
    """What a service's containers and its tasks' and schedules' have in common: the image,
    entrypoint, limits, environment, data volumes and files. Spec values escaped for Compose's
    interpolation; a secret variable is a reference to the wrapper's environment instead."""
    out: dict[str, Any] = {
        "image": svc.image,
        "deploy": {
            "resources": {"limits": {"cpus": f"{svc.cpu:g}", "memory": f"{svc.memory}M"}},
        },
    }
    if svc.entrypoint is not None:
        out["entrypoint"] = list(svc.entrypoint)
    env = app.environment(name, _placeholder_secrets(app), "docker")
    if env.plain:
        out["environment"] = dict(env.plain)
    volumes = [_bind(f"/srv/data/{m.volume}", m.path, m.read_only) for m in svc.volumes]
    volumes += [_bind(file_source(name, f), f.path, read_only=True) for f in svc.files]
    if volumes:
        out["volumes"] = volumes
    out = _escape_interpolation(out)
    if env.secret:
        # `?`: without the wrapper's environment Compose refuses to run, rather than start the
        # container with the variable empty.
        out["environment"] = dict(
            sorted(
                {
                    **out.get("environment", {}),
                    **{
                        var: f"${{{secret_variable(name, var)}?set by app-compose}}"
                        for var in env.secret
                    },
                }.items()
            )
        )
    return out


def _service(app: AppSpec, name: str, svc: Service) -> dict[str, Any]:
    out = _container(app, name, svc)
    out["restart"] = "unless-stopped"
    out["stop_grace_period"] = f"{STOP_GRACE_SECONDS}s"
    out["deploy"] = {"replicas": svc.replicas, **out["deploy"]}
    if svc.command:
        out["command"] = _escape_interpolation(list(svc.command))
    private = [str(p.target) for p in svc.ports if p.expose != "tcp"]
    if private:
        out["expose"] = private
    published = [f"{p.published}:{p.target}" for p in svc.public_tcp_ports]
    if published:
        out["ports"] = published
    health = _healthcheck(app, svc)
    if health is not None:
        out["healthcheck"] = _escape_interpolation(health)
        if svc.health is not None and svc.health.type != "command":
            out["volumes"] = [
                *out.get("volumes", []),
                _bind(HOST_BUSYBOX, PROBE_BUSYBOX, read_only=True),
            ]
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


def _run_service(app: AppSpec, name: str, command: list[str], profile: str) -> dict[str, Any]:
    """A task's or schedule's compose service: service name's container with another command,
    in a profile `up` never starts, never restarted, and without a health check (the autoheal
    timer would restart a run an image's own check calls unhealthy)."""
    out = _container(app, name, app.services[name])
    out["command"] = _escape_interpolation(list(command))
    out["profiles"] = [profile]
    out["restart"] = "no"
    out["healthcheck"] = {"disable": True}
    # A PID 1 that passes a stop's SIGTERM on, so a run stops at its timeout even when its
    # command is a shell (a shell as PID 1 ignores SIGTERM).
    out["init"] = True
    return out


def _healthcheck(app: AppSpec, svc: Service) -> dict[str, Any] | None:
    health = svc.health
    if health is None:
        return None
    port = svc.health_port
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


# What the VM's user data installs (cloud-init's `packages:`, then install-packages for what it
# left out): Ubuntu's own Docker and Compose v2 packages, so security updates come with the
# distro's (unattended-upgrades), and the release pins their major versions; restic for the
# backups (blueprints-backup, a release file, runs it).
PACKAGES = (
    "busybox-static",
    "curl",
    "docker-compose-v2",
    "docker.io",
    "iptables",
    "restic",
    "unattended-upgrades",
)


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
        **host_files(PACKAGES),
        **svm.deploy_access_files(),
        WRAPPER: _t(
            "app-compose.sh.j2",
            project=app.name,
            compose_file=COMPOSE_FILE,
            secrets_file=SECRETS_FILE,
        ),
        f"{svm.UNITS}/{APP_UNIT}": _t(
            "app-compose.service.j2",
            wrapper=WRAPPER,
            guard=svm.METADATA_GUARD_UNIT,
            guard_script=f"{svm.SCRIPTS}/metadata-guard",
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
    # Caddy is a service of the compose file; a restart of its container asks for the first
    # certificates again once DNS answers. `restart` would also start a proxy an admin stopped:
    # acme-retry restarts it only while `ps` lists it running.
    texts.update(
        acme_retry_files(
            svm.CADDY_CONFIG,
            svm.CADDY_STORAGE,
            restart=[WRAPPER, "restart", PROXY_SERVICE],
            running=[WRAPPER, "ps", "--status", "running", "--quiet", PROXY_SERVICE],
        )
    )
    texts.update(svm._data_volume_files(data_ctx))
    texts.update(svm._metadata_guard_files())
    texts.update(svm.release_agent_files(device, requires=[]))
    if ctx.floating_ip is not None:
        texts["/etc/netplan/60-floating-ip.yaml"] = svm._floating_ip_netplan(ctx.floating_ip)
    return dict(sorted(texts.items()))


def release_files(app: AppSpec, storage: Storage | None = None) -> dict[str, str]:
    """Every non-secret file of the app's release: the compose file, Caddy's routes, the
    services' files, the tasks' and schedules' scripts and units; with the stack's backup
    storage, the backup's script, configuration and units too."""
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
    texts.update(_service_files(app, _placeholder_secrets(app), secret=False))
    texts.update(_run_files(app))
    if storage is not None:
        texts.update(
            backup_files.release_files(
                app, storage, BACKUP_RUNTIME, name=storage.host, after=APP_UNIT
            )
        )
    return dict(sorted(texts.items()))


def _service_files(app: AppSpec, secrets: Mapping[str, str], *, secret: bool) -> dict[str, str]:
    """The services' files on the node (the secret ones, or the others), references resolved."""
    return {
        file_source(name, f): app.file_text(f, secrets, "docker")
        for name, svc in app.sorted_services()
        for f in svc.files
        if f.secret == secret
    }


def _file_modes(app: AppSpec) -> dict[str, str]:
    """The services' files keep their own modes on the node (a bind mount shows the file)."""
    return {file_source(name, f): f.mode for name, svc in app.sorted_services() for f in svc.files}


def _run_files(app: AppSpec) -> dict[str, str]:
    """The tasks' scripts (the release agent runs them), the schedules' scripts and their
    service and timer units."""
    texts: dict[str, str] = {}
    for name, task in sorted(app.tasks.items()):
        texts[task_script(name)] = _t(
            "run-once.sh.j2",
            kind="task",
            name=name,
            service=task.service,
            compose_service=task_service(name),
            container=f"{app.name}-{task_service(name)}",
            wrapper=WRAPPER,
            timeout=task.timeout,
            kill_after=TASK_KILL_AFTER,
        )
    for name, schedule in sorted(app.schedules.items()):
        script = schedule_script(name)
        texts[script] = _t(
            "run-once.sh.j2",
            kind="schedule",
            name=name,
            service=schedule.service,
            compose_service=schedule_service(name),
            container=f"{app.name}-{schedule_service(name)}",
            wrapper=WRAPPER,
            timeout=schedule.timeout,
            kill_after=TASK_KILL_AFTER,
        )
        unit = schedule_unit(name)
        texts[f"{svm.UNITS}/{unit}.service"] = _t(
            "schedule.service.j2",
            name=name,
            script=script,
            app_unit=APP_UNIT,
            timeout=schedule.timeout,
            stop_timeout=STOP_GRACE_SECONDS,
        )
        texts[f"{svm.UNITS}/{unit}.timer"] = _t(
            "schedule.timer.j2",
            name=name,
            cron=schedule.cron,
            on_calendar=on_calendar(schedule.cron),
        )
    return texts


# How a backup reaches the app here: through the project's compose wrapper.
BACKUP_RUNTIME = backup_files.Runtime(
    exec=lambda name: [WRAPPER, "exec", "-T", name],
    pause=lambda names: [WRAPPER, "pause", *names],
    resume=lambda names: [WRAPPER, "unpause", *names],
    stop=["systemctl", "stop", APP_UNIT],
    start=["systemctl", "start", APP_UNIT],
)


def release_units(files: Mapping[str, str]) -> list[str]:
    """The timers a release starts (autoheal, the schedules', and the backup ones if any)."""
    prefix = f"{svm.UNITS}/"
    return sorted(p[len(prefix) :] for p in files if p.startswith(prefix) and p.endswith(".timer"))


def secret_files(
    app: AppSpec, secrets: Mapping[str, str], storage: Storage | None = None
) -> dict[str, str]:
    """The app's secret files: the wrapper's env file (the services' secret variables, and
    DOCKER_CONFIG with registry credentials), the services' secret files, the registries'
    docker config; and, with the stack's backup storage, the backup's password and storage
    keys (secrets carries them under node_files' reserved names)."""
    values = backup_files.app_secret_values(secrets)
    secret_values(values, app.secret_names())  # a missing secret is named, with its command
    files: dict[str, str] = {}
    wrapper_env = _wrapper_env(app, values)
    if wrapper_env:
        files[SECRETS_FILE] = wrapper_env
    files.update(_service_files(app, values, secret=True))
    if app.registries:
        files[DOCKER_CONFIG_FILE] = _docker_config(app, values)
    files.update(backup_files.backup_secret_files(storage, secrets))
    return dict(sorted(files.items()))


def secret_modes(app: AppSpec) -> dict[str, str]:
    """Modes of the secret files that are not 0600: the services' files keep theirs (in the
    root-only directory, so only the container they are mounted into can read them)."""
    return {path: mode for path, mode in _file_modes(app).items() if path.startswith(svm.SECRETS)}


def _wrapper_env(app: AppSpec, secrets: Mapping[str, str]) -> str:
    values: dict[str, str] = {}
    for name, _svc in app.sorted_services():
        env = app.environment(name, secrets, "docker")
        # One line per variable: each value is checked here, named by service and variable.
        docker_env_file(env.secret, what=f"service {name}'s secret variable")
        values.update({secret_variable(name, var): value for var, value in env.secret.items()})
    if app.registries:
        values["DOCKER_CONFIG"] = DOCKER_CONFIG
    return docker_env_file(values, what="secret") if values else ""


def _docker_config(app: AppSpec, secrets: Mapping[str, str]) -> str:
    """A docker config.json holding the spec's registry credentials."""
    auths = {}
    for host, (username, password) in app.registry_auth(secrets).items():
        token = base64.b64encode(f"{username}:{password}".encode()).decode()
        auths[DOCKER_HUB_AUTH_KEY if host == "docker.io" else host] = {"auth": token}
    return dump_json({"auths": auths})


def release_documents(
    app: AppSpec, key: str, secrets: Mapping[str, str], storage: Storage | None = None
) -> Documents:
    """The app's release as it travels to the VM: key is the deploy private key."""
    secret_texts = secret_files(app, secrets, storage)
    secret_digest, secret_doc = secrets_document(key, secret_texts, secret_modes(app))
    files = release_files(app, storage)
    modes = {path: file_permissions(path) for path in files}
    modes.update({p: m for p, m in _file_modes(app).items() if p in files})
    values = backup_files.app_secret_values(secrets)
    document = compose_document(app)
    services = []
    for name, svc in svm.dependency_order(app):
        definition = dict(document["services"][name])
        definition["deploy"] = {k: v for k, v in definition["deploy"].items() if k != "replicas"}
        secret_env = app.environment(name, values, "docker").secret
        if secret_env:
            # A secret variable counts by its value, not by how Compose is handed it (the name
            # alone, as before per-service variables): an app that changed nothing keeps its
            # digests, so its containers (a database's) are not recreated for this.
            definition["environment"] = {
                var: None if var in secret_env else value
                for var, value in definition["environment"].items()
            }
        parts: list[object] = [definition, secret_env]
        # A changed file changes the digest (its path does not), so the container is recreated
        # and sees it: a bind mount keeps showing the file it was made with.
        contents = {
            f.path: files.get(file_source(name, f), secret_texts.get(file_source(name, f)))
            for f in svc.files
        }
        if contents:
            parts.append(contents)
        services.append(
            ServiceRelease(
                name=name,
                image=svc.image,
                replicas=svc.replicas,
                rollout=svm.rollout(svc),
                digest=digest(key, "compose", name, *parts),
                budget=svm.health_budget(svc),
            )
        )
    release = release_document(
        key,
        rung="compose",
        app=app.name,
        services=services,
        files=files,
        modes=modes,
        volumes=sorted(app.volumes),
        units=release_units(files),
        secrets=secret_digest,
        tasks=[
            TaskRelease(
                name=name,
                argv=[task_script(name)],
                timeout=task.timeout,
                needs=task_needs(app, task.service),
            )
            for name, task in app.tasks.items()
        ],
    )
    return Documents(release=release, secrets=secret_doc)


def task_needs(app: AppSpec, service: str) -> list[str]:
    """The services a task of service reaches: what service depends on, directly or not. The
    task runs with --no-deps, so a release bringing them new starts them first (the agent)."""
    needs: set[str] = set()
    pending = list(app.services[service].depends_on)
    while pending:
        dep = pending.pop()
        if dep not in needs:
            needs.add(dep)
            pending.extend(app.services[dep].depends_on)
    return sorted(needs)


def file_permissions(path: str) -> str:
    """The mode of a file of the VM (a service's file has its own: see release_documents)."""
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
        f"systemctl enable --now {ACME_RETRY_UNIT}.timer",
    ]
    return cloud_config(
        [ctx.deploy_key] if ctx.deploy_key else [],
        files,
        file_permissions,
        PACKAGES,
        runcmd,
    )


def autoheal_period(app: AppSpec) -> int:
    intervals = [svc.health.interval for svc in app.services.values() if svc.health]
    shortest = min(intervals, default=AUTOHEAL_MAX_SECONDS)
    return max(AUTOHEAL_MIN_SECONDS, min(AUTOHEAL_MAX_SECONDS, shortest))


def _t(template: str, **values: object) -> str:
    return render_template(f"compose/{template}", **values)
