"""What a node holding the data volume needs to back it up: blueprints-backup, its
configuration, the systemd units that run it (single-vm, compose) and its root-only secret files.

The layout is the one every VM rung shares: the data volume at /srv/data, one directory per
spec volume. What differs per rung is how a command reaches a service's running container
(`Runtime`): `docker exec` into `<svc>-1` on single-vm, `app-compose exec` on compose, the
container Nomad named `<task>-<alloc id>` on nomad.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from blueprints.backup import backup_source
from blueprints.backup.storage import Storage
from blueprints.render.common import dump_json, render_template
from blueprints.spec import AppSpec, Backups

DATA = "/srv/data"
# Release files and secret files (the release agent's allowed roots).
SCRIPT = "/usr/local/lib/blueprints/app/blueprints-backup"
CONFIG = "/etc/blueprints/backup/config.json"
PASSWORD_FILE = "/etc/blueprints/secrets/backup-password"
STORAGE_FILE = "/etc/blueprints/secrets/backup-storage.env"
CACHE_DIR = "/var/cache/blueprints-backup"
UNIT = "blueprints-backup"
CHECK_UNIT = "blueprints-backup-check"
# On the volume (so restores are renames), never backed up themselves.
STAGING = f"{DATA}/.blueprints-dumps"
SCRATCH = f"{DATA}/.blueprints-restore"
# The release state (its secrets documents included), a filesystem's own directory, and a
# restore's working directories.
EXCLUDE = (f"{DATA}/.blueprints", f"{DATA}/lost+found", SCRATCH)
# Where the weekly check runs relative to the backup: on Sunday, this many hours later.
CHECK_DELAY_HOURS = 2


@dataclass(frozen=True)
class Runtime:
    """How commands reach the app on one rung's node."""

    # argv prefix that runs a command inside the service's running container, stdin attached.
    exec: Callable[[str], list[str]]
    # Freeze and thaw the containers of the given services (those backed up as files).
    pause: Callable[[list[str]], list[str]]
    resume: Callable[[list[str]], list[str]]
    # Stop and start the whole app around a restore; None where the rung's restore is not a
    # node command (the scheduler owns the app).
    stop: list[str] | None = None
    start: list[str] | None = None


def volume_dir(volume: str) -> str:
    return f"{DATA}/{volume}"


def dumped(app: AppSpec) -> list[str]:
    """Services backed up by their dump, by name."""
    return [name for name, svc in app.sorted_services() if svc.backup is not None]


def paused(app: AppSpec) -> list[str]:
    """Services backed up as files: those with volumes and no dump."""
    return [name for name, svc in app.sorted_services() if svc.volumes and svc.backup is None]


def node_config(
    app: AppSpec,
    storage: Storage,
    runtime: Runtime,
    *,
    name: str,
    password_file: str = PASSWORD_FILE,
    env_file: str = STORAGE_FILE,
) -> dict[str, object]:
    """blueprints-backup's configuration (no secret: it names the files that hold them)."""
    files_only = paused(app)
    return {
        "name": name,
        "repository": storage.repository,
        "password_file": password_file,
        "env_file": env_file,
        "paths": [DATA],
        "exclude": list(EXCLUDE),
        "staging": STAGING,
        "scratch": SCRATCH,
        "volumes": [volume_dir(v) for v in sorted(app.volumes)],
        "dumps": [
            {
                "service": svc_name,
                "exec": runtime.exec(svc_name),
                "dump": list(svc.backup.dump),
                "restore": list(svc.backup.restore),
                "volumes": sorted(volume_dir(m.volume) for m in svc.volumes),
            }
            for svc_name, svc in app.sorted_services()
            if svc.backup is not None
        ],
        "pause": runtime.pause(files_only) if files_only else None,
        "resume": runtime.resume(files_only) if files_only else None,
        "stop": runtime.stop,
        "start": runtime.start,
        "keep": app.backups.keep,
        "cache_dir": CACHE_DIR,
    }


def backup_calendar(backups: Backups) -> str:
    """systemd OnCalendar of the spec's schedule (UTC)."""
    if backups.schedule == "hourly":
        return f"*-*-* *:{backups.at.split(':')[1]}:00 UTC"
    if backups.schedule == "daily":
        return f"*-*-* {backups.at}:00 UTC"
    return f"Sun *-*-* {backups.at}:00 UTC"


