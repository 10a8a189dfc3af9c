#!/usr/bin/python3
"""The blueprints release agent: rolls a release of the app out on the node that holds the data
volume, health-gated and reversible (see blueprints/release/CONTRACT.md).

The release channel installs this file verbatim on the data volume, as
/srv/data/.blueprints/release-agent, beside the releases it keeps there; the bootstrap's
/usr/local/lib/blueprints/release-agent runs it. It needs python3 and PyYAML only (both come
with every Ubuntu cloud image: cloud-init needs them), imports nothing of blueprints, and runs
as root:

    release-agent secrets  < SECRETS   keep the secret files a release will name
    release-agent deploy   < RELEASE   roll the release out; back to the previous one on failure
    release-agent activate             at boot: install the current release and start the app
    release-agent rollback [ID]        deploy an earlier release kept on the volume again
    release-agent status               the current release, the history, each service

Exit status: 0 done; 1 the rollout failed and the node runs the previous release again; 2 the
input was refused (one sentence on stderr) and nothing changed; 3 an unexpected error (a full
disk, say), after which the previous release was restored as far as it could be. `rollback`
without an id goes to the newest release in the history before the current one; run again, it
goes back and forth.

A deploy checks the document, pulls the changed services' images, installs the release's files,
runs the release's tasks (a migration) in order, each bounded by its timeout, reloads the
proxy, then replaces containers service by service in the document's order: a task that fails
fails the release before any container is replaced. Then a
service whose definition is unchanged is not touched; a stateless one ("surge") gets a new
container beside the old ones, healthy first, then its replicas are replaced one at a time, each
healthy before the next; a stateful one ("restart") is stopped, then started. Progress goes to
stdout, a line per step, with the seconds since the start.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import posixpath
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import yaml

RELEASE_FORMAT = "blueprints-release/1"
SECRETS_FORMAT = "blueprints-secrets/1"
RUNGS = ("single-vm", "compose")
ROLLOUTS = ("surge", "restart")

DATA = "/srv/data"
STATE = f"{DATA}/.blueprints"
LOCK = "/run/blueprints-release.lock"
# Which files this machine's root disk holds from the releases it installed (the root disk
# stays with the machine; the releases move with the volume).
INSTALLED = "/var/lib/blueprints/release-files.json"
KEEP_RELEASES = 5
KEEP_HISTORY = 100

UNITS = "/etc/systemd/system/"
APP_SCRIPTS = "/usr/local/lib/blueprints/app/"
CONFIG = "/etc/blueprints/"
SECRETS_DIR = "/etc/blueprints/secrets/"
RELEASE_ROOTS = (UNITS, APP_SCRIPTS, CONFIG)
SECRET_ROOTS = (SECRETS_DIR,)

# Registry credentials (a secrets document's file): every command the agent runs that may pull
# an image (docker pull, app-compose, a task) reads them through DOCKER_CONFIG.
DOCKER_CONFIG = "/etc/blueprints/secrets/docker"
DOCKER_CONFIG_FILE = f"{DOCKER_CONFIG}/config.json"
# A task's command stops its own work at the task's timeout; the agent stops waiting this much
# later, and shows this many of its last output lines when it fails.
TASK_GRACE = 30
TASK_LINES = 20

CADDY_CONFIG = "/etc/blueprints/caddy.json"
CADDY_UNIT = "blueprints-caddy.service"
# The proxy's container sees caddy.json through a bind mount of the file's inode: a file
# replaced by rename would stay invisible to it, so this one is rewritten in place.
IN_PLACE = frozenset({CADDY_CONFIG})
APP_TARGET = "app.target"
COMPOSE_FILE = "/etc/blueprints/compose/compose.yaml"
WRAPPER = "/usr/local/sbin/app-compose"
COMPOSE_UNIT = "app-compose.service"
PROXY_SERVICE = "blueprints_proxy"
# compose: Caddy sits on the network `<app>-proxy` alone; a container of a routed service
# (labelled with its service name) joins it, under that name, once it is healthy, so the proxy
# never sends a request to a container that is still starting or never got healthy.
PROXY_NETWORK_SUFFIX = "-proxy"
PROXY_LABEL = "blueprints.proxy"

# A service without a health check counts as healthy once its container still runs this long
# after it started; it may take up to NO_HEALTH_START seconds to start at all.
STABLE_SECONDS = 3
NO_HEALTH_START = 60
# Beyond one health check (or DNS refresh) interval of the proxy, before counting on it.
SETTLE_MARGIN = 1.0
STOP_SECONDS = 30
# Caddy's default refresh of dynamic A upstreams.
DEFAULT_REFRESH = 60.0

HEX16 = re.compile(r"[0-9a-f]{16}")
LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
UNIT_NAME = re.compile(r"[A-Za-z0-9:_.\\@-]+\.(service|timer|target|socket|path|mount)")
MODE = re.compile(r"0?[0-7]{3}")
DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


class Refused(Exception):
    """The input is refused (exit 2); the message is one sentence saying why and what to do."""


class Unhealthy(Exception):
    """A new container (or the proxy) did not become healthy: the rollout goes back."""

    def __init__(self, what: str, seconds: float | None, last: str):
        super().__init__(f"{what}: {last}")
        self.what, self.seconds, self.last = what, seconds, last


class TaskFailed(Exception):
    """A task of the release failed or ran out of time: the rollout goes back."""

    def __init__(self, name: str, cause: str):
        super().__init__(f"task {name} {cause}")
        self.name, self.cause = name, cause


class PullFailed(Exception):
    """An image is neither pullable nor present: nothing was changed yet."""


# --- the machine ---------------------------------------------------------------------------------


@dataclass
class Result:
    code: int
    out: str
    err: str = ""

    @property
    def ok(self) -> bool:
        return self.code == 0

    def last_line(self) -> str:
        lines = [ln.strip() for ln in (self.out + "\n" + self.err).splitlines() if ln.strip()]
        return lines[-1] if lines else f"exit status {self.code}"


class Node:
    """Everything the agent does to the machine: files under `root`, commands, the clock.

    Tests replace run(), now(), sleep() and is_mounted() and point root at a scratch directory.
    """

    def __init__(self, root: str = "/"):
        self.root = root
        # Set for every command run: DOCKER_CONFIG while the node has registry credentials.
        self.env: dict[str, str] = {}

    def path(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    # files
    def read(self, path: str) -> str | None:
        try:
            with open(self.path(path), encoding="utf-8") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def mode(self, path: str) -> int | None:
        try:
            return os.stat(self.path(path)).st_mode & 0o7777
        except FileNotFoundError:
            return None

    def exists(self, path: str) -> bool:
        return os.path.exists(self.path(path))

    def listdir(self, path: str) -> list[str]:
        try:
            return sorted(os.listdir(self.path(path)))
        except FileNotFoundError:
            return []

    def makedirs(self, path: str, mode: int = 0o755) -> None:
        """Create path and its missing parents with `mode` (never changes an existing one)."""
        missing = []
        current = path.rstrip("/")
        while current and not os.path.isdir(self.path(current)):
            missing.append(current)
            current = posixpath.dirname(current)
        for directory in reversed(missing):
            with contextlib.suppress(FileExistsError):
                os.mkdir(self.path(directory))
                os.chmod(self.path(directory), mode)

    def write(self, path: str, text: str, mode: int, in_place: bool = False) -> None:
        """Write a file atomically (a temporary file renamed over it), or, with in_place, into
        the existing file itself (same inode), which a bind mount keeps seeing."""
        full = self.path(path)
        parent = os.path.dirname(full)
        data = text.encode("utf-8")
        if in_place and os.path.isfile(full) and not os.path.islink(full):
            with open(full, "r+b") as f:
                f.write(data)
                f.truncate()
                f.flush()
                os.fsync(f.fileno())
            os.chmod(full, mode)
            return
        fd, tmp = tempfile.mkstemp(dir=parent, prefix=".release-agent-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, mode)
            os.replace(tmp, full)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def remove(self, path: str) -> bool:
        try:
            os.unlink(self.path(path))
            return True
        except FileNotFoundError:
            return False

    def is_mounted(self, path: str) -> bool:
        return os.path.ismount(self.path(path))

    @contextlib.contextmanager
    def lock(self, say):
        full = self.path(LOCK)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                say("another release-agent run holds the lock; waiting for it to finish")
                fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    # commands and time
    def run(self, argv: list[str], input: str | None = None, timeout: float | None = None):
        env = dict(os.environ)
        env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        env.update(self.env)
        try:
            proc = subprocess.run(
                argv,
                input=input,
                capture_output=True,
                text=True,
                timeout=timeout,
                env=env,
                check=False,
            )
        except FileNotFoundError:
            return Result(127, "", f"{argv[0]}: not found")
        except subprocess.TimeoutExpired:
            return Result(124, "", f"{' '.join(argv)}: no answer within {timeout:.0f} s")
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def now(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


# --- the documents -------------------------------------------------------------------------------


def release_id(body: dict) -> str:
    """A release's id: SHA-256 over the canonical JSON of every other field of its document
    (the secrets it needs are named there by their keyed digest). blueprints.release.bundle
    builds documents with this very function."""
    rest = {k: v for k, v in body.items() if k != "release"}
    text = json.dumps(rest, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _load_yaml(text: object, what: str) -> dict:
    if not isinstance(text, str) or not text.strip():
        raise Refused(f"no {what} document was given on stdin")
    try:
        body = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise Refused(f"the {what} document is not valid YAML{where}") from None
    if not isinstance(body, dict):
        raise Refused(f"the {what} document is not a YAML mapping")
    return body


def _only_keys(body: dict, allowed: set[str], what: str) -> None:
    extra = sorted(str(k) for k in set(body) - allowed)
    missing = sorted(allowed - set(body))
    if extra:
        raise Refused(
            f"{what} has unknown field(s) {', '.join(extra)}; this agent knows "
            f"{', '.join(sorted(allowed))} (is the node's agent older than the plan?)"
        )
    if missing:
        raise Refused(f"{what} lacks field(s) {', '.join(missing)}")


def _check_files(files: object, roots: tuple[str, ...], what: str, refused: tuple[str, ...] = ()):
    if not isinstance(files, dict):
        raise Refused(f"{what}: files is not a map of path to mode and text")
    for path, entry in files.items():
        if (
            not isinstance(path, str)
            or "\0" in path
            or not path.startswith("/")
            or posixpath.normpath(path) != path
            or not any(path.startswith(root) and len(path) > len(root) for root in roots)
            or any(path.startswith(root) or path == root.rstrip("/") for root in refused)
        ):
            raise Refused(
                f"{what}: file {path!r} is outside the allowed install roots "
                f"({', '.join(roots)}{', except ' + ', '.join(refused) if refused else ''})"
            )
        if not isinstance(entry, dict) or set(entry) != {"mode", "text"}:
            raise Refused(f"{what}: file {path} must have exactly a mode and a text")
        if not isinstance(entry["mode"], str) or not MODE.fullmatch(entry["mode"]):
            raise Refused(f"{what}: file {path} has mode {entry['mode']!r}, not an octal like 0644")
        if int(entry["mode"], 8) & 0o022:
            raise Refused(
                f"{what}: file {path} would be writable by others (mode {entry['mode']}); "
                "root-owned files of a release are 0644, 0755 or stricter"
            )
        if not isinstance(entry["text"], str):
            raise Refused(f"{what}: file {path} has a text that is not a string")


def check_release(text: object) -> dict:
    """The release document, checked; Refused with one sentence on anything else."""
    body = _load_yaml(text, "release")
    if body.get("format") != RELEASE_FORMAT:
        raise Refused(
            f"not a release document: format is {body.get('format')!r}, expected {RELEASE_FORMAT}"
        )
    # tasks: optional (a release without tasks has no such key, as releases had before tasks).
    _only_keys(
        {k: v for k, v in body.items() if k != "tasks"},
        {"format", "rung", "app", "release", "secrets", "volumes", "units", "services", "files"},
        "the release document",
    )
    rid = body["release"]
    if not isinstance(rid, str) or not HEX16.fullmatch(rid):
        raise Refused(f"the release document's id {rid!r} is not 16 hex digits")
    actual = release_id(body)
    if actual != rid:
        raise Refused(
            f"release {rid}: its content digests to {actual}, so it was changed or truncated on "
            "the way; nothing was applied"
        )
    what = f"release {rid}"
    if body["rung"] not in RUNGS:
        raise Refused(f"{what} is for rung {body['rung']!r}; this agent runs {', '.join(RUNGS)}")
    if not isinstance(body["app"], str) or not LABEL.fullmatch(body["app"]):
        raise Refused(f"{what}: app {body['app']!r} is not a DNS label")
    if body["secrets"] is not None and (
        not isinstance(body["secrets"], str) or not HEX16.fullmatch(body["secrets"])
    ):
        raise Refused(f"{what}: secrets {body['secrets']!r} is neither null nor 16 hex digits")
    volumes = body["volumes"]
    if not isinstance(volumes, list) or not all(
        isinstance(v, str) and LABEL.fullmatch(v) for v in volumes
    ):
        raise Refused(f"{what}: volumes must be a list of DNS labels")
    units = body["units"]
    if not isinstance(units, list) or not all(
        isinstance(u, str) and UNIT_NAME.fullmatch(u) for u in units
    ):
        raise Refused(f"{what}: units must be a list of systemd unit names")
    services = body["services"]
    if not isinstance(services, list):
        raise Refused(f"{what}: services is not a list")
    seen: set[str] = set()
    for svc in services:
        if not isinstance(svc, dict):
            raise Refused(f"{what}: a service entry is not a mapping")
        _only_keys(
            svc, {"name", "image", "replicas", "rollout", "digest", "health"}, f"{what}: a service"
        )
        name = svc["name"]
        if not isinstance(name, str) or not LABEL.fullmatch(name) or name in seen:
            raise Refused(f"{what}: service name {name!r} is not a unique DNS label")
        seen.add(name)
        if not isinstance(svc["image"], str) or not svc["image"].strip():
            raise Refused(f"{what}: service {name} has no image")
        replicas = svc["replicas"]
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 1:
            raise Refused(f"{what}: service {name} has replicas {replicas!r}, not a count >= 1")
        if svc["rollout"] not in ROLLOUTS:
            raise Refused(
                f"{what}: service {name} has rollout {svc['rollout']!r}; expected "
                f"{' or '.join(ROLLOUTS)}"
            )
        if not isinstance(svc["digest"], str) or not HEX16.fullmatch(svc["digest"]):
            raise Refused(f"{what}: service {name}'s digest is not 16 hex digits")
        health = svc["health"]
        if health is not None:
            budget = health.get("budget") if isinstance(health, dict) else None
            if (
                not isinstance(health, dict)
                or set(health) != {"budget"}
                or not isinstance(budget, int)
                or isinstance(budget, bool)
                or budget < 1
            ):
                raise Refused(f"{what}: service {name}'s health must be null or {{budget: N}}")
    _check_files(body["files"], RELEASE_ROOTS, what, refused=SECRET_ROOTS)
    _check_tasks(body.get("tasks", []), what, seen)
    return body


def _check_tasks(tasks: object, what: str, services: set[str]) -> None:
    if not isinstance(tasks, list):
        raise Refused(f"{what}: tasks is not a list")
    seen: set[str] = set()
    for task in tasks:
        if not isinstance(task, dict):
            raise Refused(f"{what}: a task entry is not a mapping")
        # needs (optional): services the task reaches (a database); a release that brings
        # them new starts them before its tasks run.
        _only_keys(
            {k: v for k, v in task.items() if k != "needs"},
            {"name", "argv", "timeout"},
            f"{what}: a task",
        )
        needs = task.get("needs", [])
        if not isinstance(needs, list) or not all(
            isinstance(n, str) and n in services for n in needs
        ):
            raise Refused(f"{what}: task {task.get('name')!r}'s needs must name services")
        name = task["name"]
        if not isinstance(name, str) or not LABEL.fullmatch(name) or name in seen:
            raise Refused(f"{what}: task name {name!r} is not a unique DNS label")
        seen.add(name)
        argv = task["argv"]
        if (
            not isinstance(argv, list)
            or not argv
            or not all(isinstance(a, str) and "\0" not in a for a in argv)
            or not argv[0].startswith("/")
        ):
            raise Refused(
                f"{what}: task {name}'s argv must be a list of strings starting with an "
                "absolute program path"
            )
        timeout = task["timeout"]
        if not isinstance(timeout, int) or isinstance(timeout, bool) or timeout < 1:
            raise Refused(f"{what}: task {name}'s timeout {timeout!r} is not seconds >= 1")


def check_secrets(text: object) -> dict:
    """The secrets document, checked (its digest is keyed: the node can only compare names)."""
    body = _load_yaml(text, "secrets")
    if body.get("format") != SECRETS_FORMAT:
        raise Refused(
            f"not a secrets document: format is {body.get('format')!r}, expected {SECRETS_FORMAT}"
        )
    _only_keys(body, {"format", "digest", "files"}, "the secrets document")
    if not isinstance(body["digest"], str) or not HEX16.fullmatch(body["digest"]):
        raise Refused("the secrets document's digest is not 16 hex digits")
    _check_files(body["files"], SECRET_ROOTS, f"secrets {body['digest']}")
    return body


EMPTY = {
    "format": RELEASE_FORMAT,
    "rung": None,
    "app": None,
    "release": None,
    "secrets": None,
    "volumes": [],
    "units": [],
    "services": [],
    "files": {},
}


def by_name(doc: dict) -> dict[str, dict]:
    return {svc["name"]: svc for svc in doc["services"]}


def parse_duration(text: object) -> float:
    """Seconds of a Caddy (Go) duration like "10s", "500ms" or "1m30s"; 0 if unreadable."""
    if isinstance(text, int | float):
        return float(text) / 1e9  # Caddy reads a bare number as nanoseconds
    if not isinstance(text, str):
        return 0.0
    parts = DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return 0.0
    return sum(float(n) * DURATION_UNITS[u] for n, u in parts)


def _proxies(config: object):
    """Every reverse_proxy handler in a Caddy JSON config."""
    if isinstance(config, dict):
        if config.get("handler") == "reverse_proxy":
            yield config
        for value in config.values():
            yield from _proxies(value)
    elif isinstance(config, list):
        for value in config:
            yield from _proxies(value)


# --- the state on the data volume ----------------------------------------------------------------


class Store:
    """/srv/data/.blueprints: the releases this volume ran, their secrets, current and history."""

    def __init__(self, node: Node):
        self.node = node

    def _ensure(self) -> None:
        for sub in ("", "/releases", "/secrets"):
            self.node.makedirs(STATE + sub, 0o700)

    def current(self) -> str | None:
        text = self.node.read(f"{STATE}/current")
        value = (text or "").strip()
        return value or None

    def history(self) -> list[str]:
        text = self.node.read(f"{STATE}/history") or ""
        return [line.strip() for line in text.splitlines() if HEX16.fullmatch(line.strip())]

    def kept(self) -> list[str]:
        return [
            name[: -len(".yaml")]
            for name in self.node.listdir(f"{STATE}/releases")
            if name.endswith(".yaml") and HEX16.fullmatch(name[: -len(".yaml")])
        ]

    def release(self, rid: str) -> dict:
        text = self.node.read(f"{STATE}/releases/{rid}.yaml")
        if text is None:
            kept = ", ".join(self.kept()) or "none"
            raise Refused(f"release {rid} is not kept on this volume (kept: {kept})")
        try:
            return check_release(text)
        except Refused as exc:
            raise Refused(f"release {rid} kept on this volume is damaged: {exc}") from None

    def secrets(self, digest: str | None, rid: str) -> dict:
        if digest is None:
            return {"digest": None, "files": {}}
        text = self.node.read(f"{STATE}/secrets/{digest}.yaml")
        if text is None:
            raise Refused(
                f"release {rid} needs secrets document {digest}, which this node does not hold; "
                "send it first with `release-agent secrets` (pulumi up does, before the release)"
            )
        try:
            body = check_secrets(text)
        except Refused as exc:
            raise Refused(
                f"secrets document {digest} kept on this volume is damaged: {exc}"
            ) from None
        if body["digest"] != digest:
            raise Refused(
                f"the secrets document kept as {digest} names itself {body['digest']}; send it "
                "again with `release-agent secrets`"
            )
        return body

    def save_secrets(self, body: dict, text: str) -> bool:
        self._ensure()
        path = f"{STATE}/secrets/{body['digest']}.yaml"
        if self.node.read(path) == text:
            return False
        self.node.write(path, text, 0o600)
        return True

    def record(self, doc: dict, text: str) -> None:
        """Keep the release, make it current, append it to the history, prune the old ones."""
        self._ensure()
        rid = doc["release"]
        self.node.write(f"{STATE}/releases/{rid}.yaml", text, 0o600)
        history = self.history()
        if not history or history[-1] != rid:
            history.append(rid)
        history = history[-KEEP_HISTORY:]
        self.node.write(f"{STATE}/history", "".join(h + "\n" for h in history), 0o600)
        self.node.write(f"{STATE}/current", rid + "\n", 0o600)
        self.prune(history, rid)

    def prune(self, history: list[str], current: str) -> None:
        keep: list[str] = [current]
        for rid in reversed(history):
            if len(keep) >= KEEP_RELEASES:
                break
            if rid not in keep and rid in self.kept():
                keep.append(rid)
        for rid in self.kept():
            if rid not in keep:
                self.node.remove(f"{STATE}/releases/{rid}.yaml")
        named = set()
        for rid in keep:
            text = self.node.read(f"{STATE}/releases/{rid}.yaml") or ""
            with contextlib.suppress(yaml.YAMLError, AttributeError):
                named.add((yaml.safe_load(text) or {}).get("secrets"))
        for name in self.node.listdir(f"{STATE}/secrets"):
            if name.endswith(".yaml") and name[: -len(".yaml")] not in named:
                self.node.remove(f"{STATE}/secrets/{name}")


# --- rolling out -------------------------------------------------------------------------------


@dataclass
class Progress:
    """What a service's rollout has done so far, so that a failure can undo exactly that."""

    name: str
    old: dict | None  # the service in the release being replaced (None: a new service)
    new: dict | None  # the service in the release being applied (None: a removed service)
    done: bool = False
    # single-vm: slot -> when it became healthy (None: an old replica, serving all along)
    serving: dict[int, float | None] = field(default_factory=dict)
    started: set[int] = field(default_factory=set)  # slots started with the new definition
    stopped: set[int] = field(default_factory=set)  # slots of the old definition stopped
    # single-vm: slot -> when its container stopped during this rollout
    vacated: dict[int, float] = field(default_factory=dict)
    # compose: containers created for the new definition, and old ones removed
    created: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


