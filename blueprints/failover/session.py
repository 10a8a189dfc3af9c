"""Everything `watch`, `promote` and `park` need for one stack: settings, spec, cloud client.

Credentials come from the environment, as in a CI job: HCLOUD_TOKEN for Hetzner (the same
token as `hcloud:token`), the usual AWS variables or profile for AWS. LocalStack gets test
credentials and its endpoint from the stack. HCLOUD_ENDPOINT points the Hetzner client
elsewhere (an API proxy, or a test server).

Bounded everything:
* one cloud API request takes at most `apiTimeout` seconds (connect, and each read), and the
  SDKs' own retry loops are off: the callers retry, knowing their budget;
* one health probe takes at most `probeTimeout` seconds in total (blueprints.failover.health);
* a whole command has a budget (`promote_budget`, `park_budget`); a command still running
  `grace` past it is stopped where it is by `deadline` (exit 1; a promotion then marks its
  lock failed within one more apiTimeout, best effort, so a rerun resumes at once; failing
  that, its lock expires after `lockTtl`).
"""

from __future__ import annotations

import os
import queue
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from blueprints.failover.cloud import Cloud
from blueprints.failover.health import http_check, http_probe
from blueprints.failover.record import record_active
from blueprints.plan import read_project, read_stack_file
from blueprints.settings import BACKUP_SECRET_KEY, NAMESPACE, StackSettings, parse_settings
from blueprints.spec import AppSpec, SpecError, load_spec

# Cloud round trips or awaited actions a promotion makes besides its health wait: the lock
# (create, settle read-back, a refresh before every step, delete), the state reads, and the
# six moving steps (boot, fence, unassign, detach, attach, assign), each allowed apiTimeout.
PROMOTE_CALLS = 20
# park: the lock (create, read back, delete), a state read and an awaited power-off.
PARK_CALLS = 10


def promote_budget(settings: StackSettings) -> float:
    """promoteTimeout (the new node's boot and health wait) + 20 x apiTimeout.

    Defaults: 300 + 20 x 10 = 500 s. Passed to the promotion as Options.budget: past it, the
    promotion stops before its next step (exit 1, its lock marked failed, a rerun resumes)."""
    return float(settings.promote_timeout + PROMOTE_CALLS * settings.api_timeout)


def park_budget(settings: StackSettings) -> float:
    """10 x apiTimeout (defaults: 100 s)."""
    return float(PARK_CALLS * settings.api_timeout)


def grace(settings: StackSettings) -> float:
    """How long past its budget a command may take before it is stopped where it is: one
    more API request (the promotion marking its lock failed) and 5 s."""
    return float(settings.api_timeout + 5)


class DeadlineExceeded(BaseException):
    """Raised in the main thread when a command's hard deadline passes.

    A BaseException, like KeyboardInterrupt, so that no `except Exception` (or CloudError) on
    the way swallows it: the command stops where it is, as if killed, and says so."""


@contextmanager
def deadline(seconds: float | None, message: str) -> Iterator[None]:
    """Raise DeadlineExceeded(message) in the main thread after `seconds` (SIGALRM).

    A blocking socket call is interrupted too. Outside the main thread (no signals there),
    or with `seconds` None, it bounds nothing. Not reentrant: one deadline at a time."""
    if seconds is None or threading.current_thread() is not threading.main_thread():
        yield
        return

    def fire(_signum: int, _frame: Any) -> None:
        raise DeadlineExceeded(message)

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Notifier:
    """POST {"text", "stack", "event"} (Slack/Mattermost style) to a webhook, in order, from a
    background thread, so a slow webhook never holds up the watchdog. Each POST may take
    `timeout` seconds; `close` waits for the queue at most `timeout` + 1 s per message. A
    failed notification is a warning, never an error."""

    def __init__(self, url: str, stack: str, timeout: float, warn: Callable[[str], None]):
        self.url = url
        self.stack = stack
        self.timeout = timeout
        self.warn = warn
        self.queue: queue.Queue[tuple[str, str] | None] = queue.Queue()
        self.pending = 0
        self.thread: threading.Thread | None = None

    def __call__(self, event: str, text: str) -> None:
        self.pending += 1
        self.queue.put((event, text))
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, daemon=True, name="notify")
            self.thread.start()

    def _run(self) -> None:
        while (item := self.queue.get()) is not None:
            self._post(*item)

    def _post(self, event: str, text: str) -> None:
        import json
        import urllib.request

        body = json.dumps({"text": text, "stack": self.stack, "event": event}).encode()
        headers = {"Content-Type": "application/json"}
        req = urllib.request.Request(self.url, body, headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout):
                pass
        except (OSError, ValueError) as exc:
            self.warn(f"notifying {self.url} failed: {exc}")

    def close(self) -> None:
        if self.thread is None:
            return
        self.queue.put(None)
        self.thread.join(self.pending * (self.timeout + 1))
        if self.thread.is_alive():
            self.warn(f"notifying {self.url}: gave up waiting after {self.timeout:g}s")


