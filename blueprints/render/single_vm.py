"""The single-VM blueprint's node: its bootstrap (user data) and its release (the app).

The bootstrap is what a machine needs whatever app it runs: docker, the data volume mounted at
/srv/data whenever it is attached (at boot or later), the proxy's unit, the deploy access, what
installs and runs the release agent (which itself lives on the volume, beside the releases) and
the unit that starts the release found on the volume. It depends on no service, image, env
value, secret, route or admin key, and each node (primary and spare) gets the same bytes:
neither the node's role nor which node is *active* shows up in it, so a release or a promotion
changes no node's user data. No node ever powers itself off: the program keeps the standby
running (warm) or powered off (cold) through the cloud's API.

The release is everything about the app: one systemd unit per service replica, their run and
health scripts, Caddy's routes, the admin keys, the secret env files. It travels over SSH
(blueprints.release) and is kept on the data volume, so the node holding the volume runs it.
"""

from __future__ import annotations

import base64
import heapq
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass

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
from blueprints.render.common import (
    docker_env_file,
    dump_json,
    dump_yaml,
    render_template,
    systemd_escape_path,
)
from blueprints.render.context import NodeContext
from blueprints.render.vm import (
    ACME_RETRY_UNIT,
    BOOTSTRAP_FAILED,
    BOOTSTRAP_FAILED_HINT,
    CLOUD_INIT_LOG,
    DEPLOY_USER,
    FIRST_BOOT_MAX_SECONDS,
    acme_retry_files,
    cloud_config,
    host_files,
)
from blueprints.spec import AppSpec, File, Service, format_path, references

# What the node's user data installs (cloud-init's `packages:`, then install-packages for what it
# left out). restic: the backups (blueprints-backup, a release file, runs it).
PACKAGES = ("curl", "docker.io", "iptables", "restic", "unattended-upgrades")

# A problem with the app spec: its field path (as blueprints.spec writes them) and what is wrong.
Problem = tuple[tuple[str | int, ...], str]

SCRIPTS = "/usr/local/lib/blueprints"
# Scripts that come with a release (run-<svc>, health-<svc>): apart from the bootstrap's.
APP_SCRIPTS = f"{SCRIPTS}/app"
UNITS = "/etc/systemd/system"
# The release agent lives on the data volume beside the releases (blueprints.release.channel
# installs it with INSTALL_AGENT), so whichever node holds the volume has it.
RELEASE_AGENT = "/srv/data/.blueprints/release-agent"
INSTALL_AGENT = f"{SCRIPTS}/install-agent"
# The stable path that runs it (for the release channel, the boot unit and admins alike).
AGENT_SHIM = f"{SCRIPTS}/release-agent"
AGENT_WAIT_SECONDS = 300
RELEASE_UNIT = "blueprints-release.service"
# The admins' keys arrive with each release; sshd reads them besides the deploy key.
ADMIN_KEYS_DIR = "/etc/blueprints/admin-keys"
ADMIN_KEYS_SSHD = "/etc/ssh/sshd_config.d/11-blueprints-admin-keys.conf"
SECRETS = "/etc/blueprints/secrets"
# The services' files: a non-secret one is a release file, a secret one a secret file; each is
# bind-mounted read-only at its path in the container.
FILES = "/etc/blueprints/files"
SECRET_FILES = f"{SECRETS}/files"
# Registry credentials: a docker config.json, read by every docker command that pulls an image of
# a registry the spec has credentials for (DOCKER_CONFIG names its directory).
DOCKER_CONFIG = f"{SECRETS}/docker"
DOCKER_CONFIG_FILE = f"{DOCKER_CONFIG}/config.json"
# Docker keeps Docker Hub's credentials under this key, not under docker.io.
DOCKER_HUB_AUTH = "https://index.docker.io/v1/"
CADDY_CONFIG = "/etc/blueprints/caddy.json"
# Pinned so that a rebuilt VM runs the same proxy as the one it replaces.
CADDY_IMAGE = "caddy:2.8.4"
# A docker container name, not a DNS label (underscore), so no service name can collide with it.
CADDY_CONTAINER = "blueprints_caddy"
# Reserved directory under /srv/data for Caddy's TLS state.
CADDY_DIR = "caddy"
# Caddy's certificates on the host: the container's /data is /srv/data/CADDY_DIR, and its config's
# storage root is /data/caddy (_caddy_config).
CADDY_STORAGE = f"/srv/data/{CADDY_DIR}/caddy"
DATA_LABEL = "blueprints-data"
# How long a node waits at boot for the data volume to be attached.
DEVICE_WAIT_SECONDS = 180
# How long the standby's image pull waits for the node's first boot (cloud-init), and for one
# `docker pull`: a hung boot or registry fails `pulumi up` with a line saying which, instead of
# holding it forever. The boot wait is the longest first boot that may still be installing
# (apt's lock waits, install-packages' deadline and a margin); it starts after the server does.
BOOT_WAIT_SECONDS = FIRST_BOOT_MAX_SECONDS
PULL_WAIT_SECONDS = 600


