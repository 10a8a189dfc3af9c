"""The nomad rung's release: the app as Nomad jobs and Variables, sent through Nomad's API.

Each service is a job of its own (`<app>-<service>`, one group, one task), so a release of one
service is a Nomad deployment of that job alone: health-gated, one instance at a time, reverted
when it fails, and the other services' jobs are not even submitted. The ingress (Traefik) is one
more job. A service's secret values are a Nomad Variable that only its task may read; the job
holds no secret.

A service reaches by name the services it depends on and those it names in its env values or
command: its task gets an /etc/hosts rendered from Nomad's service catalogue with those services
only, so an instance of one service moving restarts only the tasks that talk to it, and each
job grows with its own references, not with the size of the app.

With backups on and a bucket set, two periodic batch jobs run blueprints-backup (the node-side
backup tool every VM rung shares) on the data node: `<app>-backup` on the spec's schedule and
`<app>-backup-check` weekly. Each is one raw_exec task (root on the host: it needs restic, the
volume's directories and `docker exec` into the services' containers); its script, its
configuration and its secrets arrive as templates, the secrets (the repository password and the
bucket's keys) from a Nomad Variable of its own, so the jobs hold no secret either.

Every spec value reaching an HCL file passes the `hcl` filter (a JSON string literal with `${`
and `%{` escaped); values the Nomad client would expand at run time are refused by the rules.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from blueprints.backup import backup_source
from blueprints.backup.node_files import Runtime, backup_cron, check_cron, node_config
from blueprints.backup.storage import Storage
from blueprints.release.bundle import digest
from blueprints.render.common import render_template
from blueprints.render.vm import secret_values
from blueprints.rungs.nomad.rules import (
    BACKUP_JOBS,
    NODE_COUNT,
    NOMAD_HTTP,
    REGISTRY_PASSWORD_ENV,
    REGISTRY_USERNAME_ENV,
    address,
    check_nomad,
    health_port_of,
    host_port,
    placeholders,
    schedule_job_name,
    service_name,
    task_job_name,
)
from blueprints.spec import AppSpec, File, Service, format_path, references

DATACENTER = "dc1"
TRAEFIK_IMAGE = "traefik:v3.5.3"
WAIT_IMAGE = "busybox:1.37.0"
# The ingress job; an underscore cannot appear in an app name, so no app job can collide.
INGRESS_JOB = "blueprints_ingress"
# Host volume of the ingress's ACME account and certificates (on the data volume).
INGRESS_VOLUME = "blueprints_traefik"
DATA_META = "blueprints_data"
# Nomad schedules CPU in MHz. The spec's cores are converted at 2000 MHz per core, a floor for the
# default server types (Hetzner cx23, AWS t3.medium both run at 2.0 GHz or more), so what the spec
# reserves fits on the node. It is a reservation for placement and a relative weight under
# contention (docker CPU shares), not a hard cap.
MHZ_PER_CORE = 2000
KILL_TIMEOUT_SECONDS = 30
# Nomad's own defaults for service jobs, written out so the job says what it does.
RESTART = {"attempts": 2, "interval": "30m", "delay": "15s", "mode": "fail"}
RESCHEDULE_MAX_DELAY = "1h"
# A deployment: each new instance healthy this long before the next; an instance not healthy
# within the deadline fails the deployment, which then reverts.
UPDATE = {"min_healthy_time": "10s", "healthy_deadline": "5m", "progress_deadline": "10m"}
# How long `pulumi up` waits for one job's deployment (the provider's default is 5 minutes, less
# than one slow instance may take): every instance's healthy deadline, the canary's included,
# plus as long again for the first placement.
DEPLOY_TIMEOUT_MINUTES = int(UPDATE["healthy_deadline"].removesuffix("m")) * (NODE_COUNT + 2)


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


def job_name(app: AppSpec, name: str) -> str:
    """The Nomad job of one service."""
    return f"{app.name}-{name}"


def variable_path(app: AppSpec, name: str) -> str:
    """The Nomad Variable of one service's secrets: readable by that service's task alone."""
    return f"nomad/jobs/{job_name(app, name)}/{name}/{name}"


def run_variable_path(job: str) -> str:
    """The Variable of a task's or schedule's job (a copy of its service's secrets): readable by
    that job's tasks alone (a dispatched or periodic run is a child job, whose identity is its
    parent's)."""
    return f"nomad/jobs/{job}"


def _port_label(port: int) -> str:
    return f"p{port}"


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
    """Nomad probes the port's label: the host side of the mapping, which reaches the
    container's target port."""
    health = svc.health
    if health is None:
        return None
    port = health_port_of(svc)
    if port is None:
        return None
    kind = "tcp" if health.type == "command" else health.type
    check: dict[str, Any] = {
        "type": kind,
        "port": _port_label(port.port),
        "interval": health.interval,
        "timeout": health.timeout,
        "limit": health.retries,
        "grace": health.start_period,
    }
    if kind == "http":
        check["path"] = health.path
    return check


_WORD = re.compile(r"[A-Za-z0-9_-]+")


def reached(app: AppSpec, name: str, svc: Service) -> list[str]:
    """The services this one reaches by name: its dependencies, every service its env values or
    files reference (${services.NAME.host}), and every other service with a port whose name
    appears as a word in its env values, entrypoint or command (`postgres`,
    `redis://redis:6379/0`)."""
    words: set[str] = set()
    named: set[str] = set()
    for text in [*svc.env.values(), *(f.text for f in svc.files)]:
        named.update(r.name for r in references(text) if r.kind == "service")
    for text in [*svc.env.values(), *(svc.entrypoint or []), *(svc.command or [])]:
        words.update(_WORD.findall(text))
    names = set(svc.depends_on) | named | {w for w in words if w in app.services}
    return sorted(n for n in names if n != name and app.services[n].ports)


def _hosts_template(app: AppSpec, name: str, svc: Service) -> str | None:
    """An /etc/hosts from Nomad's service catalogue with the services this one reaches."""
    others = reached(app, name, svc)
    if not others:
        return None
    lines = ["127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n"]
    for other in others:
        lines.append(
            f'{{{{ range nomadService "{service_name(app, other)}" }}}}'
            f"{{{{ .Address }}}} {other}\n{{{{ end }}}}"
        )
    return "".join(lines)


def _dependency_template(app: AppSpec, deps: list[str]) -> str:
    return "".join(
        f'{{{{ range nomadService "{service_name(app, dep)}" }}}}{dep}\n{{{{ end }}}}'
        for dep in deps
    )


# Waits until each dependency named in the arguments has an instance in the catalogue.
WAIT_SCRIPT = (
    'for dep in "$@"; do '
    'until grep -qx "$dep" /local/dependencies; do echo "waiting for $dep"; sleep 2; done; '
    "done"
)

# Items of a service's Variable besides its secret env vars (named after the variable): each
# has a character no env var name has, so none can take another's item.
REGISTRY_USERNAME_ITEM = "registry-username"
REGISTRY_PASSWORD_ITEM = "registry-password"
FILES_DIR = "files"


def file_item(file: File) -> str:
    """The Variable item holding a secret file's content."""
    return f"file-{hashlib.sha256(file.path.encode()).hexdigest()[:12]}"


def secret_items(app: AppSpec, name: str, secrets: Mapping[str, str]) -> dict[str, str]:
    """The items of one service's Variable: every env var with a secret in it (secret_env and
    env values referencing ${secrets.NAME}, resolved), the content of every secret file, and the
    credentials of the registry its image comes from. Empty: the service has no Variable."""
    svc = app.services[name]
    secret_values(secrets, app.secret_names(), name)  # a missing secret, named
    items = dict(app.environment(name, secrets, address(app)).secret)
    for f in svc.files:
        if f.secret:
            items[file_item(f)] = app.file_text(f, secrets, address(app))
    registry = app.registry_for(svc.image)
    if registry is not None:
        username, password = app.registry_auth(secrets)[registry]
        items[REGISTRY_USERNAME_ITEM] = username
        items[REGISTRY_PASSWORD_ITEM] = password
    return dict(sorted(items.items()))


def has_secrets(app: AppSpec, name: str) -> bool:
    """Whether the service (and each task or schedule running with it) has a Variable."""
    return bool(secret_items(app, name, placeholders(app)))


def _secret_template(app: AppSpec, name: str, path: str) -> str | None:
    # toJSON writes a JSON string (Go's encoder: \" \\ \n \t and \uXXXX, also for < > & and
    # U+2028/9); Nomad reads the env file with hashicorp/go-envparse, whose double-quoted values
    # take exactly those escapes (envparse.go, parseLine), so any value arrives as it was stored.
    items = secret_items(app, name, placeholders(app))
    env = sorted(app.environment(name, placeholders(app), address(app)).secret)
    lines = [f"{var}={{{{ .{var} | toJSON }}}}\n" for var in env]
    if REGISTRY_PASSWORD_ITEM in items:
        lines += [
            f'{var}={{{{ index . "{item}" | toJSON }}}}\n'
            for var, item in (
                (REGISTRY_USERNAME_ENV, REGISTRY_USERNAME_ITEM),
                (REGISTRY_PASSWORD_ENV, REGISTRY_PASSWORD_ITEM),
            )
        ]
    if not lines:
        return None
    return "".join([f'{{{{ with nomadVar "{path}" }}}}\n', *lines, "{{ end }}\n"])


def _delimiters(text: str) -> tuple[str, str]:
    """Template delimiters that do not occur in text, so that none of it (a `{{` in an nginx or
    Go config, say) is read as a template action: the file arrives as written."""
    left = "\u00ab"
    while left in text:
        left += "\u00ab"
    return left, "\u00bb" * len(left)


def _file_templates(app: AppSpec, name: str, svc: Service, path: str) -> list[dict[str, Any]]:
    """One template per file, in the task's local/ (plain: its content in the job) or secrets/
    directory (secret: its content read from the Variable, never in the job)."""
    out = []
    for f in svc.files:
        if f.secret:
            destination = f"secrets/{FILES_DIR}/{f.key}"
            data = (
                f'{{{{ with nomadVar "{path}" }}}}{{{{ index . "{file_item(f)}" }}}}{{{{ end }}}}'
            )
            delimiters = None
            # A new value is a new job version (the digest in its meta), as for the env.
            change_mode = "noop"
        else:
            destination = f"local/{FILES_DIR}/{f.key}"
            data = app.file_text(f, placeholders(app), address(app))
            delimiters = _delimiters(data)
            change_mode = "restart"
        out.append(
            {
                "data": data,
                "destination": destination,
                "env": False,
                "perms": f.mode,
                "delimiters": delimiters,
                "change_mode": change_mode,
                "target": f.path,
            }
        )
    return out


def port_instances(app: AppSpec) -> dict[int, int]:
    """Static host port -> how many instances of the whole app listen on it (at most one per
    node)."""
    counts: dict[int, int] = {}
    for _, svc in app.sorted_services():
        for port in svc.ports:
            counts[host_port(port)] = counts.get(host_port(port), 0) + svc.replicas
    return counts


def _canary(svc: Service, instances: Mapping[int, int]) -> bool:
    """A canary needs a node where the new instance fits beside the old ones: never for a
    stateful service (one node, one volume), and with static ports only while some node has
    every one of its ports free, counting the other services on the same ports."""
    if svc.stateful:
        return False
    return all(instances[host_port(p)] < NODE_COUNT for p in svc.ports)


def task_body(
    app: AppSpec,
    name: str,
    path: str,
    command: list[str] | None = None,
    ports: bool = True,
) -> dict[str, Any]:
    """What runs a service's container (the service's own task, or a task's or a schedule's with
    `command`): image, entrypoint, command, env, secrets (from the Variable at `path`), files,
    volumes, the hosts it reaches and its resources."""
    svc = app.services[name]
    templates = []
    secret = _secret_template(app, name, path)
    if secret is not None:
        templates.append(
            {
                "data": secret,
                "destination": "secrets/env",
                "env": True,
                # A new value is a new job version (its digest is in the job's meta), so it
                # rolls out as a deployment; the running tasks are not restarted behind its back.
                "change_mode": "noop",
            }
        )
    hosts = _hosts_template(app, name, svc)
    if hosts is not None:
        templates.append(
            {"data": hosts, "destination": "local/hosts", "env": False, "change_mode": "restart"}
        )
    files = _file_templates(app, name, svc, path)
    return {
        "name": name,
        "image": svc.image,
        "entrypoint": list(svc.entrypoint or []),
        "command": list(svc.command or []) if command is None else list(command),
        # The docker driver's auth block, filled in by the Nomad client from the task's env (the
        # secrets/env template): of the ways the driver takes credentials (the job itself, the
        # client's docker config or a credential helper, both node files), the only one that
        # keeps them out of the job and off the machines' bootstrap. Nomad cannot keep them out
        # of the container's env as well (hashicorp/nomad#15384).
        "auth": app.registry_for(svc.image) is not None,
        "auth_env": (REGISTRY_USERNAME_ENV, REGISTRY_PASSWORD_ENV),
        "port_labels": [_port_label(p.port) for p in svc.ports] if ports else [],
        "hosts": hosts is not None,
        "env": sorted(app.environment(name, placeholders(app), address(app)).plain.items()),
        "templates": templates + files,
        "files": [{"source": t["destination"], "target": t["target"]} for t in files],
        "mounts": [
            {"volume": m.volume, "destination": m.path, "read_only": m.read_only}
            for m in svc.volumes
        ],
        "cpu": math.ceil(svc.cpu * MHZ_PER_CORE),
        "memory": svc.memory,
    }


def job_group(
    app: AppSpec, name: str, svc: Service, instances: Mapping[int, int] | None = None
) -> dict[str, Any]:
    """One service's group as plain data (what the template prints)."""
    services = []
    first_tags = _router_tags(app, name, svc.ports[0]) if svc.ports else []
    if svc.ports and svc.ports[0].expose != "http":
        first_tags = []
    services.append(
        {
            "name": service_name(app, name),
            "port": _port_label(svc.ports[0].port) if svc.ports else None,
            "tags": first_tags,
            "check": _check(svc),
        }
    )
    for port in svc.ports[1:]:
        if port.expose == "http":
            services.append(
                {
                    "name": service_name(app, name, port.port),
                    "port": _port_label(port.port),
                    "tags": _router_tags(app, name, port),
                    "check": None,
                }
            )
    deps = sorted(svc.depends_on)
    return {
        "name": name,
        "count": svc.replicas,
        "canary": _canary(svc, port_instances(app) if instances is None else instances),
        "distinct": bool(svc.ports),
        "data_node": svc.stateful,
        # The static host port is the service's port (a tcp port's public_port), mapped to the
        # port the process listens on in the container.
        "ports": [
            {"label": _port_label(p.port), "static": host_port(p), "to": p.target}
            for p in svc.ports
        ],
        "volumes": _group_volumes(svc),
        "services": services,
        "wait": {"deps": deps, "template": _dependency_template(app, deps)} if deps else None,
        "task": task_body(app, name, variable_path(app, name)),
    }


def _group_volumes(svc: Service) -> list[dict[str, Any]]:
    return [{"name": m.volume, "source": m.volume, "read_only": m.read_only} for m in svc.volumes]


def _checked(app: AppSpec) -> None:
    problems = check_nomad(app)
    if problems:
        raise ValueError("\n".join(f"{format_path(path)}: {msg}" for path, msg in problems))


def render_service_job(
    app: AppSpec,
    name: str,
    timing: Timing,
    secrets_digest: str | None = None,
    instances: Mapping[int, int] | None = None,
) -> str:
    """One service's Nomad job (HCL); no secret value in it. `secrets_digest` (a keyed digest of
    the service's secret values) is in the job's meta, so new values make a new job version."""
    return _t(
        "service.nomad.hcl.j2",
        job=job_name(app, name),
        app=app.name,
        datacenter=DATACENTER,
        secrets_digest=secrets_digest,
        g=(group := job_group(app, name, app.services[name], instances)),
        t=group["task"],
        update=UPDATE,
        timing=timing,
        restart=RESTART,
        max_delay=RESCHEDULE_MAX_DELAY,
        kill_timeout=KILL_TIMEOUT_SECONDS,
        wait_image=WAIT_IMAGE,
        wait_script=WAIT_SCRIPT,
        data_meta=DATA_META,
    )


def secrets_digest(key: str, app: AppSpec, name: str, secrets: Mapping[str, str]) -> str | None:
    """A digest of one service's secret values (its Variable's items), keyed with the stack's
    deploy key (so the values cannot be guessed from it); None for a service without secrets."""
    items = secret_items(app, name, secrets)
    if not items:
        return None
    return digest(key, "nomad", name, items)


def render_jobs(
    app: AppSpec,
    timing: Timing,
    digests: Mapping[str, str | None] | None = None,
    only: Collection[str] | None = None,
) -> dict[str, str]:
    """Job id -> HCL, one job per service (or per service named in `only`), in name order;
    `digests`: service -> its secrets' digest (secrets_digest)."""
    _checked(app)
    instances = port_instances(app)
    wanted = None if only is None else set(only)
    return {
        job_name(app, name): render_service_job(
            app, name, timing, (digests or {}).get(name), instances
        )
        for name, _ in app.sorted_services()
        if wanted is None or name in wanted
    }


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
        update=UPDATE,
        restart=RESTART,
        max_delay=RESCHEDULE_MAX_DELAY,
        http_port=NOMAD_HTTP,
    )