@dataclass
class Session:
    stack: str
    project_dir: Path
    stack_file: Path
    settings: StackSettings
    app: AppSpec
    cloud: Cloud
    probe: Callable[[str], bool]
    check: Callable[[str], tuple[bool, str]] | None = None
    use_pulumi: bool = True

    def record(self, node: str) -> str:
        return record_active(
            self.project_dir, self.stack, self.stack_file, node, use_pulumi=self.use_pulumi
        )

    @property
    def health_port(self) -> int:
        """The port the health URL connects to (443 for the default https://{domain}{path})."""
        parts = urlsplit(self.settings.health_url.format(address="192.0.2.1", domain="x", path="/"))
        return parts.port or (443 if parts.scheme == "https" else 80)


def stack_settings(project_dir: Path, stack: str) -> tuple[Path, Path, StackSettings]:
    """(the stack file, its path relative to the project, its settings), checked."""
    _, stacks_dir, _ = read_project(project_dir)
    path, rel, config = read_stack_file(stacks_dir, stack, project_dir)
    prefix = f"{NAMESPACE}:"
    # (the app's secrets and the backup's secret key are not settings)
    raw: dict[str, Any] = {
        k[len(prefix) :]: v
        for k, v in config.items()
        if k.startswith(prefix) and k not in (f"{prefix}secrets", f"{prefix}{BACKUP_SECRET_KEY}")
    }
    return path, rel, parse_settings(raw, str(rel))


def read_stack(project_dir: Path, stack: str) -> tuple[Path, StackSettings, AppSpec]:
    path, rel, settings = stack_settings(project_dir, stack)
    if settings.blueprint != "single-vm":
        raise SpecError(
            [f"{rel}: failover applies to the single-vm blueprint, not {settings.blueprint}"]
        )
    app = load_spec(project_dir / settings.spec)
    return path, settings, app


def hcloud_cloud(
    app: AppSpec,
    stack: str,
    token: str | None = None,
    endpoint: str | None = None,
    timeout: float = 10.0,
) -> Cloud:
    from hcloud import Client

    from blueprints.failover.hcloud_cloud import HcloudCloud

    # A token pasted with a trailing newline or carriage return (an env file written on
    # Windows) would make every request fail with an error quoting the token.
    token = (token or os.environ.get("HCLOUD_TOKEN") or "").strip()
    if not token:
        raise SpecError(
            ["HCLOUD_TOKEN is not set; export the Hetzner Cloud API token of the project"]
        )
    endpoint = endpoint or os.environ.get("HCLOUD_ENDPOINT") or "https://api.hetzner.cloud/v1"
    client = Client(
        token=token, api_endpoint=endpoint, application_name="blueprints", timeout=timeout
    )
    # The SDK retries a timed-out request 5 times with backoff up to 60 s (hcloud 2.x), which
    # no budget can see; our callers retry instead. (tests/test_failover_watch.py checks the
    # attribute still exists, so an SDK upgrade that renames it fails there.)
    for base in (getattr(client, "_client", None), getattr(client, "_client_hetzner", None)):
        if base is not None and hasattr(base, "_retry_max_retries"):
            base._retry_max_retries = 0
    return HcloudCloud(client, app.name, stack, token=token)


def aws_cloud(
    settings: StackSettings, app: AppSpec, stack: str, poll: float = 5.0, timeout: float = 10.0
) -> Cloud:
    import boto3
    from botocore.config import Config

    from blueprints.failover.aws_cloud import AwsCloud

    config = Config(
        connect_timeout=timeout,
        read_timeout=timeout,
        # One attempt per call: our callers retry, knowing their budget.
        retries={"total_max_attempts": 1, "mode": "standard"},
    )
    kwargs: dict[str, Any] = {"region_name": settings.region, "config": config}
    if settings.target == "localstack":
        kwargs |= {
            "endpoint_url": settings.localstack_endpoint,
            "aws_access_key_id": os.environ.get("BLUEPRINTS_LOCALSTACK_KEY", "test"),
            "aws_secret_access_key": "test",
        }
    return AwsCloud(boto3.client("ec2", **kwargs), app.name, stack, poll=poll)


def open_session(project_dir: Path, stack: str, *, cloud: Cloud | None = None) -> Session:
    path, settings, app = read_stack(project_dir, stack)
    if cloud is None:
        if settings.cloud == "hcloud":
            cloud = hcloud_cloud(app, stack, timeout=settings.api_timeout)
        else:
            cloud = aws_cloud(settings, app, stack, timeout=settings.api_timeout)
    check = http_check(app, settings.health_url, timeout=settings.probe_timeout)
    probe = http_probe(app, settings.health_url, timeout=settings.probe_timeout)
    return Session(stack, project_dir, path, settings, app, cloud, probe, check)