def pull_images_command(
    boot_wait: int = BOOT_WAIT_SECONDS, pull_wait: int = PULL_WAIT_SECONDS
) -> str:
    """What the program runs over SSH on a standby (blueprints.single_vm: on the warm one, and
    on a cold one before it is first powered off): wait for cloud-init to finish, then `docker
    pull` each image named on stdin, one per line (standby_images), so that a promotion starts
    containers instead of downloading them. Fixed text: the images travel on stdin, so no
    spec value is ever part of a command line. cloud-init's own verdict is not judged here (a
    boot with recoverable errors still pulls; the agent says what is missing); only its
    running past `boot_wait` seconds, the bootstrap having stopped at a failing command
    (BOOTSTRAP_FAILED), or a pull failing or running past `pull_wait`, fails."""
    return (
        f"timeout {boot_wait} cloud-init status --wait >/dev/null 2>&1; "
        'if [ "$?" -eq 124 ]; then '
        f'echo "blueprints: cloud-init still runs after {boot_wait}s on this node; '
        'its first boot did not finish" >&2; exit 1; fi; '
        f"if [ -e {BOOTSTRAP_FAILED} ]; then "
        f'echo "blueprints: the bootstrap of this node failed: $(cat {BOOTSTRAP_FAILED})" >&2; '
        f'echo "blueprints: {BOOTSTRAP_FAILED_HINT}" >&2; '
        "exit 1; fi; "
        "while IFS= read -r image; do "
        'if [ -n "$image" ]; then '
        f'sudo timeout {pull_wait} docker pull --quiet "$image" </dev/null || {{ '
        f"printf 'blueprints: docker pull %s failed or took longer than {pull_wait}s\\n' "
        '"$image" >&2; exit 1; }; fi; '
        "done"
    )


PULL_IMAGES_COMMAND = pull_images_command()
# The cloud metadata service (Hetzner's and AWS's alike) hands out the user data, secrets
# included; no container may reach it.
METADATA_IP = "169.254.169.254"
METADATA_GUARD_UNIT = "blueprints-metadata-guard.service"
STOP_TIMEOUT_SECONDS = 30

# What the health script needs to know about a replica's container, in one docker call. A
# container sits on exactly one network (the app's), so the range yields one address.
_INSPECT_FORMAT = (
    "{{.State.Running}} {{.State.StartedAt}} "
    "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"
)
_DEVICE = re.compile(r"/[A-Za-z0-9._:/-]+")


@dataclass(frozen=True)
class RenderedFile:
    """One file cloud-init writes on the node."""

    content: str
    permissions: str  # octal, as cloud-init's write_files wants it


def render_node_files(ctx: NodeContext) -> dict[str, str]:
    """Absolute path on the VM -> text, for every file the node ends up with: its bootstrap and
    the release (secret files included, from ctx.secrets)."""
    files = {path: f.content for path, f in bootstrap_files(ctx).items()}
    storage = ctx.backup_storage
    files.update({path: f.content for path, f in release_files(ctx.app, storage).items()})
    files.update(secret_files(ctx.app, ctx.secrets, storage))
    return dict(sorted(files.items()))


def render_cloud_init(ctx: NodeContext) -> str:
    """The node's user data: a #cloud-config document with its bootstrap (no app in it)."""
    files = bootstrap_files(ctx)
    # Fixed commands only (no spec values), so plain strings run by sh read best.
    runcmd = [
        # The drop-ins in sshd_config.d only count once sshd re-reads its config.
        "systemctl try-reload-or-restart ssh.service",
        # The docker group only exists once docker.io is installed, after cloud-init created the
        # user; naming it in `groups` would make cloud-init create it first as an ordinary group.
        f"usermod --append --groups docker {DEPLOY_USER}",
    ]
    if ctx.floating_ip is not None:
        runcmd.append("netplan apply")
    runcmd += [
        "systemctl daemon-reload",
        # Links the release unit into multi-user.target.wants/ and into the data device's
        # .device.wants/, so the release on the volume also starts when the volume is attached
        # after boot.
        f"systemctl enable {RELEASE_UNIT}",
        # --no-block: starting waits for the data volume, which cloud-init must not wait for.
        f"systemctl start --no-block {RELEASE_UNIT}",
        f"systemctl enable --now {ACME_RETRY_UNIT}.timer",
    ]
    return cloud_config(
        [ctx.deploy_key] if ctx.deploy_key else [],
        {path: f.content for path, f in sorted(files.items())},
        lambda path: files[path].permissions,
        PACKAGES,
        runcmd,
    )


