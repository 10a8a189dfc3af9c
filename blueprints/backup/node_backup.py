#!/usr/bin/env python3
"""blueprints-backup: back a node's app data up to the stack's restic repository, list the
snapshots, restore them, check them.

    blueprints-backup [--config PATH] backup
    blueprints-backup [--config PATH] snapshots [--json]
    blueprints-backup [--config PATH] restore SNAPSHOT TARGET
    blueprints-backup [--config PATH] load-dumps DIR
    blueprints-backup [--config PATH] restore-app SNAPSHOT [--plan]
    blueprints-backup [--config PATH] check

Runs as root on the node that holds the data (a systemd timer runs `backup`; an admin or the
`blueprints` command runs the others over SSH).

Input: a JSON configuration (no secret): the restic host name the snapshots are tagged with,
the repository (an `s3:` URL: Hetzner Object Storage, AWS S3, LocalStack), where the
repository password and the storage keys live (root-only files, written by the release
channel), the paths to back up and to leave out, how each service that declares a dump takes
it and loads it back, the commands that pause and resume the services backed up as plain files,
and how many snapshots to keep.

backup
  1. opens the repository, or creates it when the bucket holds none yet (a wrong password or
     unreachable storage fails instead: nothing is created, the existing snapshots stay);
  2. runs each service's dump inside its container (`exec` + `dump`), its standard output
     written to `<staging>/<service>.dump` (complete or absent: written aside, then renamed);
     the dumped services' own volumes are excluded from the file backup (the dump is their
     consistent copy), so they are never paused;
  3. pauses the services backed up as files (`pause`), takes one restic snapshot of the paths,
     and resumes them (also when restic fails), saying how long they were paused;
  4. forgets all but the newest `keep` snapshots of this host and prunes the repository.
restore SNAPSHOT TARGET
  restores a snapshot (an id, or `latest`) into TARGET, which must not exist or be empty: a
  restore never writes over live data; moving it into place, with the app stopped, is the
  caller's step.
load-dumps DIR
  feeds each service's dump found under DIR (a restored snapshot) to its `restore` command
  inside its container.
restore-app SNAPSHOT [--plan]
  puts the app's data back as a snapshot holds it (`--plan`: prints the steps and does
  nothing): restores the snapshot into `scratch` (on the data volume) first, so a failed
  download stops before the app is touched; stops the app; moves each live volume directory
  aside (kept under `scratch`, never deleted) and renames the snapshot's copy into its place (a
  dumped service's volume starts empty); starts the app; loads the dumps. Needs `stop`, `start`,
  `scratch` in the configuration.
check
  checks the repository's structure and reads a tenth of its data (`restic check
  --read-data-subset 10%`), then restores the newest snapshot's dumps to a scratch directory
  and makes sure each one is there and not empty.

Exit status: 0 done; 1 failed (restic, a dump, the storage; one line says which and why); 2 bad
usage or configuration. Secrets (the password, the storage keys) never reach a command line or
the output. Standard library only, Python 3.8 or newer.
"""

import json
import os
import re
import shutil
import subprocess
import tempfile
import time

# --- node_kit: blueprints/release/node_kit.py, inlined here when the script is shipped ---
from blueprints.release.node_kit import (
    REQUIRED,
    Exit,
    _is_argv,
    _is_number,
    _is_path,
    _is_text,
    load_config,
    main,
    make_dirs,
    remove_file,
    say,
    shorten,
)

# --- end node_kit ---

PROG = "blueprints-backup"
DEFAULT_CONFIG = "/etc/blueprints/backup/config.json"
USAGE = (
    "usage: blueprints-backup [--config PATH] backup | snapshots [--json] | "
    "restore SNAPSHOT TARGET | load-dumps DIR | restore-app SNAPSHOT [--plan] | check"
)
# What the storage key file may set: the S3 credentials restic reads from the environment.
ENV_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_SESSION_TOKEN")
SNAPSHOT_ID = re.compile(r"^(latest|[0-9a-f]{8,64})$")
SERVICE_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
TAG = "blueprints"
# restic's answer when the bucket holds no repository yet (S3's NoSuchKey for its config, or
# a missing local directory), as opposed to a wrong password or storage it cannot reach.
NO_REPOSITORY = ("The specified key does not exist", "no such file or directory")
CHECK_SUBSET = "10%"


def _is_paths(value):
    return isinstance(value, list) and all(_is_path(p) for p in value)


