"""What the spec must satisfy on the nomad rung, beyond the spec's own rules.

Each rule gives (field path, message); `blueprints validate` and the program print them with the
spec's file name.
"""

from __future__ import annotations

from typing import Any

from blueprints.spec import AppSpec

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
            problems += _runtime_value((*base, "env", var), value)
        for i, arg in enumerate(svc.command or []):
            problems += _runtime_value((*base, "command", i), arg)
        if health is not None and health.type == "http":
            problems += _runtime_value((*base, "health", "path"), health.path)
        elif health is not None and "\0" in health.path:
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