# --- tasks and schedules -------------------------------------------------------------------------

# A run's limit is kept inside Nomad: a watchdog task beside the run's own sleeps for the timeout
# and then fails, and Nomad kills the siblings of a failed task; the run's task is the group's
# leader, so when it ends first the watchdog is stopped with it (not failed). Its name has an
# underscore, which no service (a DNS label, the run's task's name) can have.
WATCHDOG_TASK = "blueprints_timeout"
WATCHDOG_SCRIPT = 'sleep "$1"; echo "the run took longer than its timeout of $1 s" >&2; exit 1'
# Meta of each dispatched run of a task: the release it belongs to.
RELEASE_META = "blueprints_release"


def _run_job(
    app: AppSpec, kind: str, name: str, job: str, run: Any, secrets_digest: str | None
) -> str:
    svc = app.services[run.service]
    return _t(
        "run.nomad.hcl.j2",
        job=job,
        app=app.name,
        kind=kind,
        name=name,
        service=run.service,
        cron=getattr(run, "cron", None),
        timeout=run.timeout,
        release_meta=RELEASE_META,
        datacenter=DATACENTER,
        data_meta=DATA_META,
        secrets_digest=secrets_digest,
        data_node=svc.stateful,
        volumes=_group_volumes(svc),
        t=task_body(app, run.service, run_variable_path(job), run.command, ports=False),
        kill_timeout=KILL_TIMEOUT_SECONDS,
        watchdog=WATCHDOG_TASK,
        wait_image=WAIT_IMAGE,
        watchdog_script=WATCHDOG_SCRIPT,
    )