def _is_dumps(value):
    if not isinstance(value, list):
        return False
    for dump in value:
        if not isinstance(dump, dict) or set(dump) != {
            "service",
            "exec",
            "dump",
            "restore",
            "volumes",
        }:
            return False
        if not (isinstance(dump["service"], str) and SERVICE_NAME.match(dump["service"])):
            return False
        if not all(_is_argv(dump[k]) for k in ("exec", "dump", "restore")):
            return False
        if not _is_paths(dump["volumes"]):
            return False
    return True


def _is_keep(value):
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 1000


CONFIG_FIELDS = {
    # The restic host the snapshots are tagged with (the app and stack).
    "name": (_is_text, "a name", REQUIRED),
    # An s3: URL (s3:https://host/bucket/path), or a local path (the tests' and a drill's).
    "repository": (_is_text, "a restic repository", REQUIRED),
    "password_file": (_is_path, "an absolute path", REQUIRED),
    # KEY=VALUE lines (ENV_KEYS), root-only; null where the storage needs no key.
    "env_file": (lambda v: v is None or _is_path(v), "null or an absolute path", None),
    "paths": (
        lambda v: _is_paths(v) and len(v) > 0,
        "a non-empty list of absolute paths",
        REQUIRED,
    ),
    "exclude": (_is_paths, "a list of absolute paths", []),
    "staging": (_is_path, "an absolute path", REQUIRED),
    "dumps": (
        _is_dumps,
        "a list of objects with exactly service, exec, dump, restore (commands) and volumes "
        "(absolute paths)",
        [],
    ),
    # restore-app: where a snapshot is restored first (on the data volume, so putting it in
    # place is a rename), the volume directories it puts back, how the app stops and starts
    # (null where the node does not run the app itself: restore-app then refuses).
    "scratch": (lambda v: v is None or _is_path(v), "null or an absolute path", None),
    "volumes": (_is_paths, "a list of absolute paths", []),
    "stop": (lambda v: v is None or _is_argv(v), "null or a command", None),
    "start": (lambda v: v is None or _is_argv(v), "null or a command", None),
    "pause": (lambda v: v is None or _is_argv(v), "null or a command", None),
    "resume": (lambda v: v is None or _is_argv(v), "null or a command", None),
    "keep": (_is_keep, "a whole number from 1 to 1000", REQUIRED),
    "restic": (_is_argv, "a command", ["restic"]),
    "cache_dir": (_is_path, "an absolute path", "/var/cache/blueprints-backup"),
    # Seconds one restic call or one dump may take.
    "timeout": (_is_number, "a positive number", 3600),
}


def check_config(config, bad):
    if (config["pause"] is None) != (config["resume"] is None):
        raise bad("pause and resume are set together or not at all")
    if not any(config["staging"].startswith(p.rstrip("/") + "/") for p in config["paths"]):
        raise bad("staging must lie inside one of paths (the dumps are backed up with them)")


def parse_command_line(argv):
    args = list(argv)
    config = DEFAULT_CONFIG
    if args[:1] == ["--config"] and len(args) > 1:
        config, args = args[1], args[2:]
    elif args[:1] and args[0].startswith("--config="):
        config, args = args[0][len("--config=") :], args[1:]
    shapes = {
        "backup": 0,
        "snapshots": None,
        "restore": 2,
        "load-dumps": 1,
        "restore-app": None,
        "check": 0,
    }
    if not args or args[0] not in shapes:
        raise Exit(2, USAGE)
    command, rest = args[0], args[1:]
    if command == "snapshots":
        if rest not in ([], ["--json"]):
            raise Exit(2, USAGE)
    elif command == "restore-app":
        if len(rest) not in (1, 2) or rest[1:] not in ([], ["--plan"]):
            raise Exit(2, USAGE)
    elif len(rest) != shapes[command]:
        raise Exit(2, USAGE)
    return config, command, rest


