"""What the spec must satisfy on the nomad rung, beyond the spec's own rules.

Each rule gives (field path, message); `blueprints validate` and the program print them with the
spec's file name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from blueprints.spec import AppSpec, Port, Service

Problem = tuple[tuple[str | int, ...], str]

NODE_COUNT = 3
# Nomad's HTTP API, RPC and Serf (gossip) ports.
NOMAD_HTTP, NOMAD_RPC, NOMAD_SERF = 4646, 4647, 4648
# Ports the host already uses: SSH, the ingress and Nomad itself.
RESERVED_PORTS = {22: "SSH", 80: "the ingress", 443: "the ingress"} | {
    p: "Nomad" for p in (NOMAD_HTTP, NOMAD_RPC, NOMAD_SERF)
}
# The ingress's TLS state lives in this directory of the data volume.
INGRESS_DIR = "traefik"
# The backup jobs are `<app>-backup` and `<app>-backup-check` (release.py), beside the service
# jobs `<app>-<service>`: with backups on, no service may take these names.
BACKUP_JOBS = ("backup", "backup-check")

NUL_MESSAGE = "contains a NUL character, which no process can receive"
# The Nomad client expands `${...}` in a task's args, env values and check paths with its own
# variables (an unknown one stops the task), and reads `%{` as the start of an HCL template
# directive (hashicorp/nomad#14972); there is no escape that survives both the job parser and the
# client, so such a value cannot reach the process as written.
INTERPOLATION_MESSAGE = (
    "contains {seq!r}, which the Nomad client expands at run time as its own {what}, so the "
    "process would not receive the value as written; on the nomad blueprint write it without "
    "{seq!r} (for a shell variable, $NAME works)"
)
_SEQUENCES = {"${": "variable", "%{": "template directive"}
# A task reads its registry's credentials from its Variable into these two variables of its
# environment, which the docker driver's `auth` block names (release.py); no env var may take them.
REGISTRY_USERNAME_ENV = "BLUEPRINTS_REGISTRY_USERNAME"
REGISTRY_PASSWORD_ENV = "BLUEPRINTS_REGISTRY_PASSWORD"
# Nomad's service names, and so the job names beside them, are DNS labels.
NAME_LIMIT = 63


def registry_note(app: AppSpec) -> str | None:
    """What the plan says when the app pulls from registries with credentials: they reach the
    pulling task's environment (the docker driver's `auth` block reads them from there)."""
    if not app.registries:
        return None
    hosts = ", ".join(app.registries)
    return (
        f"the pull token of {hosts} is visible in the environment of every task pulling from "
        "it (the Nomad docker driver's auth block reads it from there, hashicorp/nomad#15384): "
        "use a read-only pull token"
    )


def task_job_name(app: AppSpec, name: str) -> str:
    """The batch job of one task (dispatched once per release)."""
    return f"{app.name}-task-{name}"


def schedule_job_name(app: AppSpec, name: str) -> str:
    """The periodic batch job of one schedule."""
    return f"{app.name}-schedule-{name}"


def address(app: AppSpec) -> Callable[[str, str], str]:
    """${services.NAME.host|port} on this rung: the name (every task reaching a service has it
    in its /etc/hosts, from Nomad's catalogue) and the first port's static host port (the
    public_port of a tcp port)."""

    def resolve(service: str, attr: str) -> str:
        if attr == "host":
            return service
        return str(host_port(app.services[service].ports[0]))

    return resolve


def placeholders(app: AppSpec) -> dict[str, str]:
    """A stand-in value per secret: which values are secret does not depend on the values."""
    return dict.fromkeys(app.secret_names(), "")


def health_port_of(svc: Service) -> Port | None:
    """The declared port an http or tcp check probes: health.port names a port by its service
    port or its container port; the first port without one. None when it names neither."""
    health = svc.health
    if health is None or not svc.ports:
        return None
    if health.type == "command" or health.port is None:
        return svc.ports[0]
    for p in svc.ports:
        if health.port == p.port:
            return p
    for p in svc.ports:
        if health.port == p.target:
            return p
    return None


def host_port(port: Any) -> int:
    return port.published if port.expose == "tcp" else port.port


def service_name(app: AppSpec, name: str, port: int | None = None) -> str:
    """Name in Nomad's service catalogue: the service's first port (or none) registers as
    <app>-<service>, every further http port as <app>-<service>-<port>."""
    return f"{app.name}-{name}" + (f"-{port}" if port is not None else "")


def _runtime_value(path: tuple[str | int, ...], value: str) -> list[Problem]:
    """A value the Nomad client reads at run time: no NUL, no `${`, no `%{`."""
    if "\0" in value:
        return [(path, NUL_MESSAGE)]
    return [
        (path, INTERPOLATION_MESSAGE.format(seq=seq, what=what))
        for seq, what in _SEQUENCES.items()
        if seq in value
    ][:1]


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
    if app.backups.enabled:
        for name in BACKUP_JOBS:
            if name in app.services:
                problems.append(
                    (
                        ("services", name),
                        f"is reserved by the nomad blueprint while backups are on: the backup "
                        f"job is named {app.name}-{name}, as this service's job would be; "
                        "rename the service",
                    )
                )
    # Every port is a static host port (the spec's env reaches services as name:port), so one
    # port can be used by at most one instance per node.
    users: dict[int, list[tuple[str, int]]] = {}
    for name, svc in app.sorted_services():
        base: tuple[str | int, ...] = ("services", name)
        for i, port in enumerate(svc.ports):
            host = host_port(port)
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
        names = [service_name(app, name)] + [
            service_name(app, name, p.port) for p in svc.ports[1:] if p.expose == "http"
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
            and health_port_of(svc) is None
        ):
            problems.append(
                (
                    (*base, "health", "port"),
                    f"port {health.port} is not among the service's ports; Nomad checks a "
                    "declared port",
                )
            )
        # The env block's values as the task receives them (references resolved); values with a
        # secret in them travel in the Variable, which the client does not expand.
        plain = app.environment(name, placeholders(app), address(app)).plain
        for var, value in sorted(plain.items()):
            problems += _runtime_value((*base, "env", var), value)
        for var in sorted(
            {*svc.env, *svc.secret_env} & {REGISTRY_USERNAME_ENV, REGISTRY_PASSWORD_ENV}
        ):
            where = "env" if var in svc.env else "secret_env"
            problems.append(
                (
                    (*base, where),
                    f"{var} is set by the nomad blueprint (the registry's credentials for the "
                    "image pull); rename the variable",
                )
            )
        for field in ("entrypoint", "command"):
            for i, arg in enumerate(getattr(svc, field) or []):
                problems += _runtime_value((*base, field, i), arg)
        if health is not None and health.type == "http":
            problems += _runtime_value((*base, "health", "path"), health.path)
        elif health is not None and "\0" in health.path:
            problems.append(((*base, "health", "path"), NUL_MESSAGE))
    problems += _check_runs(app)
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


def _check_runs(app: AppSpec) -> list[Problem]:
    """Tasks and schedules: their commands as the client receives them, and job names that
    neither collide with another job of the app nor exceed Nomad's limit."""
    problems: list[Problem] = []
    jobs = {f"{app.name}-{name}": ("services", name) for name in app.services}
    if app.backups.enabled:
        jobs |= {f"{app.name}-{name}": ("backups",) for name in BACKUP_JOBS}
    for kind, runs, job_of in (
        ("tasks", app.tasks, task_job_name),
        ("schedules", app.schedules, schedule_job_name),
    ):
        for name, run in runs.items():
            base: tuple[str | int, ...] = (kind, name)
            for i, arg in enumerate(run.command):
                problems += _runtime_value((*base, "command", i), arg)
            job = job_of(app, name)
            if len(job) > NAME_LIMIT:
                problems.append(
                    (
                        base,
                        f"Nomad job name {job!r} is longer than {NAME_LIMIT} characters; "
                        f"shorten the app or {kind[:-1]} name",
                    )
                )
            if job in jobs:
                other = jobs[job]
                what = (
                    "the backup job" if other == ("backups",) else f"the job of service {other[1]}"
                )
                problems.append(
                    (
                        base,
                        f"its Nomad job would be named {job}, as {what} is; rename the {kind[:-1]}",
                    )
                )
            jobs[job] = base
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