def render_run_jobs(
    app: AppSpec, digests: Mapping[str, str | None] | None = None
) -> dict[str, str]:
    """Job id -> HCL of every task (a parameterized batch job, dispatched once per release) and
    every schedule (a periodic batch job), tasks first in the order written. `digests`: service
    -> its secrets' digest; a run's job carries its service's, so new values are a new job."""
    _checked(app)
    out = {}
    for kind, runs, job_of in (
        ("task", app.tasks, task_job_name),
        ("schedule", app.schedules, schedule_job_name),
    ):
        for name, run in runs.items():
            job = job_of(app, name)
            out[job] = _run_job(app, kind, name, job, run, (digests or {}).get(run.service))
    return out


def run_services(app: AppSpec) -> dict[str, str]:
    """Job id of each task and schedule -> the service it runs with."""
    out = {task_job_name(app, n): t.service for n, t in app.tasks.items()}
    return out | {schedule_job_name(app, n): s.service for n, s in app.schedules.items()}


def before_tasks(app: AppSpec) -> set[str]:
    """Services whose jobs are released before the tasks run: what the tasks' services depend
    on (a migration needs its database), directly or not. Every other service's job waits for
    the tasks."""
    out: set[str] = set()
    pending = [d for t in app.tasks.values() for d in app.services[t.service].depends_on]
    while pending:
        name = pending.pop()
        if name not in out:
            out.add(name)
            pending.extend(app.services[name].depends_on)
    return out