def _changed(old: dict | None, new: dict | None) -> bool:
    return old is None or new is None or old["digest"] != new["digest"]


def describe(old: dict | None, new: dict | None) -> str:
    if old is None:
        return f"new, {new['replicas']} x {new['image']}"
    if new is None:
        return "removed"
    parts = []
    if old["image"] != new["image"]:
        parts.append(f"image {old['image']} -> {new['image']}")
    elif old["digest"] != new["digest"]:
        parts.append("definition changed")
    if old["replicas"] != new["replicas"]:
        parts.append(f"replicas {old['replicas']} -> {new['replicas']}")
    return ", ".join(parts) or "unchanged"


class Driver:
    """What differs between the rungs: how containers are started, stopped and checked."""

    def __init__(self, agent: Agent):
        self.agent = agent
        self.node = agent.node

    def say(self, message: str) -> None:
        self.agent.say(message)

    def run(self, argv: list[str], timeout: float | None = 600, input: str | None = None):
        return self.node.run(argv, input=input, timeout=timeout)


class SingleVm(Driver):
    """single-vm: one systemd unit per replica (app-<svc>@N), Caddy as blueprints-caddy."""

    @staticmethod
    def unit(name: str, slot: int) -> str:
        return f"app-{name}@{slot}.service"

    def active(self, unit: str) -> bool:
        return self.run(["systemctl", "is-active", "--quiet", unit], timeout=60).ok

    def pull(self, services: list[dict]) -> None:
        for svc in services:
            image = svc["image"]
            self.say(f"{svc['name']}: pulling {image}")
            pulled = self.run(["docker", "pull", "--quiet", image], timeout=1800)
            if pulled.ok:
                continue
            if self.run(["docker", "image", "inspect", image], timeout=60).ok:
                self.say(
                    f"{svc['name']}: pulling failed ({pulled.last_line()}); using the copy here"
                )
                continue
            raise PullFailed(
                f"{svc['name']}: image {image} could not be pulled ({pulled.last_line()})"
            )

    # the proxy
    def proxy(self, old: dict, new: dict, changed: set[str]) -> None:
        has = new["files"].get(CADDY_CONFIG) is not None
        if not has:
            if old["files"].get(CADDY_CONFIG) is not None and self.active(CADDY_UNIT):
                self.say("proxy: the release has no public routes; stopping Caddy")
                self.run(["systemctl", "stop", CADDY_UNIT])
            return
        if self.active(CADDY_UNIT):
            if CADDY_CONFIG not in changed:
                return
            self.say("proxy: reloading Caddy with the release's routes")
            result = self.run(["systemctl", "reload", CADDY_UNIT], timeout=120)
        else:
            self.say("proxy: starting Caddy")
            result = self.run(["systemctl", "start", CADDY_UNIT], timeout=900)
        if not result.ok:
            raise Unhealthy(
                "the proxy (Caddy)", None, f"refused its configuration: {result.last_line()}"
            )

    def interval(self, name: str) -> float:
        """Caddy's active health check interval for the service's replicas (0: no checks).
        Caddy sends traffic to a replica only after one of its checks passed."""
        try:
            config = json.loads(self.node.read(CADDY_CONFIG) or "null")
        except ValueError:
            return 0.0
        pattern = re.compile(rf"{re.escape(name)}-\d+:\d+")
        longest = 0.0
        for proxy in _proxies(config):
            dials = [u.get("dial") for u in proxy.get("upstreams") or [] if isinstance(u, dict)]
            if not any(isinstance(d, str) and pattern.fullmatch(d) for d in dials):
                continue
            active = ((proxy.get("health_checks") or {}).get("active")) or {}
            if active:
                longest = max(longest, parse_duration(active.get("interval", "30s")))
        return longest

    def settle(self, p: Progress, stopping: int) -> None:
        """Before a serving replica stops: make sure the proxy sends traffic to another one
        (an old replica, or a new one healthy for longer than the proxy's check interval)."""
        interval = self.interval(p.name)
        if interval <= 0:
            return
        others = {slot: at for slot, at in p.serving.items() if slot != stopping}
        if not others or any(at is None for at in others.values()):
            return
        until = min(at for at in others.values() if at is not None) + interval + SETTLE_MARGIN
        wait = until - self.node.now()
        if wait > 0:
            self.say(
                f"{p.name}: waiting {wait:.1f} s for the proxy's health check to pass on a new "
                "replica"
            )
            self.node.sleep(wait)

    def vacate(self, p: Progress, slot: int) -> None:
        """Before a new container takes an empty slot while the service serves: the proxy must
        have seen the slot empty (a failed check marks it down), or it would send requests to
        the new container before it is ready. A slot emptied by this rollout waits out one check
        interval from then; one found empty, a whole interval (its last container may have
        stopped just before, say at the end of the previous release)."""
        interval = self.interval(p.name)
        if interval <= 0:
            return
        since = p.vacated.get(slot, self.node.now())
        wait = since + interval + SETTLE_MARGIN - self.node.now()
        if wait > 0:
            self.say(
                f"{p.name}: waiting {wait:.1f} s for the proxy to see slot {slot} empty before "
                "a new container takes it"
            )
            self.node.sleep(wait)

    # replicas
    def start(self, p: Progress, svc: dict, slot: int, of: int) -> None:
        self.run(["systemctl", "start", "--no-block", self.unit(p.name, slot)])
        p.started.add(slot)
        self.ready(p, svc, slot, of)

    def stop(self, p: Progress, slot: int, why: str) -> None:
        self.say(f"{p.name}: stopping replica {slot}{why}")
        self.run(["systemctl", "stop", self.unit(p.name, slot)], timeout=STOP_SECONDS + 60)
        p.serving.pop(slot, None)
        p.vacated[slot] = self.node.now()

    def ready(self, p: Progress, svc: dict, slot: int, of: int) -> None:
        label = f"replica {slot} of {of}" if slot <= of else f"surge replica {slot}"
        health = svc["health"]
        if health is None:
            self._running(p.name, slot)
        else:
            budget = health["budget"]
            script = f"{APP_SCRIPTS}health-{p.name}"
            result = self.run([script, "ready", str(slot), str(budget)], timeout=budget + 60)
            if not result.ok:
                raise Unhealthy(p.name, budget, result.last_line())
        p.serving[slot] = self.node.now()
        self.say(f"{p.name}: {label} healthy")

    def _running(self, name: str, slot: int) -> None:
        container = f"{name}-{slot}"
        deadline = self.node.now() + NO_HEALTH_START
        first = None
        while True:
            state = self.run(
                [
                    "docker",
                    "inspect",
                    "--format",
                    "{{.State.Running}} {{.State.StartedAt}}",
                    container,
                ],
                timeout=60,
            )
            running, _, started = state.out.strip().partition(" ")
            if state.ok and running == "true":
                if first is None or first[0] != started:
                    first = (started, self.node.now())
                elif self.node.now() - first[1] >= STABLE_SECONDS:
                    return
            elif first is not None:
                first = None
            if self.node.now() >= deadline:
                raise Unhealthy(
                    name,
                    NO_HEALTH_START,
                    f"{container}: not running steadily for {STABLE_SECONDS} s",
                )
            self.node.sleep(1)

    def running_slots(self, name: str, upto: int) -> set[int]:
        return {slot for slot in range(1, upto + 1) if self.active(self.unit(name, slot))}

    def roll(self, p: Progress) -> None:
        """Roll one service; its health timer is paused meanwhile, so that the release's probe
        never judges (and restarts) a replica of the previous version."""
        old, new = p.old, p.new
        timer = f"app-{p.name}-health.timer"
        paused = old is not None and new is not None and _changed(old, new) and self.active(timer)
        if paused:
            self.run(["systemctl", "stop", timer], timeout=60)
        try:
            self._roll(p)
        finally:
            if paused:
                self.run(["systemctl", "start", timer], timeout=60)

    def _roll(self, p: Progress) -> None:
        old, new, name = p.old, p.new, p.name
        assert new is not None
        r_new = new["replicas"]
        r_old = old["replicas"] if old else 0
        if old is not None and not _changed(old, new) and r_new == r_old:
            return  # not touched
        running = self.running_slots(name, max(r_old, r_new) + 1) if old else set()
        p.serving = {slot: None for slot in running}
        if old is not None and not _changed(old, new):
            self.say(f"{name}: replicas {r_old} -> {r_new} (definition unchanged)")
            for slot in range(1, r_new + 1):
                if slot not in running:
                    self.start(p, new, slot, r_new)
            for slot in sorted(running, reverse=True):
                if slot > r_new:
                    p.stopped.add(slot)
                    self.stop(p, slot, f" (above {r_new} replicas)")
            return
        if old is None:
            self.say(f"{name}: starting {r_new} replica(s)")
            for slot in range(1, r_new + 1):
                self.start(p, new, slot, r_new)
            return
        if new["rollout"] == "restart" or old["rollout"] == "restart":
            self.say(f"{name}: restarting ({describe(old, new)}); it is down meanwhile")
            for slot in sorted(running, reverse=True):
                p.stopped.add(slot)
                self.stop(p, slot, "")
            for slot in range(1, r_new + 1):
                self.start(p, new, slot, r_new)
            return
        surge = r_new + 1
        self.say(f"{name}: rolling out ({describe(old, new)}), surge replica {surge} first")
        if surge in running:
            self.settle(p, surge)
            p.stopped.add(surge)
            self.stop(p, surge, " (its slot is the surge slot now)")
        self.vacate(p, surge)
        self.start(p, new, surge, r_new)
        for slot in range(1, r_new + 1):
            if slot in running:
                self.settle(p, slot)
                p.stopped.add(slot)
                self.stop(p, slot, " (old version)")
            self.vacate(p, slot)
            self.start(p, new, slot, r_new)
        self.settle(p, surge)
        p.stopped.discard(surge)
        self.stop(p, surge, " (surge, no longer needed)")
        p.started.discard(surge)
        for slot in sorted(running, reverse=True):
            if slot > surge:
                p.stopped.add(slot)
                self.stop(p, slot, f" (above {r_new} replicas)")

    def start_all(self, steps: list[Progress]) -> None:
        for p in steps:
            self.roll(p)
            p.done = True

    def restore(self, p: Progress) -> None:
        """Back to the old definition for what p did (old files are installed again)."""
        name, old, new = p.name, p.old, p.new
        if p.done and old is not None and new is not None and _changed(old, new):
            # A service rolled out completely: roll the old definition out the same way.
            back = Progress(name, new, old)
            self.roll(back)
            return
        r_old = old["replicas"] if old else 0
        # The new containers that never became healthy go first; then the old replicas come
        # back where nothing serves, then where a new one serves (one at a time, each healthy
        # before the next); the new ones beyond the old replica count go last.
        for slot in sorted(p.started, reverse=True):
            if slot not in p.serving:
                self.stop(p, slot, " (rolling back)")
        back = [
            slot
            for slot in sorted(p.started | p.stopped)
            if slot <= r_old and (slot in p.stopped or _changed(old, new))
        ]
        for slot in sorted(back, key=lambda slot: (slot in p.serving, slot)):
            if slot in p.serving:
                self.settle(p, slot)
                self.stop(p, slot, " (rolling back)")
            if old is not None:
                self.start(p, old, slot, r_old)
        for slot in sorted(p.started, reverse=True):
            if slot > r_old and slot in p.serving:
                self.settle(p, slot)
                self.stop(p, slot, " (rolling back)")

    def remove(self, name: str, old: dict) -> None:
        self.say(f"{name}: removed from the release; stopping it")
        for slot in sorted(self.running_slots(name, old["replicas"] + 1), reverse=True):
            self.run(["systemctl", "stop", self.unit(name, slot)], timeout=STOP_SECONDS + 60)

    def finish(self, doc: dict, changed: set[str]) -> None:
        if doc["files"].get(f"{UNITS}{APP_TARGET}") is not None:
            self.run(["systemctl", "start", APP_TARGET], timeout=1800)

    def activate(self, doc: dict) -> Result:
        self.say(f"starting {APP_TARGET}")
        return self.run(["systemctl", "start", APP_TARGET], timeout=1800)