def standby_images(app: AppSpec) -> list[str]:
    """The images a promoted node starts: every service's, and the proxy's where the app has
    http routes; sorted, each once. An image from a registry the spec has credentials for is
    left out: the standby holds no secret (the credentials live with the release on the
    volume), so a promotion pulls it with them (private_standby_images)."""
    images = {svc.image for svc in app.services.values() if app.registry_for(svc.image) is None}
    if _caddy_config(app) is not None:
        images.add(CADDY_IMAGE)
    return sorted(images)


def private_standby_images(app: AppSpec) -> list[str]:
    """The images a standby cannot pull ahead: those of registries with credentials."""
    return sorted({s.image for s in app.services.values() if app.registry_for(s.image)})


def standby_images_text(app: AppSpec) -> str:
    """PULL_IMAGES_COMMAND's stdin: standby_images, one per line."""
    return "".join(f"{image}\n" for image in standby_images(app))


def file_permissions(path: str) -> str:
    """The mode a rendered file gets on the node (and should get when written to disk)."""
    if path.startswith(SECRETS + "/") or path.startswith("/etc/netplan/"):
        # Secrets are for root only; netplan refuses to be quiet about readable configs.
        return "0600"
    if path.startswith(SCRIPTS + "/"):
        return "0755"
    return "0644"


def _checked(app: AppSpec) -> None:
    # The program reports check_app's problems before it creates anything; this is the second
    # line of defence, for a caller that did not ask.
    problems = check_app(app)
    if problems:
        raise ValueError("\n".join(f"{format_path(path)}: {msg}" for path, msg in problems))


def _rendered(
    texts: Mapping[str, str], modes: Mapping[str, str] | None = None
) -> dict[str, RenderedFile]:
    modes = modes or {}
    return {
        path: RenderedFile(content=texts[path], permissions=modes.get(path, file_permissions(path)))
        for path in sorted(texts)
    }


def bootstrap_files(ctx: NodeContext) -> dict[str, RenderedFile]:
    """Every file of the node's user data: machine-level only (see the module's docstring)."""
    app = ctx.app
    texts: dict[str, str] = host_files(PACKAGES)
    texts.update(deploy_access_files())
    texts.update(_data_volume_files(ctx))
    texts.update(_network_files(app))
    texts.update(_metadata_guard_files())
    texts.update(release_agent_files(ctx.data_device, requires=["blueprints-network.service"]))
    # The proxy is installed on every node; it runs once a release brings its routes.
    texts[f"{SCRIPTS}/caddy"] = _t(
        "caddy.sh.j2",
        container=CADDY_CONTAINER,
        image=CADDY_IMAGE,
        network=_network(app),
        config_path=CADDY_CONFIG,
    )
    texts[f"{UNITS}/blueprints-caddy.service"] = _t(
        "caddy.service.j2",
        script=f"{SCRIPTS}/caddy",
        config_path=CADDY_CONFIG,
        guard=METADATA_GUARD_UNIT,
    )
    texts.update(
        acme_retry_files(
            CADDY_CONFIG,
            CADDY_STORAGE,
            restart=["systemctl", "try-restart", "blueprints-caddy.service"],
            running=["systemctl", "is-active", "blueprints-caddy.service"],
        )
    )
    if ctx.floating_ip is not None:
        texts["/etc/netplan/60-floating-ip.yaml"] = _floating_ip_netplan(ctx.floating_ip)
    return _rendered(texts)


def deploy_access_files() -> dict[str, str]:
    """sshd reads the admins' keys from the file each release writes, besides the deploy key
    the bootstrap authorizes: adding an admin is a release, not a new machine."""
    return {
        ADMIN_KEYS_SSHD: _t("admin-keys.conf.j2", admin_keys_dir=ADMIN_KEYS_DIR),
    }