def check_time(backups: Backups) -> tuple[int, int]:
    """(hour, minute) UTC of the weekly check, on Sunday: CHECK_DELAY_HOURS after the backup's
    time of day, and with an hourly schedule half an hour off the backups' minute too (restic's
    check and a backup's prune each lock the repository for themselves)."""
    hour, minute = (int(p) for p in backups.at.split(":"))
    if backups.schedule == "hourly":
        minute = (minute + 30) % 60
    return (hour + CHECK_DELAY_HOURS) % 24, minute


def check_calendar(backups: Backups) -> str:
    """The weekly check as a systemd calendar (see check_time)."""
    hour, minute = check_time(backups)
    return f"Sun *-*-* {hour:02d}:{minute:02d}:00 UTC"


def backup_cron(backups: Backups) -> str:
    """The spec's schedule as a cron expression (minute hour day month weekday, UTC), for the
    schedulers' periodic jobs: when backup_calendar runs the VM rungs' timer."""
    hour, minute = (int(p) for p in backups.at.split(":"))
    if backups.schedule == "hourly":
        return f"{minute} * * * *"
    if backups.schedule == "daily":
        return f"{minute} {hour} * * *"
    return f"{minute} {hour} * * 0"


def check_cron(backups: Backups) -> str:
    """The weekly check as a cron expression (see check_time)."""
    hour, minute = check_time(backups)
    return f"{minute} {hour} * * 0"


def release_files(
    app: AppSpec, storage: Storage, runtime: Runtime, *, name: str, after: str
) -> dict[str, str]:
    """The release's backup files on a systemd node: the script, its configuration, the backup
    and check services and their timers. `after`: the unit that runs the app."""
    command = f"{SCRIPT} --config {CONFIG}"
    units = {"app_unit": after, "data": DATA, "command": command}
    return {
        SCRIPT: backup_source(),
        CONFIG: dump_json(node_config(app, storage, runtime, name=name)),
        f"/etc/systemd/system/{UNIT}.service": render_template(
            "backup/backup.service.j2", **units, verb="backup", what="Back up the app's data"
        ),
        f"/etc/systemd/system/{UNIT}.timer": render_template(
            "backup/backup.timer.j2",
            calendar=backup_calendar(app.backups),
            what=f"{app.backups.schedule} backup of the app's data",
        ),
        f"/etc/systemd/system/{CHECK_UNIT}.service": render_template(
            "backup/backup.service.j2",
            **units,
            verb="check",
            what="Check the app's backups (reads a tenth of the data, restores the dumps)",
        ),
        f"/etc/systemd/system/{CHECK_UNIT}.timer": render_template(
            "backup/backup.timer.j2",
            calendar=check_calendar(app.backups),
            what="weekly check of the app's backups",
        ),
    }


def release_units() -> list[str]:
    """The timers the release starts."""
    return [f"{UNIT}.timer", f"{CHECK_UNIT}.timer"]


def secret_files(storage: Storage, password: str, secret_key: str) -> dict[str, str]:
    """The root-only files the backup reads its secrets from."""
    if not password or "\n" in password:
        raise ValueError("the backup repository password is empty or holds a line break")
    return {PASSWORD_FILE: password + "\n", STORAGE_FILE: storage.env_text(secret_key)}


# The reserved names the backup's secrets travel under beside the app's secret values (a name
# with a slash is no environment variable, so no spec secret can take it).
PASSWORD_VALUE = "blueprints/backup-password"
SECRET_KEY_VALUE = "blueprints/backup-secret-key"


def app_secret_values(values: Mapping[str, str]) -> dict[str, str]:
    """The app's own secret values, without the backup's."""
    return {k: v for k, v in values.items() if k not in (PASSWORD_VALUE, SECRET_KEY_VALUE)}


def backup_secret_files(storage: Storage | None, values: Mapping[str, str]) -> dict[str, str]:
    """The backup's secret files from the values it travels with; none without storage."""
    if storage is None:
        return {}
    return secret_files(storage, values.get(PASSWORD_VALUE, ""), values.get(SECRET_KEY_VALUE, ""))