class Compose(Driver):
    """compose: the app-compose wrapper around `docker compose`, replicas as containers."""

    def compose(self, *args: str, timeout: float = 1800):
        return self.run([WRAPPER, *args], timeout=timeout)

    def containers(self, name: str) -> list[dict]:
        """The service's containers (any state), oldest number first."""
        app = self.agent.app
        listing = self.run(
            [
                "docker",
                "ps",
                "--all",
                "--quiet",
                "--no-trunc",
                "--filter",
                f"label=com.docker.compose.project={app}",
                "--filter",
                f"label=com.docker.compose.service={name}",
            ],
            timeout=60,
        )
        ids = listing.out.split()
        if not ids:
            return []
        found = self.run(["docker", "inspect", *ids], timeout=60)
        try:
            data = json.loads(found.out) if found.ok else []
        except ValueError:
            data = []
        out = []
        for c in data:
            labels = (c.get("Config") or {}).get("Labels") or {}
            state = c.get("State") or {}
            health = state.get("Health")
            log = (health or {}).get("Log") or []
            networks = (c.get("NetworkSettings") or {}).get("Networks") or {}
            out.append(
                {
                    "id": c.get("Id", ""),
                    "alias": labels.get(PROXY_LABEL) or None,
                    "networks": sorted(networks),
                    "name": str(c.get("Name", "")).lstrip("/"),
                    "number": int(labels.get("com.docker.compose.container-number", "0") or 0),
                    "running": bool(state.get("Running")),
                    "started": state.get("StartedAt", ""),
                    "health": None if health is None else health.get("Status"),
                    "probe": log[-1] if log else None,
                }
            )
        return sorted(out, key=lambda c: c["number"])

    def pull(self, services: list[dict]) -> None:
        if not services:
            return
        names = [svc["name"] for svc in services]
        self.say(f"pulling {', '.join(names)}")
        pulled = self.compose("pull", "--quiet", *names)
        if pulled.ok:
            return
        for svc in services:
            if not self.run(["docker", "image", "inspect", svc["image"]], timeout=60).ok:
                raise PullFailed(
                    f"{svc['name']}: image {svc['image']} could not be pulled "
                    f"({pulled.last_line()})"
                )
        self.say(f"pulling failed ({pulled.last_line()}); using the copies here")

    @staticmethod
    def _proxy_definition(doc: dict):
        text = (doc["files"].get(COMPOSE_FILE) or {}).get("text")
        if text is None:
            return None
        try:
            return ((yaml.safe_load(text) or {}).get("services") or {}).get(PROXY_SERVICE)
        except (yaml.YAMLError, AttributeError):
            return None

    def proxy(self, old: dict, new: dict, changed: set[str]) -> None:
        definition = self._proxy_definition(new)
        if definition is None:
            return  # a proxy the release no longer has goes with the orphans (finish)
        running = any(c["running"] for c in self.containers(PROXY_SERVICE))
        if definition != self._proxy_definition(old) or not running:
            self.say("proxy: starting Caddy with the release's definition")
            result = self.compose("up", "--detach", "--no-deps", PROXY_SERVICE)
        elif CADDY_CONFIG in changed:
            self.say("proxy: reloading Caddy with the release's routes")
            result = self.compose(
                "exec",
                "-T",
                PROXY_SERVICE,
                "caddy",
                "reload",
                "--config",
                "/etc/caddy/caddy.json",
                timeout=120,
            )
        else:
            return
        if not result.ok:
            raise Unhealthy(
                "the proxy (Caddy)", None, f"refused its configuration: {result.last_line()}"
            )

    def refresh(self, name: str) -> float:
        """How often Caddy looks the service's name up again (its dynamic A upstreams): a
        stopped container stays among its upstreams for up to this long."""
        try:
            config = json.loads(self.node.read(CADDY_CONFIG) or "null")
        except ValueError:
            return 0.0
        longest = 0.0
        for proxy in _proxies(config):
            dynamic = proxy.get("dynamic_upstreams") or {}
            if dynamic.get("name") == name:
                longest = max(
                    longest, parse_duration(dynamic.get("refresh", "1m")) or DEFAULT_REFRESH
                )
        return longest

    def wait_healthy(self, name: str, svc: dict, ids: list[str]) -> None:
        """Wait until every container in ids is healthy (no health check: still running
        STABLE_SECONDS after it started); Unhealthy with the last probe's output if not."""
        health = svc["health"]
        budget = health["budget"] if health else NO_HEALTH_START
        deadline = self.node.now() + budget
        seen: dict[str, tuple[str, float]] = {}
        pending = list(ids)
        while True:
            by_id = {c["id"]: c for c in self.containers(name)}
            last = ""
            for cid in list(pending):
                c = by_id.get(cid)
                if c is None:
                    last = f"container {cid[:12]} is gone"
                    continue
                if not c["running"]:
                    last = f"{c['name']}: not running"
                    seen.pop(cid, None)
                    continue
                if health is not None:
                    if c["health"] == "healthy":
                        pending.remove(cid)
                        self.say(f"{name}: {c['name']} healthy")
                        continue
                    last = f"{c['name']}: {self._probe(c)}"
                    if c["health"] == "unhealthy":
                        raise Unhealthy(name, budget, last)
                    continue
                start = seen.get(cid)
                if start is None or start[0] != c["started"]:
                    seen[cid] = (c["started"], self.node.now())
                elif self.node.now() - start[1] >= STABLE_SECONDS:
                    pending.remove(cid)
                    self.say(f"{name}: {c['name']} running")
                    continue
                last = f"{c['name']}: running for less than {STABLE_SECONDS} s"
            if not pending:
                self.admit(name, ids)
                return
            if self.node.now() >= deadline:
                raise Unhealthy(name, budget, last)
            self.node.sleep(1)

    def admit(self, name: str, ids: list[str]) -> None:
        """Healthy containers of a routed service join the proxy's network under the service's
        name: only from then on does Caddy's lookup of the name find them."""
        network = f"{self.agent.app}{PROXY_NETWORK_SUFFIX}"
        by_id = {c["id"]: c for c in self.containers(name)}
        for cid in ids:
            c = by_id.get(cid)
            if c is None or not c["alias"] or network in c["networks"]:
                continue
            joined = self.run(
                ["docker", "network", "connect", "--alias", c["alias"], network, cid], timeout=60
            )
            if not joined.ok:
                raise Unhealthy(
                    name, None, f"{c['name']} could not join {network}: {joined.last_line()}"
                )
            self.say(f"{name}: {c['name']} joined the proxy's network")

    @staticmethod
    def _probe(c: dict) -> str:
        probe = c.get("probe")
        if not probe:
            return f"health {c.get('health') or 'unknown'}, no probe finished yet"
        output = " ".join(str(probe.get("Output", "")).split())[:200]
        return f"health check exited {probe.get('ExitCode')}" + (f": {output}" if output else "")

    def _remove(self, p: Progress, container: dict, why: str) -> None:
        self.say(f"{p.name}: stopping {container['name']}{why}")
        self.run(
            ["docker", "stop", "--time", str(STOP_SECONDS), container["id"]],
            timeout=STOP_SECONDS + 60,
        )
        self.run(["docker", "rm", "--force", container["id"]], timeout=60)
        p.removed.append(container["id"])

    def _scale(self, name: str, count: int, *flags: str):
        result = self.compose(
            "up", "--detach", "--no-deps", *flags, "--scale", f"{name}={count}", name
        )
        if not result.ok:
            raise Unhealthy(name, None, f"docker compose up failed: {result.last_line()}")

    def _created(self, name: str, before: set[str], expected: int) -> list[str]:
        created = [c["id"] for c in self.containers(name) if c["id"] not in before]
        if len(created) < expected:
            raise Unhealthy(
                name, None, f"docker compose created {len(created)} of {expected} containers"
            )
        return created

    def roll(self, p: Progress) -> None:
        old, new, name = p.old, p.new, p.name
        assert new is not None
        r_new = new["replicas"]
        before = self.containers(name)
        before_ids = {c["id"] for c in before}
        if old is not None and not _changed(old, new):
            if r_new == old["replicas"]:
                return
            self.say(f"{name}: replicas {old['replicas']} -> {r_new} (definition unchanged)")
            self._scale(name, r_new, "--no-recreate")
            p.created = self._created(name, before_ids, max(0, r_new - len(before)))
            self.wait_healthy(name, new, p.created)
            return
        if old is None or new["rollout"] == "restart" or old["rollout"] == "restart":
            if old is None:
                self.say(f"{name}: starting {r_new} container(s)")
                self._scale(name, r_new)
            else:
                self.say(f"{name}: recreating ({describe(old, new)}); it is down meanwhile")
                p.removed = sorted(before_ids)
                self._scale(name, r_new, "--force-recreate")
            p.created = self._created(name, before_ids, r_new)
            self.wait_healthy(name, new, p.created)
            return
        # docker-rollout: the new containers beside the old ones, healthy first; then the old
        # ones go, one at a time, each once the proxy has let go of the one before.
        self.say(
            f"{name}: rolling out ({describe(old, new)}), {r_new} new beside {len(before)} old"
        )
        self._scale(name, len(before) + r_new, "--no-recreate")
        p.created = self._created(name, before_ids, r_new)
        self.wait_healthy(name, new, p.created)
        # Only now (healthy, admitted) can the proxy find them: give it one lookup.
        refresh = self.refresh(name)
        wait = refresh + SETTLE_MARGIN
        if refresh:
            self.say(f"{name}: waiting {wait:.1f} s for the proxy to look up the new containers")
            self.node.sleep(wait)
        for i, container in enumerate(before):
            self._remove(p, container, " (old version)")
            if refresh and i < len(before) - 1 and container["running"]:
                self.node.sleep(refresh + SETTLE_MARGIN)

    def start_all(self, steps: list[Progress]) -> None:
        """A first release: one `up` for every service, which Compose starts in dependency
        order (a dependent once its dependencies are healthy), then each checked in turn. Docker
        reports a container healthy only after its first probe interval, so starting services
        one after another would add those intervals up."""
        names = [p.name for p in steps]
        self.say(f"starting {', '.join(names)}")
        scales = [f"--scale={p.name}={p.new['replicas']}" for p in steps if p.new]
        started = self.compose("up", "--detach", *scales, *names)
        for p in steps:
            p.created = [c["id"] for c in self.containers(p.name)]
        for p in steps:
            assert p.new is not None
            if not started.ok and len(p.created) < p.new["replicas"]:
                raise Unhealthy(p.name, None, f"docker compose up failed: {started.last_line()}")
            self.wait_healthy(p.name, p.new, p.created)
            p.done = True

    def restore(self, p: Progress) -> None:
        name, old, new = p.name, p.old, p.new
        if p.done and old is not None and new is not None and _changed(old, new):
            self.roll(Progress(name, new, old))
            return
        # Whatever this release created goes; then the old definition where it was removed.
        removed_old = bool(p.removed)
        current = {c["id"]: c for c in self.containers(name)}
        for cid in reversed(p.created):
            if cid in current:
                self._remove(p, current[cid], " (rolling back)")
        if old is None:
            return
        if removed_old or len(self.containers(name)) != old["replicas"]:
            before = {c["id"] for c in self.containers(name)}
            # Without --no-recreate: a container of the new definition left by a recreate that
            # failed halfway is recreated as the old one; the old ones match and stay.
            self._scale(name, old["replicas"])
            self.wait_healthy(
                name, old, [c["id"] for c in self.containers(name) if c["id"] not in before]
            )

    def remove(self, name: str, old: dict) -> None:
        self.say(f"{name}: removed from the release; stopping it")
        p = Progress(name, old, None)
        for container in self.containers(name):
            self._remove(p, container, "")

    def finish(self, doc: dict, changed: set[str]) -> None:
        # A proxy the release no longer has.
        if self._proxy_definition(doc) is None:
            p = Progress(PROXY_SERVICE, None, None)
            for container in self.containers(PROXY_SERVICE):
                self._remove(p, container, " (the release has no public routes)")
        if not self.run(["systemctl", "is-active", "--quiet", COMPOSE_UNIT], timeout=60).ok:
            self.say(f"starting {COMPOSE_UNIT}")
            self.run(["systemctl", "start", COMPOSE_UNIT], timeout=1800)

    def activate(self, doc: dict) -> Result:
        self.say(f"starting {COMPOSE_UNIT}")
        return self.run(["systemctl", "start", COMPOSE_UNIT], timeout=1800)