def release_agent_files(device: str, requires: list[str]) -> dict[str, str]:
    """What installs the release agent, and the unit that starts the release on the volume."""
    return {
        INSTALL_AGENT: _t(
            "install-agent.sh.j2",
            agent=RELEASE_AGENT,
            wait_seconds=AGENT_WAIT_SECONDS,
            bootstrap_failed=BOOTSTRAP_FAILED,
            bootstrap_failed_hint=BOOTSTRAP_FAILED_HINT,
            cloud_init_log=CLOUD_INIT_LOG,
        ),
        AGENT_SHIM: _t("release-agent.sh.j2", agent=RELEASE_AGENT),
        f"{UNITS}/{RELEASE_UNIT}": _t(
            "release.service.j2",
            agent=RELEASE_AGENT,
            shim=AGENT_SHIM,
            guard=METADATA_GUARD_UNIT,
            requires=requires,
            device_unit=_device_unit(device),
        ),
    }


def admin_keys_file(app: AppSpec) -> dict[str, str]:
    keys = "".join(key.strip() + "\n" for key in app.admin.ssh_keys)
    return {f"{ADMIN_KEYS_DIR}/{DEPLOY_USER}": keys}


def release_files(app: AppSpec, storage: Storage | None = None) -> dict[str, RenderedFile]:
    """Every non-secret file of the app's release (see the module's docstring); with the
    stack's backup storage, the backup's script, configuration and units too."""
    _checked(app)
    texts: dict[str, str] = admin_keys_file(app)
    modes: dict[str, str] = {}
    for name, svc in app.sorted_services():
        texts.update(_service_files(app, name, svc))
        for f in svc.files:
            if not f.secret:
                path = file_path(name, f)
                texts[path] = app.file_text(f, {}, "docker")
                modes[path] = host_mode(f)
    for name in app.tasks:
        texts.update(_task_files(app, name))
    for name in app.schedules:
        texts.update(_schedule_files(app, name))
    caddy = _caddy_config(app)
    if caddy is not None:
        texts[CADDY_CONFIG] = dump_json(caddy)
    texts[f"{UNITS}/app.target"] = _t("app.target.j2", units=_app_units(app, caddy is not None))
    if storage is not None:
        texts.update(
            backup_files.release_files(
                app, storage, backup_runtime(app), name=storage.host, after="app.target"
            )
        )
    return _rendered(texts, modes)


def file_path(service: str, f: File) -> str:
    """Where a service's file lives on the node: a release file, or (when its content names a
    secret) a secret file, root-only like every other."""
    return f"{SECRET_FILES if f.secret else FILES}/{service}/{f.key}"


def host_mode(f: File) -> str:
    """The node file's mode: the file's, without write bits for group and others (the container
    sees it read-only anyway, and the release agent installs nothing others may write)."""
    return f"{f.mode_int & ~0o022:04o}"


def backup_runtime(app: AppSpec) -> backup_files.Runtime:
    """How a backup reaches the app here: the containers are <svc>-<replica> (a service with
    volumes has one replica), the app is app.target."""

    def containers(names: list[str]) -> list[str]:
        return [f"{n}-{i}" for n in names for i in range(1, app.services[n].replicas + 1)]

    return backup_files.Runtime(
        exec=lambda name: ["docker", "exec", "-i", f"{name}-1"],
        pause=lambda names: ["docker", "pause", *containers(names)],
        resume=lambda names: ["docker", "unpause", *containers(names)],
        stop=["systemctl", "stop", "app.target"],
        start=["systemctl", "start", "app.target"],
    )


def secret_files(
    app: AppSpec, secrets: Mapping[str, str], storage: Storage | None = None
) -> dict[str, str]:
    """The release's secret files: one env file per service with secret variables, the secret
    files of the services, the registries' docker config, and with the stack's backup storage,
    the backup's password and storage keys (secrets carries them under node_files' reserved
    names). Modes: secret_modes."""
    files = _secret_files(app, backup_files.app_secret_values(secrets))
    files.update(backup_files.backup_secret_files(storage, secrets))
    return files


def secret_modes(app: AppSpec, files: Mapping[str, str]) -> dict[str, str]:
    """The mode of each secret file: a service's file keeps its own, everything else is 0600."""
    own = {file_path(n, f): host_mode(f) for n, s in app.sorted_services() for f in s.files}
    return {path: own.get(path, "0600") for path in files}


def release_services(
    app: AppSpec,
    key: str,
    secrets: Mapping[str, str],
    files: Mapping[str, RenderedFile] | None = None,
) -> list[ServiceRelease]:
    """The services as the release agent rolls them out, dependencies first (`files`: the
    release's files, when the caller has them already)."""
    files = release_files(app) if files is None else files
    secret = secret_files(app, secrets)
    out = []
    for name, svc in dependency_order(app):
        definition = [
            files[f"{APP_SCRIPTS}/run-{name}"].content,
            secret.get(f"{SECRETS}/{name}.env", ""),
        ]
        # A changed file restarts the service: its mounts name the files, not their content.
        for f in svc.files:
            path = file_path(name, f)
            text = secret[path] if f.secret else files[path].content
            definition.append([path, host_mode(f), text])
        out.append(
            ServiceRelease(
                name=name,
                image=svc.image,
                replicas=svc.replicas,
                rollout=rollout(svc),
                digest=digest(key, "single-vm", name, definition),
                budget=health_budget(svc),
            )
        )
    return out