def load_env(config):
    """The environment restic runs with: the storage keys from env_file, the repository and the
    password file; nothing of the caller's RESTIC_* or AWS_* settings."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RESTIC_", "AWS_", "B2_", "AZURE_"))
    }
    path = config["env_file"]
    if path is not None:
        try:
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except OSError as e:
            raise Exit(
                1, f"{PROG}: cannot read the storage keys {path} ({e.strerror or e})"
            ) from None
        for number, line in enumerate(lines, 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            key, sep, value = line.partition("=")
            if not sep or key not in ENV_KEYS:
                raise Exit(
                    1,
                    f"{PROG}: {path}, line {number}: expected KEY=VALUE with KEY one of "
                    f"{', '.join(ENV_KEYS)}",
                )
            env[key] = value
    if not os.path.isfile(config["password_file"]):
        raise Exit(1, f"{PROG}: the repository password {config['password_file']} is missing")
    env["RESTIC_REPOSITORY"] = config["repository"]
    env["RESTIC_PASSWORD_FILE"] = config["password_file"]
    return env


class Restic:
    def __init__(self, config, env):
        self.config = config
        self.env = env

    def run(self, *args, what=None, check=True):
        command = [*self.config["restic"], "--cache-dir", self.config["cache_dir"], *args]
        try:
            done = subprocess.run(
                command,
                env=self.env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=self.config["timeout"],
                check=False,
            )
        except FileNotFoundError:
            raise Exit(1, f"{PROG}: {self.config['restic'][0]} is not installed") from None
        except subprocess.TimeoutExpired:
            raise Exit(
                1, f"{PROG}: restic {args[0]} took longer than {self.config['timeout']} s"
            ) from None
        if check and done.returncode != 0:
            raise Exit(1, f"{PROG}: {what or 'restic ' + args[0]} failed: {last_line(done.stderr)}")
        return done

    def json_lines(self, *args, what=None):
        done = self.run(*args, what=what)
        out = []
        for line in done.stdout.splitlines():
            line = line.strip()
            if line.startswith("{") or line.startswith("["):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
        return out

    def open(self):
        """Opens the repository, creating it only when the storage holds none."""
        done = self.run("cat", "config", check=False)
        if done.returncode == 0:
            return False
        if "wrong password" in done.stderr:
            raise Exit(
                1,
                f"{PROG}: the repository at {self.config['repository']} does not open with this "
                "password (wrong password or no key found); nothing was changed, its snapshots "
                "are untouched",
            )
        if not any(marker in done.stderr for marker in NO_REPOSITORY):
            raise Exit(
                1,
                f"{PROG}: cannot reach the repository at {self.config['repository']}: "
                f"{last_line(done.stderr)}",
            )
        self.run("init", what="creating the repository")
        say(f"{PROG}: created the repository at {self.config['repository']}")
        return True


def last_line(text):
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    # restic's last line is often the repository hint; the reason is the line before.
    for line in reversed(lines):
        if not line.startswith(("Is there a repository", "s3:", "/")):
            return shorten(line)
    return shorten(lines[-1]) if lines else "no output"


def human(size):
    """Bytes in decimal units: 812 B, 2.5 MB, 1.2 TB (the blueprints command shows it too)."""
    size = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


# Pausing the file-backed services: tries, and the wait between two.
PAUSE_ATTEMPTS = 3
PAUSE_RETRY_SECONDS = 5


def run_command(argv, timeout, stdin=None, stdout=None):
    try:
        return subprocess.run(
            argv,
            stdin=stdin if stdin is not None else subprocess.DEVNULL,
            stdout=stdout if stdout is not None else subprocess.PIPE,
            stderr=subprocess.PIPE,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError:
        raise Exit(1, f"{PROG}: {argv[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise Exit(1, f"{PROG}: {' '.join(argv[:3])} took longer than {timeout} s") from None


def take_dumps(config):
    """Each service's dump into staging, complete or absent; returns summary phrases."""
    if not config["dumps"]:
        return []
    make_dirs(config["staging"], 0o700)
    phrases = []
    for dump in config["dumps"]:
        target = os.path.join(config["staging"], dump["service"] + ".dump")
        partial = target + ".partial"
        started = time.monotonic()
        try:
            with open(partial, "wb") as out:
                os.chmod(partial, 0o600)
                done = run_command([*dump["exec"], *dump["dump"]], config["timeout"], stdout=out)
        except OSError as e:
            remove_file(partial)
            raise Exit(1, f"{PROG}: cannot write {partial} ({e.strerror or e})") from None
        except Exit:
            remove_file(partial)
            raise
        if done.returncode != 0:
            remove_file(partial)
            raise Exit(
                1,
                f"{PROG}: the dump of {dump['service']} failed (exit {done.returncode}): "
                f"{last_line(done.stderr.decode('utf-8', 'replace'))}; no snapshot was taken",
            )
        if os.path.getsize(partial) == 0:
            # An empty dump would become the newest snapshot and push good ones out.
            remove_file(partial)
            raise Exit(
                1,
                f"{PROG}: the dump of {dump['service']} is empty (its command wrote nothing); "
                "no snapshot was taken",
            )
        os.replace(partial, target)
        size = os.path.getsize(target)
        phrases.append(
            f"{dump['service']} dumped ({human(size)}, {time.monotonic() - started:.1f} s)"
        )
    return phrases