DRIVERS = {"single-vm": SingleVm, "compose": Compose}


class Agent:
    def __init__(self, node: Node, out=None, err=None):
        self.node = node
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.store = Store(node)
        self.started = node.now()
        self.app: str | None = None

    def say(self, message: str) -> None:
        self._write(self.out, f"[{self.node.now() - self.started:5.1f}s] {message}")

    def fail(self, message: str) -> None:
        self._write(self.err, message)

    @staticmethod
    def _write(stream, line: str) -> None:
        # The SSH session may be gone (a cancelled `pulumi up`): a rollout half done must still
        # finish or roll back, so a line nobody can read any more is dropped, not an error.
        with contextlib.suppress(OSError, ValueError):
            print(line, file=stream, flush=True)

    # --- files ---

    def installed(self) -> set[str]:
        try:
            paths = json.loads(self.node.read(INSTALLED) or "[]")
        except ValueError:
            return set()
        return {p for p in paths if isinstance(p, str)} if isinstance(paths, list) else set()

    def install(self, files: dict[str, dict]) -> set[str]:
        """Write every file whose text or mode differs; the paths written."""
        changed = set()
        for path in sorted(files):
            entry = files[path]
            mode = int(entry["mode"], 8)
            if self.node.read(path) == entry["text"] and self.node.mode(path) == mode:
                continue
            self.node.makedirs(
                posixpath.dirname(path), 0o700 if path.startswith(SECRETS_DIR) else 0o755
            )
            self.node.write(path, entry["text"], mode, in_place=path in IN_PLACE)
            changed.add(path)
        if changed:
            self.say(f"installed {len(changed)} changed file(s)")
        return changed

    def _docker_config(self, entry: dict | None):
        """With entry (the release's docker config.json), install it now, ahead of the other
        files, for the pulls; then (in any case) let every command read the node's credentials
        (DOCKER_CONFIG) while it has some. Returns what puts the previous file back."""
        before, mode = self.node.read(DOCKER_CONFIG_FILE), self.node.mode(DOCKER_CONFIG_FILE)

        def undo() -> None:
            if entry is not None and before is None:
                self.node.remove(DOCKER_CONFIG_FILE)
            elif entry is not None and (before, mode) != (entry["text"], int(entry["mode"], 8)):
                self.node.write(DOCKER_CONFIG_FILE, before or "", mode or 0o600)
            self._docker_config(None)

        if entry is not None:
            self.install({DOCKER_CONFIG_FILE: entry})
        if self.node.exists(DOCKER_CONFIG_FILE):
            self.node.env["DOCKER_CONFIG"] = DOCKER_CONFIG
        else:
            self.node.env.pop("DOCKER_CONFIG", None)
        return undo

    def run_tasks(self, doc: dict) -> None:
        """The release's tasks, in order; TaskFailed for the first that fails or runs out of
        time (its last output lines shown)."""
        for task in doc.get("tasks", []):
            name, timeout = task["name"], task["timeout"]
            self.say(f"task {name}: running (at most {timeout} s)")
            began = self.node.now()
            result = self.node.run(list(task["argv"]), timeout=timeout + TASK_GRACE)
            if result.ok:
                self.say(f"task {name}: done in {self.node.now() - began:.0f} s")
                continue
            lines = [ln for ln in (result.out + "\n" + result.err).splitlines() if ln.strip()]
            for line in lines[-TASK_LINES:]:
                self.say(f"task {name} | {line}")
            if result.code == 124:
                raise TaskFailed(name, f"did not finish within {timeout} s")
            raise TaskFailed(name, f"failed with exit status {result.code}: {result.last_line()}")

    def prune_files(self, keep: dict[str, dict], also: set[str]) -> set[str]:
        """Remove the files an earlier release installed that this one does not have."""
        removed = set()
        for path in sorted((self.installed() | also) - set(keep)):
            if any(path.startswith(root) for root in RELEASE_ROOTS) and self.node.remove(path):
                removed.add(path)
        if removed:
            self.say(f"removed {len(removed)} file(s) of the previous release")
        return removed

    def remember(self, files: dict[str, dict]) -> None:
        self.node.makedirs(posixpath.dirname(INSTALLED), 0o755)
        self.node.write(INSTALLED, json.dumps(sorted(files), indent=0) + "\n", 0o644)

    def volumes(self, doc: dict) -> None:
        for volume in doc["volumes"]:
            path = f"{DATA}/{volume}"
            if not self.node.exists(path):
                # Never chmod-ed later: the container decides who owns its data.
                self.node.makedirs(path, 0o777)
                self.say(f"created the volume directory {path}")

    def daemon_reload(self) -> None:
        self.node.run(["systemctl", "daemon-reload"], timeout=120)

    def _units(self, doc: dict, changed: set[str]) -> None:
        for unit in doc["units"]:
            verb = "restart" if f"{UNITS}{unit}" in changed else "start"
            self.node.run(["systemctl", verb, unit], timeout=300)

    def _restart_changed_timers(self, doc: dict, changed: set[str]) -> None:
        for path in sorted(changed):
            unit = path[len(UNITS) :] if path.startswith(UNITS) else ""
            if unit.endswith(".timer") and unit not in doc["units"]:
                self.node.run(["systemctl", "try-restart", unit], timeout=120)

    def _stop_removed_units(self, old: dict, new: dict) -> None:
        for path in sorted(set(old["files"]) - set(new["files"])):
            unit = path[len(UNITS) :] if path.startswith(UNITS) else ""
            if UNIT_NAME.fullmatch(unit) and "@." not in unit and unit != APP_TARGET:
                self.node.run(["systemctl", "stop", unit], timeout=300)

    # --- checks ---

    def _check_mounted(self, rid: str) -> None:
        if not self.node.is_mounted(DATA):
            raise Refused(
                f"release {rid}: {DATA} is not mounted, so this node does not hold the data "
                "volume; deploy to the node that does (the floating IP's)"
            )

    def _check_node(self, doc: dict, current: dict | None) -> None:
        rid = doc["release"]
        has_wrapper = self.node.exists(WRAPPER)
        if doc["rung"] == "compose" and not has_wrapper:
            raise Refused(
                f"release {rid} is for the compose blueprint, but this node has no {WRAPPER} "
                "(it was not bootstrapped for compose)"
            )
        if doc["rung"] == "single-vm" and has_wrapper:
            raise Refused(
                f"release {rid} is for the single-vm blueprint, but this node was bootstrapped "
                "for compose"
            )
        if current is not None and current["app"] != doc["app"]:
            raise Refused(
                f"release {rid} is for app {doc['app']!r}, but this node runs app "
                f"{current['app']!r}; a renamed app needs new machines"
            )

    # --- commands ---

    def secrets(self, text: str) -> int:
        body = check_secrets(text)
        with self.node.lock(self.say):
            if not self.node.is_mounted(DATA):
                raise Refused(
                    f"{DATA} is not mounted, so this node does not hold the data volume; send the "
                    "secrets to the node that does"
                )
            if self.store.save_secrets(body, text):
                self.say(f"kept secrets document {body['digest']} ({len(body['files'])} file(s))")
            else:
                self.say(f"secrets document {body['digest']} is already here")
        return 0

    def deploy(self, text: str) -> int:
        doc = check_release(text)
        with self.node.lock(self.say):
            return self._deploy(doc, text)

    def rollback(self, target: str | None) -> int:
        with self.node.lock(self.say):
            current = self.store.current()
            if target is None:
                history = self.store.history()
                while history and history[-1] == current:
                    history.pop()
                kept = set(self.store.kept())
                earlier = [rid for rid in history if rid != current and rid in kept]
                if not earlier:
                    raise Refused(
                        "no earlier release is kept on this volume to roll back to "
                        f"(current: {current or 'none'})"
                    )
                target = earlier[-1]
            elif not HEX16.fullmatch(target):
                raise Refused(f"{target!r} is not a release id (16 hex digits)")
            text = self.node.read(f"{STATE}/releases/{target}.yaml")
            doc = self.store.release(target)
            self.say(f"rolling back to release {target}")
            # Its tasks ran when it was deployed; an older migration run again over a newer
            # database could fail the very rollback that is needed.
            return self._deploy(doc, text or "", tasks=False)

    def _deploy(self, doc: dict, text: str, tasks: bool = True) -> int:
        rid = doc["release"]
        self._check_mounted(rid)
        prev_id = self.store.current()
        try:
            old = self.store.release(prev_id) if prev_id else EMPTY
        except Refused as exc:
            raise Refused(
                f"{exc}; to deploy over it as over a first release, remove {STATE}/current"
            ) from None
        self._check_node(doc, old if prev_id else None)
        secrets = self.store.secrets(doc["secrets"], rid)
        old_secrets = (
            self.store.secrets(old["secrets"], prev_id or "") if prev_id else {"files": {}}
        )
        self.app = doc["app"]
        driver = DRIVERS[doc["rung"]](self)
        olds, news = by_name(old), by_name(doc)
        if prev_id == rid:
            self.say(f"release {rid} is already current; making sure it runs as released")
        else:
            self.say(f"release {rid} (was {prev_id or 'none'}), {doc['rung']}, app {doc['app']}")
        for name, new in news.items():
            self.say(f"  {name}: {describe(olds.get(name), new)}")
        for name in olds:
            if name not in news:
                self.say(f"  {name}: removed")

        changed_services = [s for s in doc["services"] if _changed(olds.get(s["name"]), s)]
        # The pulls need the release's registry credentials, before its other files.
        undo_config = self._docker_config(secrets["files"].get(DOCKER_CONFIG_FILE))
        try:
            driver.pull(changed_services)
        except PullFailed as exc:
            undo_config()
            self.fail(
                f"release {rid}: {exc}; nothing was changed, "
                f"{'still on release ' + prev_id if prev_id else 'no release runs'}"
            )
            return 1

        new_files = {**doc["files"], **secrets["files"]}
        old_files = {**old["files"], **old_secrets["files"]}
        steps: list[Progress] = []
        changed: set[str] = set()
        try:
            changed = self.install(new_files)
            self._docker_config(None)
            self.volumes(doc)
            self.daemon_reload()
            if prev_id == rid or not tasks:
                if doc.get("tasks"):
                    why = "a rollback" if not tasks else "the release already current"
                    self.say(f"tasks: not run again for {why}")
            else:
                # Services the tasks need that this release brings new: they replace nothing.
                needed = {n for task in doc.get("tasks", []) for n in task.get("needs", [])}
                for svc in doc["services"]:
                    if svc["name"] in needed and svc["name"] not in olds:
                        p = Progress(svc["name"], None, svc)
                        steps.append(p)
                        driver.roll(p)
                        p.done = True
                self.run_tasks(doc)
            driver.proxy(old, doc, changed)
            begun = {p.name for p in steps}
            rest = [svc for svc in doc["services"] if svc["name"] not in begun]
            if not olds and rest:
                # Nothing runs yet: start everything at once (each after what it depends on).
                first = [Progress(svc["name"], None, svc) for svc in rest]
                steps += first
                driver.start_all(first)
            else:
                for svc in rest:
                    p = Progress(svc["name"], olds.get(svc["name"]), svc)
                    steps.append(p)
                    driver.roll(p)
                    p.done = True
        except TaskFailed as exc:
            self._go_back(driver, old, doc, old_files, new_files, steps, changed)
            self._docker_config(None)
            if prev_id:
                self.fail(
                    f"release {rid}: {exc}; rolled back to {prev_id}, which kept serving: no "
                    "container was replaced"
                )
            else:
                self.fail(
                    f"release {rid}: {exc}; this node had no release before, so there is "
                    "nothing to roll back to: the release's files are removed"
                )
            return 1
        except Unhealthy as exc:
            self._go_back(driver, old, doc, old_files, new_files, steps, changed)
            within = f" within {exc.seconds:.0f} s" if exc.seconds is not None else ""
            cause = (
                f"{exc.what} did not become healthy{within} ({exc.last})"
                if exc.what != "the proxy (Caddy)"
                else f"{exc.what} {exc.last}"
            )
            if prev_id:
                self.fail(f"release {rid}: {cause}; rolled back to {prev_id}")
            else:
                self.fail(
                    f"release {rid}: {cause}; this node had no release before, so there is "
                    "nothing to roll back to: the release's containers are stopped and its "
                    "files removed"
                )
            return 1
        except Exception as exc:  # a full disk, a file in the way: undo what can be undone
            cause = f"{exc.__class__.__name__}: {exc}"
            self.say(f"unexpected error: {cause}")
            try:
                self._go_back(driver, old, doc, old_files, new_files, steps, changed)
            except Exception as again:
                self.fail(
                    f"release {rid}: {cause}; rolling back failed too ({again.__class__.__name__}"
                    f": {again}); the node's state is unknown: see `release-agent status`, then "
                    "roll back or deploy again"
                )
                return 3
            self.fail(f"release {rid}: {cause}; rolled back to {prev_id or 'nothing'}")
            return 3

        for name, svc in olds.items():
            if name not in news:
                driver.remove(name, svc)
        self._stop_removed_units(old, doc)
        if self.prune_files(new_files, set(old_files)):
            self.daemon_reload()
        self.remember(new_files)
        self._restart_changed_timers(doc, changed)
        driver.finish(doc, changed)
        self._units(doc, changed)
        self.store.record(doc, text)
        self.say(f"release {rid} is live")
        return 0

    def _go_back(self, driver, old, new, old_files, new_files, steps, changed) -> None:
        """Undo a failed rollout: the previous release's files, every service touched, the
        proxy; `current` stays the previous release."""
        self.say(f"rolling back to {old['release'] or 'nothing (first release)'}")
        # The previous files first (the old definitions restart from them); the new release's
        # own files go only after its services are stopped, so their units can still stop them.
        back = self.install(old_files)
        self.daemon_reload()
        for p in reversed(steps):
            try:
                driver.restore(p)
            except Unhealthy as exc:
                self.say(
                    f"{p.name}: the previous version did not come back healthy either ({exc.last})"
                )
        try:
            driver.proxy(new, old, back | changed)
        except Unhealthy as exc:
            self.say(f"proxy: {exc.last}")
        if isinstance(driver, Compose) and driver._proxy_definition(old) is None:
            p = Progress(PROXY_SERVICE, None, None)
            for container in driver.containers(PROXY_SERVICE):
                driver._remove(p, container, " (rolling back)")
        if self.prune_files(old_files, set(new_files)):
            self.daemon_reload()
        self.remember(old_files)

    def activate(self) -> int:
        with self.node.lock(self.say):
            if not self.node.is_mounted(DATA):
                raise Refused(f"{DATA} is not mounted; there is no release to start without it")
            rid = self.store.current()
            if rid is None:
                self.say(
                    "no release on the data volume yet; nothing to start (the first "
                    "deploy brings the app)"
                )
                return 0
            doc = self.store.release(rid)
            secrets = self.store.secrets(doc["secrets"], rid)
            self.app = doc["app"]
            files = {**doc["files"], **secrets["files"]}
            self.say(f"activating release {rid} ({doc['rung']}, app {doc['app']})")
            changed = self.install(files)
            self.prune_files(files, set())
            self.remember(files)
            self._docker_config(None)
            self.volumes(doc)
            self.daemon_reload()
            started = DRIVERS[doc["rung"]](self).activate(doc)
            self._units(doc, changed)
            if not started.ok:
                self.fail(f"release {rid}: the app did not start: {started.last_line()}")
                return 1
            self.say(f"release {rid} started")
            return 0

    def status(self) -> int:
        rid = self.store.current()
        if rid is None:
            print("no release on this node's data volume yet", file=self.out)
            return 0
        doc = self.store.release(rid)
        print(f"current: {rid} ({doc['rung']}, app {doc['app']})", file=self.out)
        print(f"history (newest last): {' '.join(self.store.history())}", file=self.out)
        print(f"kept: {' '.join(self.store.kept())}", file=self.out)
        print("services:", file=self.out)
        width = max((len(s["name"]) for s in doc["services"]), default=0)
        for svc in doc["services"]:
            print(
                f"  {svc['name']:<{width}}  digest {svc['digest']}  {svc['replicas']} x "
                f"{svc['image']}  ({svc['rollout']})",
                file=self.out,
            )
        return 0