def release_tasks(app: AppSpec) -> list[TaskRelease]:
    """The tasks as the release agent runs them: before the rollout, in the order written."""
    return [
        TaskRelease(
            name=name,
            argv=[f"{APP_SCRIPTS}/task-{name}"],
            timeout=task.timeout,
            needs=task_needs(app, task.service),
        )
        for name, task in app.tasks.items()
    ]


def task_needs(app: AppSpec, service: str) -> list[str]:
    """What a task with service's image reaches: the service's dependencies, theirs too, in
    start order (a first release starts them before its tasks run)."""
    found: set[str] = set()
    pending = list(app.services[service].depends_on)
    while pending:
        dep = pending.pop()
        if dep not in found:
            found.add(dep)
            pending += app.services[dep].depends_on
    return [name for name, _ in dependency_order(app) if name in found]


def release_units(app: AppSpec, storage: Storage | None = None) -> list[str]:
    """The timers the release starts (and restarts when their file changed)."""
    units = [f"app-schedule-{name}.timer" for name in app.schedules]
    if storage is not None:
        units += backup_files.release_units()
    return sorted(units)


def release_documents(
    app: AppSpec, key: str, secrets: Mapping[str, str], storage: Storage | None = None
) -> Documents:
    """The app's release as it travels to the node: key is the deploy private key."""
    secret = secret_files(app, secrets, storage)
    secret_digest, secret_doc = secrets_document(key, secret, secret_modes(app, secret))
    files = release_files(app, storage)
    release = release_document(
        key,
        rung="single-vm",
        app=app.name,
        services=release_services(app, key, secrets, files),
        files={path: f.content for path, f in files.items()},
        modes={path: f.permissions for path, f in files.items()},
        volumes=sorted(app.volumes),
        units=release_units(app, storage),
        secrets=secret_digest,
        tasks=release_tasks(app),
    )
    return Documents(release=release, secrets=secret_doc)


def rollout(svc: Service) -> str:
    """surge: a stateless service, whose new container can run beside the old one (no volume,
    no host port); restart: anything else, stopped before its successor starts."""
    return "restart" if svc.volumes or svc.public_tcp_ports else "surge"


def health_budget(svc: Service) -> int | None:
    """Seconds a new container may take to become healthy: its start period, then as many
    failed probes as its health check tolerates."""
    h = svc.health
    if h is None:
        return None
    return h.start_period + h.retries * (h.interval + h.timeout)


def dependency_order(app: AppSpec) -> list[tuple[str, Service]]:
    """Services, each after those it depends on; ties by name."""
    # Kahn's algorithm, always taking the first ready name: linear in services and edges (a
    # scan of every pending service per step made 2,000 services take seconds).
    names = sorted(app.services)
    waiting = {n: set(app.services[n].depends_on) for n in names}
    dependents: dict[str, list[str]] = {}
    for n in names:
        for d in waiting[n]:
            dependents.setdefault(d, []).append(n)
    ready = [n for n in names if not waiting[n]]  # sorted: a valid heap
    done: list[str] = []
    while waiting:
        # No name ready: a cycle; the spec refuses those, so this is for other callers.
        name = heapq.heappop(ready) if ready else min(waiting)
        del waiting[name]
        done.append(name)
        for n in dependents.get(name, ()):
            if n in waiting:
                waiting[n].discard(name)
                if not waiting[n]:
                    heapq.heappush(ready, n)
    return [(n, app.services[n]) for n in done]


def _t(template: str, **values: object) -> str:
    return render_template(f"single-vm/{template}", **values)


NUL_MESSAGE = "contains a NUL character, which no process can receive"