def backup(config, restic):
    # restic skips a missing path with a warning and exit 0: a volume that is not mounted would
    # give a snapshot without its data.
    for path in config["paths"]:
        if not os.path.isdir(path):
            raise Exit(
                1,
                f"{PROG}: {path} is missing (is the data volume mounted?); nothing was backed up",
            )
    restic.open()
    phrases = take_dumps(config)
    exclude = list(config["exclude"])
    for dump in config["dumps"]:
        exclude += dump["volumes"]
    args = ["backup", "--json", "--host", config["name"], "--tag", TAG]
    for path in sorted(set(exclude)):
        args += ["--exclude", path]
    args += config["paths"]
    paused = None
    if config["pause"] is not None:
        # A container between a restart's stop and start (a health-driven restart, a rollout)
        # cannot be paused: undo, wait for it, try again before giving up.
        for attempt in range(PAUSE_ATTEMPTS):
            done = run_command(config["pause"], config["timeout"])
            if done.returncode == 0:
                break
            run_command(config["resume"], config["timeout"])
            if attempt + 1 < PAUSE_ATTEMPTS:
                time.sleep(PAUSE_RETRY_SECONDS)
        else:
            raise Exit(
                1,
                f"{PROG}: pausing the services failed {PAUSE_ATTEMPTS} times, "
                f"{PAUSE_RETRY_SECONDS} s apart: "
                f"{last_line(done.stderr.decode('utf-8', 'replace'))}; no snapshot was taken",
            )
        paused = time.monotonic()
    try:
        messages = restic.json_lines(*args, what="restic backup")
    finally:
        if paused is not None:
            run_command(config["resume"], config["timeout"])
            phrases.append(f"services paused for {time.monotonic() - paused:.1f} s")
    errors = [m for m in messages if m.get("message_type") == "error"]
    if errors:
        first = errors[0]
        what = first.get("item") or first.get("during") or "a file"
        reason = (
            (first.get("error") or {}).get("message", "")
            if isinstance(first.get("error"), dict)
            else first.get("error", "")
        )
        raise Exit(
            1,
            f"{PROG}: restic could not read {len(errors)} item(s), {what} first "
            f"({shorten(reason)}); the snapshot is incomplete: fix it and back up again",
        )
    summary = next((m for m in messages if m.get("message_type") == "summary"), None)
    if summary is None:
        raise Exit(1, f"{PROG}: restic backup printed no summary; the snapshot is not known")
    restic.run(
        "forget",
        "--host",
        config["name"],
        "--tag",
        TAG,
        "--keep-last",
        str(config["keep"]),
        "--prune",
        what="restic forget --prune",
    )
    files = summary.get("total_files_processed", 0)
    say(
        f"{PROG}: snapshot {summary.get('snapshot_id', '?')}: {files} files, "
        f"{human(summary.get('data_added', 0))} added"
        + "".join(f", {p}" for p in phrases)
        + f"; the newest {config['keep']} kept"
    )


def list_snapshots(config, restic):
    snapshots = restic.json_lines(
        "snapshots", "--json", "--host", config["name"], "--tag", TAG, what="restic snapshots"
    )
    rows = snapshots[0] if snapshots and isinstance(snapshots[0], list) else []
    return sorted(rows, key=lambda s: s.get("time", ""))


def restore(config, restic, snapshot, target):
    if not SNAPSHOT_ID.match(snapshot):
        raise Exit(2, f"{PROG}: {snapshot!r} is not a snapshot id (hex) or latest")
    if os.path.exists(target) and (not os.path.isdir(target) or os.listdir(target)):
        raise Exit(
            1,
            f"{PROG}: {target} exists and is not empty; a restore never writes over data "
            "(give a new directory)",
        )
    args = ["restore", snapshot, "--target", target]
    if snapshot == "latest":
        args += ["--host", config["name"], "--tag", TAG]
    restic.run(*args, what=f"restoring snapshot {snapshot}")
    say(f"{PROG}: restored snapshot {snapshot} into {target}")


def dump_file(config, root, service):
    """Where a restored snapshot under root holds a service's dump."""
    return os.path.join(root, config["staging"].lstrip("/"), service + ".dump")


# A service started moments ago may not take a load yet (a database initialising its empty
# volume): a failed load is tried again this often until retry_for runs out.
LOAD_RETRY_SECONDS = 3