USAGE = (
    "usage: release-agent secrets|deploy (document on stdin) | activate | rollback [ID] | status"
)


def main(
    argv: list[str] | None = None, node: Node | None = None, stdin=None, out=None, err=None
) -> int:
    args = sys.argv[1:] if argv is None else argv
    agent = Agent(node or Node(os.environ.get("BLUEPRINTS_RELEASE_ROOT", "/")), out, err)
    command = args[0] if args else ""
    try:
        if command in ("secrets", "deploy") and len(args) == 1:
            text = (stdin or sys.stdin).read()
            return agent.secrets(text) if command == "secrets" else agent.deploy(text)
        if command == "activate" and len(args) == 1:
            return agent.activate()
        if command == "rollback" and len(args) <= 2:
            return agent.rollback(args[1] if len(args) == 2 else None)
        if command == "status" and len(args) == 1:
            return agent.status()
        agent.fail(USAGE)
        return 2
    except Refused as exc:
        agent.fail(f"release-agent {command}: {exc}")
        return 2
    except Exception as exc:
        agent.fail(
            f"release-agent {command}: internal error ({exc.__class__.__name__}: {exc}); "
            "see `release-agent status`"
        )
        return 3


if __name__ == "__main__":
    # The SSH session that started a rollout may hang up; the rollout finishes (or rolls back)
    # all the same.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    sys.exit(main())