def check_app(app: AppSpec) -> list[Problem]:
    """Every rule of the single-vm blueprint on top of the spec's own, for the spec as a whole.

    One (field path, message) per problem, in a stable order, so that the program can report
    them all, a line each, before it creates any resource. Needs no facts about a node.
    """
    problems: list[Problem] = []
    if CADDY_DIR in app.volumes:
        problems.append(
            (
                ("volumes", CADDY_DIR),
                "is reserved by the single-vm blueprint for the reverse proxy's TLS state "
                f"(/srv/data/{CADDY_DIR}); rename the volume",
            )
        )
    for name, svc in app.sorted_services():
        base: tuple[str | int, ...] = ("services", name)
        tcp = [str(p.published) for p in svc.public_tcp_ports]
        if tcp and svc.replicas > 1:
            ports = f"port {tcp[0]}" if len(tcp) == 1 else f"ports {', '.join(tcp)}"
            problems.append(
                (
                    (*base, "replicas"),
                    "must be 1 for a service with an expose: tcp port; the single-vm blueprint "
                    f"publishes host {ports} once, for one container (got {svc.replicas})",
                )
            )
        problems += nul_problems(base, svc)
    for kind, runs in (("tasks", app.tasks), ("schedules", app.schedules)):
        for name, run in runs.items():
            problems += [
                ((kind, name, "command", i), NUL_MESSAGE)
                for i, arg in enumerate(run.command)
                if "\0" in arg
            ]
    return problems


def nul_problems(base: tuple[str | int, ...], svc: Service) -> list[Problem]:
    """A process can receive any text except NUL: each field of a service that holds one."""
    found: list[tuple[str | int, ...]] = [
        ("env", var) for var, value in sorted(svc.env.items()) if "\0" in value
    ]
    found += [("entrypoint", i) for i, arg in enumerate(svc.entrypoint or []) if "\0" in arg]
    found += [("command", i) for i, arg in enumerate(svc.command or []) if "\0" in arg]
    found += [("files", i, "content") for i, f in enumerate(svc.files) if "\0" in f.text]
    if svc.health is not None:
        found += [
            ("health", "command", i)
            for i, arg in enumerate(svc.health.command or [])
            if "\0" in arg
        ]
        if "\0" in svc.health.path:
            found.append(("health", "path"))
    if svc.backup is not None:
        for field in ("dump", "restore"):
            found += [
                ("backup", field, i)
                for i, arg in enumerate(getattr(svc.backup, field))
                if "\0" in arg
            ]
    return [((*base, *path), NUL_MESSAGE) for path in found]


def probe_host(app: AppSpec, svc: Service) -> str:
    """The Host header of an http health probe: what the proxy would send, since apps often
    check it (Django's ALLOWED_HOSTS, Rails' host authorization answer 400 to anything else).
    The host of the service's first public http port, else the app's domain."""
    for port in svc.public_http_ports:
        if port.host:
            return port.host
    return app.domain


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
    # Stopping the app (a restore) stops the schedules too; starting it starts them again.
    units += [f"app-schedule-{name}.timer" for name in app.schedules]
    if caddy:
        units.append("blueprints-caddy.service")
    return sorted(units)


def _checked_device(device: str) -> str:
    if not _DEVICE.fullmatch(device) or "/../" in device + "/" or "//" in device:
        raise ValueError(
            f"data_device {device!r} is not a plain device path like "
            "/dev/disk/by-id/scsi-0HC_Volume_12345678"
        )
    return device


def _device_unit(device: str) -> str:
    """The .device unit systemd keeps for the data volume's block device (once it appears)."""
    return systemd_escape_path(_checked_device(device)) + ".device"


def _data_volume_files(ctx: NodeContext) -> dict[str, str]:
    return {
        **volume_mount_files(ctx.data_device),
        f"{UNITS}/blueprints-data.service": _t("data.service.j2", script=f"{SCRIPTS}/prepare-data"),
        f"{SCRIPTS}/prepare-data": _t("prepare-data.sh.j2", caddy_dir=CADDY_DIR),
    }


def volume_mount_files(data_device: str) -> dict[str, str]:
    """The data volume's units at /srv/data: mounted once its device appears (waited for), a
    blank volume formatted once, a volume with data never reformatted. Shared with the nomad
    rung's data node."""
    device = _checked_device(data_device)
    escaped = systemd_escape_path(device)
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
    }


def _network_files(app: AppSpec) -> dict[str, str]:
    return {
        f"{UNITS}/blueprints-network.service": _t(
            "network.service.j2", script=f"{SCRIPTS}/create-network"
        ),
        f"{SCRIPTS}/create-network": _t("create-network.sh.j2", network=_network(app)),
    }


def _metadata_guard_files() -> dict[str, str]:
    script = f"{SCRIPTS}/metadata-guard"
    return {
        f"{UNITS}/{METADATA_GUARD_UNIT}": _t(
            "metadata-guard.service.j2", script=script, metadata_ip=METADATA_IP
        ),
        script: _t("metadata-guard.sh.j2", metadata_ip=METADATA_IP),
    }