def load_dumps(config, root, retry_for=0):
    if not config["dumps"]:
        say(f"{PROG}: no service declares a dump; nothing to load")
        return
    for dump in config["dumps"]:
        path = dump_file(config, root, dump["service"])
        if not os.path.isfile(path):
            raise Exit(1, f"{PROG}: no dump of {dump['service']} at {path}")
        deadline = time.monotonic() + retry_for
        while True:
            with open(path, "rb") as source:
                done = run_command(
                    [*dump["exec"], *dump["restore"]], config["timeout"], stdin=source
                )
            if done.returncode == 0 or time.monotonic() + LOAD_RETRY_SECONDS > deadline:
                break
            time.sleep(LOAD_RETRY_SECONDS)
        if done.returncode != 0:
            raise Exit(
                1,
                f"{PROG}: loading the dump of {dump['service']} failed (exit {done.returncode}): "
                f"{last_line(done.stderr.decode('utf-8', 'replace'))}",
            )
        say(f"{PROG}: loaded the dump of {dump['service']} ({human(os.path.getsize(path))})")


def snapshot_sizes(restic, rows):
    """Each snapshot's size (bytes of the files it holds): restic 0.17+ records it in the
    snapshot; older ones are asked (`restic stats`, which reads trees, not data)."""
    for row in rows:
        summary = row.get("summary") if isinstance(row.get("summary"), dict) else {}
        size = summary.get("total_bytes_processed")
        if size is None:
            stats = restic.json_lines("stats", "--json", row.get("id", ""), what="restic stats")
            size = stats[0].get("total_size") if stats and isinstance(stats[0], dict) else None
        row["size"] = size
    return rows


def restore_app(config, restic, snapshot, plan_only):
    if not SNAPSHOT_ID.match(snapshot):
        raise Exit(2, f"{PROG}: {snapshot!r} is not a snapshot id (hex) or latest")
    missing = [key for key in ("scratch", "stop", "start") if config[key] is None]
    if missing:
        raise Exit(
            2,
            f"{PROG}: restore-app needs {', '.join(missing)} in the configuration; this node "
            "does not run the app itself (restore into a new directory with `restore` and "
            "follow the runbook)",
        )
    work = os.path.join(config["scratch"], time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))
    restored = os.path.join(work, "snapshot")
    before = os.path.join(work, "before")
    dumped = {volume for dump in config["dumps"] for volume in dump["volumes"]}
    steps = [f"restore snapshot {snapshot} into {restored} (the app keeps running)"]
    steps.append(f"stop the app ({' '.join(config['stop'])})")
    for volume in config["volumes"]:
        instead = (
            "an empty directory (its service's dump is loaded later)"
            if volume in dumped
            else "the snapshot's copy"
        )
        steps.append(f"move {volume} to {before}, and put {instead} in its place")
    steps.append(f"start the app ({' '.join(config['start'])})")
    for dump in config["dumps"]:
        steps.append(f"load the dump of {dump['service']} ({' '.join(dump['restore'])})")
    steps.append(f"keep the data as it was before in {before}: delete it once the app is right")
    for number, step in enumerate(steps, 1):
        print(f"{number}. {step}", flush=True)
    if plan_only:
        return
    make_dirs(work, 0o700)
    restore(config, restic, snapshot, restored)
    for volume in config["volumes"]:
        if volume not in dumped and not os.path.isdir(restored + volume):
            raise Exit(
                1,
                f"{PROG}: snapshot {snapshot} holds no {volume}; nothing was stopped or moved "
                f"(the restored files are in {restored})",
            )
    for dump in config["dumps"]:
        if not os.path.isfile(dump_file(config, restored, dump["service"])):
            raise Exit(
                1,
                f"{PROG}: snapshot {snapshot} holds no dump of {dump['service']}; nothing was "
                "stopped or moved",
            )
    started = time.monotonic()
    done = run_command(config["stop"], config["timeout"])
    if done.returncode != 0:
        raise Exit(
            1,
            f"{PROG}: stopping the app failed: {last_line(done.stderr.decode('utf-8', 'replace'))}"
            "; nothing was moved",
        )
    say(f"{PROG}: the app is stopped")
    make_dirs(before, 0o700)
    moved = []
    try:
        for volume in config["volumes"]:
            aside = os.path.join(before, os.path.basename(volume))
            status = os.stat(volume) if os.path.isdir(volume) else None
            if status is not None:
                os.rename(volume, aside)
                moved.append(volume)
            if volume in dumped:
                os.mkdir(volume)
                if status is not None:
                    os.chown(volume, status.st_uid, status.st_gid)
                os.chmod(volume, status.st_mode & 0o7777 if status is not None else 0o777)
            else:
                os.rename(restored + volume, volume)
    except OSError as e:
        raise Exit(
            1,
            f"{PROG}: putting the data back failed ({e.strerror or e}); the app is stopped, "
            f"moved aside so far: {', '.join(moved) or 'nothing'} (in {before})",
        ) from None
    say(f"{PROG}: the data of snapshot {snapshot} is in place; the previous data is in {before}")
    done = run_command(config["start"], config["timeout"])
    if done.returncode != 0:
        raise Exit(
            1,
            f"{PROG}: the data is back but starting the app failed: "
            f"{last_line(done.stderr.decode('utf-8', 'replace'))}; the previous data is in "
            f"{before}",
        )
    say(f"{PROG}: the app is started")
    load_dumps(config, restored, retry_for=config["timeout"])
    shutil.rmtree(restored, ignore_errors=True)
    say(
        f"{PROG}: restored snapshot {snapshot} in {time.monotonic() - started:.1f} s of app "
        f"downtime; the data as it was before is in {before}"
    )