def variables(app: AppSpec, secrets: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """Variable path -> items, for every service with secrets and every task and schedule of
    such a service (a copy of its items under the run's job)."""
    out = {
        variable_path(app, name): secret_items(app, name, secrets)
        for name, _ in app.sorted_services()
        if has_secrets(app, name)
    }
    for job, service in run_services(app).items():
        if has_secrets(app, service):
            out[run_variable_path(job)] = secret_items(app, service, secrets)
    return out


# --- backups -------------------------------------------------------------------------------------

# The one task of each backup job, and the items of the jobs' Variables.
BACKUP_TASK = "backup"
PASSWORD_ITEM = "password"
STORAGE_ITEM = "storage"
# The task's files, relative to its task directory (raw_exec runs the command there); the secret
# ones in its secrets directory, which only root may read.
SCRIPT_FILE = "local/blueprints-backup"
CONFIG_FILE = "local/config.json"
PASSWORD_FILE = "backup-password"
STORAGE_FILE = "backup-storage.env"
# Delimiters of the templates that carry the script and its configuration, which neither holds:
# the configuration is ASCII-only JSON and the script is checked when rendered, so every `{{`
# in them (a dump command's, say) reaches the file as written.
LEFT_DELIMITER, RIGHT_DELIMITER = "\u00ab", "\u00bb"
# blueprints-backup reads its secret files by absolute path. A raw_exec task sees the host's
# filesystem, where its secrets directory is NOMAD_SECRETS_DIR, a variable of the task's
# environment, which is what `env` reads in a template.
SECRETS_DIR = f'{LEFT_DELIMITER}env "NOMAD_SECRETS_DIR"{RIGHT_DELIMITER}'
# What the scheduler reserves for a run on the data node (restic's index and Python).
BACKUP_CPU = 100
BACKUP_MEMORY = 512
# Nomad stops a task with SIGINT first: blueprints-backup then resumes any service it paused.
BACKUP_KILL_TIMEOUT_SECONDS = 60

# Nomad's docker driver names a task's container `<task>-<allocation id>`, and a service's task
# is named after the service: its running container on this node is found by that name, anchored
# on both sides so that `web` never matches the containers of a service `web-admin`.
ALLOC_ID = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def _containers(service: str, status: str) -> str:
    """sh: the ids of the service's containers in this state (`service`: a shell word)."""
    return f'docker ps --quiet --filter status={status} --filter "name=^/?{service}-{ALLOC_ID}\\$"'


def _none_running(service: str) -> str:
    """sh: fail, saying so, when `c` (the ids found) is empty."""
    return (
        f'[ -n "$c" ] || {{ echo "no running container of {service} on this node (Nomad names '
        f'it {service}-<allocation id>); is its job running?" >&2; exit 1; }}; '
    )


# sh -c SCRIPT sh SERVICE COMMAND...: runs COMMAND in the service's running container, stdin
# attached.
EXEC_SCRIPT = (
    f"c=$({_containers('$1', 'running')}) || exit 1; "
    'c=$(echo "$c" | head -n 1); '
    f"{_none_running('$1')}"
    'shift; exec docker exec -i "$c" "$@"'
)
# sh -c SCRIPT sh SERVICE...: pauses the running containers of each service, and fails when one
# has none (blueprints-backup then resumes the others and takes no snapshot).
PAUSE_SCRIPT = (
    'for s in "$@"; do '
    f"c=$({_containers('$s', 'running')}) || exit 1; "
    f"{_none_running('$s')}"
    'echo "$c" | xargs docker pause >/dev/null || exit 1; '
    "done"
)
# sh -c SCRIPT sh SERVICE...: unpauses whatever of each service is paused, all of them even
# when one fails.
RESUME_SCRIPT = (
    'failed=0; for s in "$@"; do '
    f"c=$({_containers('$s', 'paused')}) || {{ failed=1; continue; }}; "
    'if [ -n "$c" ]; then echo "$c" | xargs docker unpause >/dev/null || failed=1; fi; '
    'done; exit "$failed"'
)


def backup_runtime() -> Runtime:
    """How blueprints-backup reaches the services on the data node. No stop or start: the
    scheduler owns the app, so a restore is the runbook's `nomad job stop`/`run`, not a node
    command."""
    return Runtime(
        exec=lambda service: ["sh", "-c", EXEC_SCRIPT, "sh", service],
        pause=lambda services: ["sh", "-c", PAUSE_SCRIPT, "sh", *services],
        resume=lambda services: ["sh", "-c", RESUME_SCRIPT, "sh", *services],
    )


def backup_job_name(app: AppSpec) -> str:
    """The periodic backup job (a spec service cannot take the name: rules.BACKUP_JOBS)."""
    return f"{app.name}-{BACKUP_JOBS[0]}"


def check_job_name(app: AppSpec) -> str:
    """The weekly check of the backups."""
    return f"{app.name}-{BACKUP_JOBS[1]}"


def backup_variable_path(job: str) -> str:
    """The Variable of one backup job's secrets: readable by that job's task alone (a periodic
    run is a child job, whose identity is its parent's)."""
    return f"nomad/jobs/{job}"


def backup_config_template(app: AppSpec, storage: Storage, name: str) -> str:
    """blueprints-backup's configuration as a template (delimiters LEFT_DELIMITER and
    RIGHT_DELIMITER): node_config's JSON, ASCII only, with the two secret files in the task's
    secrets directory. `name`: the restic host the snapshots are tagged with."""
    files = {"password_file": PASSWORD_FILE, "env_file": STORAGE_FILE}
    config = node_config(
        app,
        storage,
        backup_runtime(),
        name=name,
        password_file=f"/{PASSWORD_FILE}",
        env_file=f"/{STORAGE_FILE}",
    )
    lines = (json.dumps(config, sort_keys=True, indent=2, ensure_ascii=True) + "\n").splitlines(
        keepends=True
    )
    replaced = []
    for i, line in enumerate(lines):
        for key, file in files.items():
            # A top-level key: anything nested is indented further.
            if line.startswith(f'  "{key}": '):
                comma = "," if line.endswith(",\n") else ""
                lines[i] = f'  "{key}": "{SECRETS_DIR}/{file}"{comma}\n'
                replaced.append(key)
    if sorted(replaced) != sorted(files):  # pragma: no cover - node_config names both
        raise ValueError(f"the backup configuration holds {replaced}, not {sorted(files)}")
    return "".join(lines)


def _script_template() -> str:
    text = backup_source()
    if LEFT_DELIMITER in text or RIGHT_DELIMITER in text:
        raise ValueError(
            f"blueprints-backup holds {LEFT_DELIMITER!r} or {RIGHT_DELIMITER!r}, the delimiters "
            "of the template that carries it on nomad; choose others in release.py"
        )
    return text


def _variable_template(job: str, item: str, end: str = "") -> str:
    path = backup_variable_path(job)
    return f'{{{{ with nomadVar "{path}" }}}}{{{{ .{item} }}}}{end}{{{{ end }}}}'


def backup_task_templates(
    app: AppSpec, storage: Storage, job: str, name: str
) -> list[dict[str, Any]]:
    """The backup task's files: the script, its configuration and its two secret files."""
    delimiters = {"left_delimiter": LEFT_DELIMITER, "right_delimiter": RIGHT_DELIMITER}
    return [
        {"data": _script_template(), "destination": SCRIPT_FILE, "perms": "0755", **delimiters},
        {
            "data": backup_config_template(app, storage, name),
            "destination": CONFIG_FILE,
            "perms": "0644",
            **delimiters,
        },
        *(
            {
                "data": _variable_template(job, item, end),
                "destination": f"secrets/{file}",
                "perms": "0600",
                # A missing item fails the run instead of writing "<no value>".
                "error_on_missing_key": True,
            }
            # (the storage text ends with its own newline)
            for item, file, end in (
                (PASSWORD_ITEM, PASSWORD_FILE, "\n"),
                (STORAGE_ITEM, STORAGE_FILE, ""),
            )
        ),
    ]


def render_backup_job(app: AppSpec, storage: Storage, name: str, verb: str) -> str:
    """One periodic backup job (HCL): `verb` backup (the spec's schedule) or check (weekly). No
    secret in it: the task reads them from its job's Variable."""
    job = backup_job_name(app) if verb == "backup" else check_job_name(app)
    return _t(
        "backup.nomad.hcl.j2",
        job=job,
        app=app.name,
        verb=verb,
        schedule=app.backups.schedule if verb == "backup" else "weekly",
        cron=backup_cron(app.backups) if verb == "backup" else check_cron(app.backups),
        datacenter=DATACENTER,
        data_meta=DATA_META,
        task=BACKUP_TASK,
        args=[SCRIPT_FILE, "--config", CONFIG_FILE, verb],
        templates=backup_task_templates(app, storage, job, name),
        cpu=BACKUP_CPU,
        memory=BACKUP_MEMORY,
        kill_timeout=BACKUP_KILL_TIMEOUT_SECONDS,
    )


def render_backup_jobs(app: AppSpec, storage: Storage, name: str) -> dict[str, str]:
    """Job id -> HCL of both backup jobs; `name`: the restic host (the app and stack)."""
    _checked(app)
    return {
        backup_job_name(app): render_backup_job(app, storage, name, "backup"),
        check_job_name(app): render_backup_job(app, storage, name, "check"),
    }


def backup_variables(
    app: AppSpec, storage: Storage, password: str, secret_key: str
) -> dict[str, dict[str, str]]:
    """Variable path -> items, one Variable per backup job: the repository password and the
    bucket's keys as blueprints-backup's KEY=VALUE file."""
    if not password or any(c in password for c in "\n\r\0"):
        raise ValueError("the backup repository password is empty or holds a line break")
    items = {PASSWORD_ITEM: password, STORAGE_ITEM: storage.env_text(secret_key)}
    jobs = (backup_job_name(app), check_job_name(app))
    return {backup_variable_path(job): dict(items) for job in jobs}


def _t(template: str, **values: object) -> str:
    return render_template(f"nomad/{template}", **values)