def _secret_users(app: AppSpec, secret: str) -> list[str]:
    """Who reads a secret: services (by secret_env, env or files) and registries."""

    def names(text: str) -> set[str]:
        return {r.name for r in references(text) if r.kind == "secret"}

    users = [
        f"service {n}"
        for n, svc in app.sorted_services()
        if secret in svc.secret_env
        or any(secret in names(v) for v in svc.env.values())
        or any(secret in names(f.text) for f in svc.files)
    ]
    users += [
        f"registry {host}"
        for host, reg in sorted(app.registries.items())
        if secret in names(reg.username) | names(reg.password)
    ]
    return users


def _secret_files(app: AppSpec, secrets: Mapping[str, str]) -> dict[str, str]:
    for name in app.secret_names():
        if name not in secrets:
            raise ValueError(
                f"secret {name} (read by {', '.join(_secret_users(app, name))}) has no value; "
                f"set it with `pulumi config set --secret --path 'blueprints:secrets.{name}'`"
            )
    values = {name: secrets[name] for name in app.secret_names()}
    out = {}
    for name, svc in app.sorted_services():
        env = app.environment(name, values, "docker")
        if env.secret:
            out[f"{SECRETS}/{name}.env"] = docker_env_file(env.secret, what="secret")
        for f in svc.files:
            if f.secret:
                out[file_path(name, f)] = app.file_text(f, values, "docker")
    if app.registries:
        out[DOCKER_CONFIG_FILE] = docker_config(app.registry_auth(values))
    return out


def docker_config(auth: Mapping[str, tuple[str, str]]) -> str:
    """A docker config.json holding the registries' credentials."""
    auths = {}
    for host, (username, password) in sorted(auth.items()):
        token = base64.b64encode(f"{username}:{password}".encode()).decode()
        auths[DOCKER_HUB_AUTH if host == "docker.io" else host] = {"auth": token}
    return dump_json({"auths": auths})


@dataclass(frozen=True)
class Container:
    """What a container of a service runs with, whatever starts it (its units, a task, a
    schedule): everything but its name, network alias and published ports."""

    image: str
    cpus: str
    memory: str
    entrypoint: str | None  # docker's --entrypoint: one program ("" clears the image's)
    args: list[str]  # after the image: the rest of the entrypoint, then the command
    env_args: list[str]
    env_file: str | None
    volume_args: list[str]
    docker_config: str | None  # DOCKER_CONFIG for pulling the image, when it needs credentials


def container(app: AppSpec, name: str, command: list[str] | None = None) -> Container:
    """Service name's container; command replaces the service's (a task's, a schedule's)."""
    svc = app.services[name]
    env = app.environment(name, dict.fromkeys(app.secret_names(), ""), "docker")
    entrypoint = svc.entrypoint
    args = [*(entrypoint or [])[1:], *(svc.command or [] if command is None else command)]
    return Container(
        image=svc.image,
        cpus=f"{svc.cpu:g}",
        memory=f"{svc.memory}m",
        entrypoint=None if entrypoint is None else (entrypoint[0] if entrypoint else ""),
        args=args,
        env_args=[f"{var}={value}" for var, value in env.plain.items()],
        env_file=f"{SECRETS}/{name}.env" if env.secret else None,
        volume_args=[
            f"/srv/data/{m.volume}:{m.path}" + (":ro" if m.read_only else "") for m in svc.volumes
        ]
        + [f"{file_path(name, f)}:{f.path}:ro" for f in svc.files],
        docker_config=DOCKER_CONFIG if app.registry_for(svc.image) else None,
    )


