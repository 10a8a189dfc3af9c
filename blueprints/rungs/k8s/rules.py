"""What an app spec must satisfy on the k8s rung, beyond the spec's own rules."""

from __future__ import annotations

from blueprints.render.single_vm import NUL_MESSAGE, nul_problems
from blueprints.spec import AppSpec, format_path

__all__ = [
    "CRON_JOB_NAME_MAX",
    "JOB_NAME_MAX",
    "NUL_MESSAGE",
    "RESERVED_NAMESPACES",
    "check_app",
    "require_valid",
]

Problem = tuple[tuple[str | int, ...], str]

# Kubernetes' limit on a CronJob's name (a Job's name adds 11 characters): each service with
# volumes is backed up by the CronJob backup-<service> (release.backup_job).
CRON_JOB_NAME_MAX = 52
# Kubernetes' limit on a Job's name (its pods carry it as a label value): a task runs as the Job
# task-<task>-<8 hex of the release> (release.task_job_name).
JOB_NAME_MAX = 63
TASK_NAME_MAX = JOB_NAME_MAX - len("task-") - len("-12345678")
# A schedule runs as the CronJob schedule-<schedule> (release.schedule_job_name), which can
# never be a backup's (backup-<service>, backup-check).
SCHEDULE_NAME_MAX = CRON_JOB_NAME_MAX - len("schedule-")
# Namespaces the cluster itself uses; the app's namespace is its name.
RESERVED_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease", "cert-manager")


def check_app(app: AppSpec) -> list[Problem]:
    """Rules of the k8s blueprint on top of the spec's own, as (field path, message)."""
    problems: list[Problem] = []
    if app.name in RESERVED_NAMESPACES:
        problems.append(
            (
                ("name",),
                f"{app.name!r} is the name of a namespace the cluster uses itself, and the app "
                "runs in a namespace named after it; choose another name",
            )
        )
    for name, svc in app.sorted_services():
        base: tuple[str | int, ...] = ("services", name)
        public = f"{name}-public"
        if svc.public_tcp_ports and public in app.services:
            problems.append(
                (
                    (*base, "ports"),
                    f"its expose: tcp ports become a Service named {public}, which is also the "
                    "name of another service; rename one of them",
                )
            )
        problems += nul_problems(base, svc)
        if app.backups.enabled and svc.stateful:
            job = f"backup-{name}"
            if name == "check":
                problems.append(
                    (
                        base,
                        "its data is backed up by a CronJob named backup-check, which is also "
                        "the name of the weekly check of the backups; rename the service",
                    )
                )
            elif len(job) > CRON_JOB_NAME_MAX:
                problems.append(
                    (
                        base,
                        f"its data is backed up by a CronJob named {job}, and Kubernetes "
                        f"limits CronJob names to {CRON_JOB_NAME_MAX} characters; shorten the "
                        f"service name to {CRON_JOB_NAME_MAX - len('backup-')} characters or fewer",
                    )
                )
    problems += _run_problems(app)
    return problems


def _run_problems(app: AppSpec) -> list[Problem]:
    """Tasks' and schedules' names must fit their Job's and CronJob's; a process receives no
    NUL (the entrypoint and the run commands, beside nul_problems' fields)."""
    problems: list[Problem] = []
    for name, svc in app.sorted_services():
        problems += [
            (("services", name, "entrypoint", i), NUL_MESSAGE)
            for i, arg in enumerate(svc.entrypoint or [])
            if "\0" in arg
        ]
    limits = (
        ("tasks", app.tasks, "Job", "task-{}-<8 hex of the release>", JOB_NAME_MAX, TASK_NAME_MAX),
        (
            "schedules",
            app.schedules,
            "CronJob",
            "schedule-{}",
            CRON_JOB_NAME_MAX,
            SCHEDULE_NAME_MAX,
        ),
    )
    for field, runs, kind, pattern, limit, most in limits:
        for name, run in runs.items():
            if len(name) > most:
                problems.append(
                    (
                        (field, name),
                        f"it runs as the {kind} {pattern.format(name)}, and Kubernetes limits "
                        f"{kind} names to {limit} characters; shorten the name to {most} "
                        "characters or fewer",
                    )
                )
            problems += [
                ((field, name, "command", i), NUL_MESSAGE)
                for i, arg in enumerate(run.command)
                if "\0" in arg
            ]
    return problems


def require_valid(app: AppSpec) -> None:
    problems = check_app(app)
    if problems:
        raise ValueError("\n".join(f"{format_path(path)}: {msg}" for path, msg in problems))