def check(config, restic):
    restic.run("check", "--read-data-subset", CHECK_SUBSET, what="restic check")
    if not list_snapshots(config, restic):
        raise Exit(1, f"{PROG}: the repository holds no snapshot of {config['name']}")
    scratch = tempfile.mkdtemp(prefix="blueprints-backup-check-")
    try:
        if config["dumps"]:
            args = ["restore", "latest", "--host", config["name"], "--tag", TAG]
            args += ["--target", scratch]
            for dump in config["dumps"]:
                args += ["--include", os.path.join(config["staging"], dump["service"] + ".dump")]
            restic.run(*args, what="restoring the newest dumps")
        for dump in config["dumps"]:
            path = dump_file(config, scratch, dump["service"])
            if not os.path.isfile(path) or os.path.getsize(path) == 0:
                raise Exit(
                    1, f"{PROG}: the newest snapshot holds no usable dump of {dump['service']}"
                )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    dumps = f", {len(config['dumps'])} dump(s) restored and present" if config["dumps"] else ""
    say(f"{PROG}: repository checked ({CHECK_SUBSET} of the data read){dumps}")


# backup, check and restore-app take this lock (in cache_dir), so that no backup runs in the
# middle of a restore: it would snapshot a half-restored app and push a good snapshot out.
LOCK_FILE = "lock"


def take_lock(config, command, wait):
    """Hold the node's backup lock until the process ends; a restore waits for a backup (or
    check) in progress, a backup or check does not wait for anything."""
    import fcntl

    make_dirs(config["cache_dir"], 0o700)
    handle = open(os.path.join(config["cache_dir"], LOCK_FILE), "a")  # noqa: SIM115 (held)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        if not wait:
            raise Exit(
                1,
                f"{PROG}: another run holds the backup lock (a restore in progress?); this "
                f"{command} did nothing",
            ) from None
        say(f"{PROG}: waiting for the backup in progress to end")
        fcntl.flock(handle, fcntl.LOCK_EX)
    return handle


def run(argv, _stdin):
    path, command, rest = parse_command_line(argv)
    config = load_config(path, PROG, CONFIG_FIELDS, check_config)
    restic = Restic(config, load_env(config))
    if command in ("backup", "check") or (command == "restore-app" and rest[1:] != ["--plan"]):
        lock = take_lock(config, command, wait=command == "restore-app")  # noqa: F841 (held)
    if command == "backup":
        backup(config, restic)
    elif command == "snapshots":
        rows = snapshot_sizes(restic, list_snapshots(config, restic))
        if rest == ["--json"]:
            print(json.dumps(rows, sort_keys=True))
        else:
            for s in rows:
                size = "?" if s["size"] is None else human(s["size"])
                print(f"{s.get('short_id', '?')}  {s.get('time', '?')[:19]}Z  {size:>9}")
            say(f"{PROG}: {len(rows)} snapshot(s) of {config['name']}")
    elif command == "restore":
        restore(config, restic, rest[0], rest[1])
    elif command == "load-dumps":
        load_dumps(config, rest[0])
    elif command == "restore-app":
        restore_app(config, restic, rest[0], rest[1:] == ["--plan"])
    else:
        check(config, restic)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(PROG, run))