def _service_files(app: AppSpec, name: str, svc: Service) -> dict[str, str]:
    script = f"{APP_SCRIPTS}/run-{name}"
    health_script = f"{APP_SCRIPTS}/health-{name}" if svc.health else None
    deps = sorted(unit for dep in svc.depends_on for unit in _instances(dep, app.services[dep]))
    files = {
        f"{UNITS}/app-{name}@.service": _t(
            "service@.service.j2",
            name=name,
            instances=_instances(name, svc),
            deps=deps,
            script=script,
            health_script=health_script,
            guard=METADATA_GUARD_UNIT,
            stop_timeout=STOP_TIMEOUT_SECONDS,
        ),
        script: _t(
            "run-service.sh.j2",
            name=name,
            network=_network(app),
            c=container(app, name),
            publish_args=[f"{p.published}:{p.target}" for p in svc.public_tcp_ports],
            stop_timeout=STOP_TIMEOUT_SECONDS,
        ),
    }
    health = svc.health
    if health is not None and health_script is not None:
        files[health_script] = _t(
            "health.sh.j2",
            name=name,
            kind=health.type,
            replicas=svc.replicas,
            interval=health.interval,
            timeout=health.timeout,
            retries=health.retries,
            start_period=health.start_period,
            port=svc.health_port,
            path=health.path,
            host=probe_host(app, svc),
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


def _task_files(app: AppSpec, name: str) -> dict[str, str]:
    task = app.tasks[name]
    return {
        f"{APP_SCRIPTS}/task-{name}": _t(
            "run-once.sh.j2",
            kind="task",
            name=name,
            service=task.service,
            container_name=f"blueprints_task_{name}",
            network=_network(app),
            c=container(app, task.service, task.command),
            timeout=task.timeout,
        )
    }


def _schedule_files(app: AppSpec, name: str) -> dict[str, str]:
    schedule = app.schedules[name]
    script = f"{APP_SCRIPTS}/schedule-{name}"
    return {
        script: _t(
            "run-once.sh.j2",
            kind="schedule",
            name=name,
            service=schedule.service,
            container_name=f"blueprints_schedule_{name}",
            network=_network(app),
            c=container(app, schedule.service, schedule.command),
            timeout=schedule.timeout,
        ),
        f"{UNITS}/app-schedule-{name}.service": _t(
            "schedule.service.j2",
            name=name,
            script=script,
            guard=METADATA_GUARD_UNIT,
            timeout=schedule.timeout,
            stop_timeout=STOP_TIMEOUT_SECONDS,
        ),
        f"{UNITS}/app-schedule-{name}.timer": _t(
            "schedule.timer.j2",
            name=name,
            cron=schedule.cron,
            on_calendar=on_calendar(schedule.cron),
        ),
    }


def _caddy_config(app: AppSpec, dynamic: bool = False) -> dict[str, object] | None:
    """Caddy's native JSON config, or None when no port is exposed over http.

    Upstreams are the replicas' containers by name (single-vm), or with `dynamic`, whatever
    addresses the service's name resolves to, looked up again every few seconds (Compose, whose
    DNS answers a service name with every replica).
    """
    routes = []
    for name, svc in app.sorted_services():
        for port in svc.public_http_ports:
            host = port.host or app.domain
            upstreams: dict[str, object]
            if dynamic:
                # A removed container's address stays among the upstreams until the next
                # lookup, and a dial to an address nobody holds any more waits out the dial
                # timeout (Caddy's default: 3 s) before the request is retried on another: so
                # look up every second, and give up on a dial after one (a container on the
                # same host accepts in well under a millisecond).
                upstreams = {
                    "dynamic_upstreams": {
                        "source": "a",
                        "name": name,
                        # Containers listen on the port's container side.
                        "port": str(port.target),
                        "refresh": "1s",
                    },
                    "transport": {"protocol": "http", "dial_timeout": "1s"},
                }
            else:
                # Replicas 1..R and the surge slot R+1, where a release starts the new
                # container of a stateless service before it replaces the old ones. A slot with
                # no container does not resolve: Caddy's health check marks it down, and a
                # request dialling it is retried on another replica.
                upstreams = {
                    "upstreams": [
                        {"dial": f"{name}-{n}:{port.target}"} for n in range(1, svc.replicas + 2)
                    ],
                    # A container just stopped or a slow lookup must not cost the request
                    # Caddy's default 3 s per attempt (two would overrun try_duration).
                    "transport": {"protocol": "http", "dial_timeout": "1s"},
                }
            proxy: dict[str, object] = {
                "handler": "reverse_proxy",
                **upstreams,
                # While one replica restarts, retry the request on another rather than fail it.
                "load_balancing": {
                    "selection_policy": {"policy": "round_robin"},
                    "try_duration": "5s",
                },
            }
            # Active checks: only for a fixed list of upstreams (Caddy 2.8 runs none for dynamic
            # ones). Under Compose the gate is Docker's health status, which the release agent
            # waits for before it retires an old container.
            if not dynamic and svc.health is not None and svc.health.type == "http":
                active: dict[str, object] = {
                    "uri": svc.health.path,
                    "interval": f"{svc.health.interval}s",
                    "timeout": f"{svc.health.timeout}s",
                }
                health_port = svc.health_port
                if health_port is not None and health_port != port.target:
                    active["port"] = health_port
                # The route's host, as on the requests it proxies: Caddy would otherwise send
                # the upstream's address, which an app that checks its host answers with 400.
                active["headers"] = {"Host": [host]}
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
