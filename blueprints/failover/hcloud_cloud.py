"""The single-vm stack on Hetzner Cloud, through the official `hcloud` SDK.

Servers, volume and floating IP are found by the labels the blueprint sets (app, blueprint,
node). Every action is awaited through /v1/actions before the next step reads state.

The promotion lock is a placement group named blueprints-lock-<app>-<stack> (free, unique by
name: a second create answers 409 uniqueness_error), its record in the group's labels. The
cloud's clock is the Date header of the API's answer to a fresh request.
"""

from __future__ import annotations

import threading
import time

from hcloud import APIException, Client
from hcloud.actions import ActionFailedException, ActionTimeoutException
from hcloud.placement_groups import PlacementGroup

from blueprints.failover.cloud import (
    NODES,
    Cloud,
    CloudError,
    Node,
    OutOfTime,
    Snapshot,
    TransientCloudError,
    date_header,
)
from blueprints.failover.lock import LockRecord, StoredLock, lock_name

LOCK_GROUP_TYPE = "spread"
# Error codes that mean "try again shortly" (Hetzner Cloud API error codes).
TRANSIENT = {
    "locked",
    "conflict",
    "rate_limit_exceeded",
    "server_error",
    "unavailable",
    "timeout",
    "bad_gateway",
    "service_error",
}


def _wrap(what: str, exc: Exception) -> CloudError:
    if isinstance(exc, APIException):
        code = exc.code
        if code in TRANSIENT or (isinstance(code, int) and code >= 500):
            return TransientCloudError(f"{what}: {code}: {exc.message}")
        return CloudError(f"{what}: the Hetzner API said {code}: {exc.message}")
    if isinstance(exc, ActionFailedException):
        return TransientCloudError(
            f"{what}: action {exc.action.command} failed: {exc.action.error}"
        )
    if isinstance(exc, ActionTimeoutException):
        return TransientCloudError(f"{what}: action {exc.action.command} did not finish in time")
    if isinstance(exc, OSError):  # connection refused/reset, DNS, TLS, a bad header
        return TransientCloudError(f"{what}: {exc.__class__.__name__}: {exc}")
    return CloudError(f"{what}: {exc.__class__.__name__}: {exc}")


def redact(text: str, token: str | None) -> str:
    """`text` without the API token, in any form it may take in a message (as given,
    stripped, or as repr() shows it, e.g. a trailing carriage return as \\r)."""
    if not token:
        return text
    forms = {token, token.strip(), repr(token)[1:-1], repr(token.strip())[1:-1]}
    for form in sorted((f for f in forms if len(f) >= 4), key=len, reverse=True):
        text = text.replace(form, "***")
    return text


class HcloudCloud(Cloud):
    def __init__(
        self,
        client: Client,
        app: str,
        stack: str,
        blueprint: str = "single-vm",
        action_max_retries: int | None = None,
        poll: float | None = None,
        token: str | None = None,
    ):
        self.client = client
        self.selector = f"app={app},blueprint={blueprint},stack={stack}"
        self.app = app
        self.labels = {"app": app, "blueprint": blueprint, "stack": stack}
        self._lock_name = lock_name(app, stack)
        self.action_max_retries = action_max_retries
        base = getattr(client, "_client", None)
        # Never in an error text, a log line or a webhook: every message is redacted.
        self._token = token if token is not None else getattr(base, "_token", None)
        # The SDK's own poll interval unless given (the SDK's default is 1 s).
        if poll is not None:
            self._poll = lambda _n: poll
        else:
            self._poll = getattr(base, "_poll_interval_func", None) or (lambda _n: 1.0)
        self._max_polls = action_max_retries or getattr(base, "_poll_max_retries", 120)
        # The Date header of each answer, per thread: the SDK returns only the JSON body.
        self._seen = threading.local()
        session = getattr(base, "_session", None)
        self._clock_readable = session is not None
        if session is not None:
            session.hooks.setdefault("response", []).append(self._saw)

    def _saw(self, response, *_args, **_kwargs):
        self._seen.date = response.headers.get("Date")

    # -- lookups ---------------------------------------------------------------------------

    def _do(self, what: str, fn):
        """Run one driver operation; every failure becomes one CloudError sentence, without
        the API token."""
        try:
            return fn()
        except CloudError as exc:
            text = redact(str(exc), self._token)
            if text == str(exc):
                raise
            raise exc.__class__(text) from None
        except Exception as exc:  # the SDK's errors, OSError, and anything unexpected
            wrapped = _wrap(what, exc)
            raise wrapped.__class__(redact(str(wrapped), self._token)) from None

    def _servers(self):
        servers = self.client.servers.get_all(label_selector=self.selector)
        by_node = {s.labels.get("node"): s for s in servers}
        missing = [n for n in NODES if n not in by_node]
        if missing:
            raise CloudError(
                f"no server labelled {self.selector},node={missing[0]} in this Hetzner project; "
                "is this the right stack and API token?"
            )
        return by_node

    def _one(self, kind: str, items):
        if len(items) != 1:
            raise CloudError(
                f"expected one {kind} labelled {self.selector} in this Hetzner project, "
                f"found {len(items)}"
            )
        return items[0]

    def _volume(self):
        return self._one("volume", self.client.volumes.get_all(label_selector=self.selector))

    def _floating_ip(self):
        return self._one(
            "floating IP", self.client.floating_ips.get_all(label_selector=self.selector)
        )

    def _wait(self, action) -> None:
        """Poll the action until it finished (as the SDK's wait_until_finished), but stop
        with OutOfTime once the command's budget ran out."""
        polls = 0
        while True:
            action.reload()
            if action.status != "running":
                break
            polls += 1
            if polls >= self._max_polls:
                raise ActionTimeoutException(action=action)
            left = self.time_left()
            pause = self._poll(polls)
            if left is not None and left <= pause:
                raise OutOfTime(f"action {action.command} was still running when time ran out")
            self.tick()  # the promotion's lock heartbeat, rate-limited by the promotion
            time.sleep(pause)
        if action.status == "error":
            raise ActionFailedException(action=action)

    # -- Cloud -----------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        def read() -> Snapshot:
            servers = self._servers()
            ids = {s.id: n for n, s in servers.items()}
            volume = self._volume()
            fip = self._floating_ip()
            nodes = {
                n: Node(n, str(s.id), s.status, s.public_net.ipv4.ip if s.public_net else "")
                for n, s in servers.items()
            }
            vol_server = volume.server.id if volume.server else None
            ip_server = fip.server.id if fip.server else None
            return Snapshot(
                nodes=nodes,
                volume_holder=ids.get(vol_server) if vol_server else None,
                ip_holder=ids.get(ip_server) if ip_server else None,
                floating_ip=fip.ip,
            )

        return self._do("reading the stack from the Hetzner API", read)

    def power_off(self, node: str) -> None:
        def run():
            server = self._servers()[node]
            if server.status == "off":
                return
            self._wait(server.power_off())

        self._do(f"powering {node} off", run)

    def power_on(self, node: str) -> None:
        def run():
            server = self._servers()[node]
            if server.status == "running":
                return
            self._wait(server.power_on())

        self._do(f"powering {node} on", run)

    def detach_volume(self, node: str) -> None:
        def run():
            volume = self._volume()
            server = self._servers()[node]
            if volume.server is None or volume.server.id != server.id:
                return
            self._wait(volume.detach())

        self._do(f"detaching the volume from {node}", run)

    def attach_volume(self, node: str) -> None:
        def run():
            volume = self._volume()
            server = self._servers()[node]
            if volume.server is not None:
                if volume.server.id == server.id:
                    return
                raise CloudError(f"the data volume is still attached to server {volume.server.id}")
            self._wait(volume.attach(server, automount=False))

        self._do(f"attaching the volume to {node}", run)

    def unassign_ip(self) -> None:
        def run():
            fip = self._floating_ip()
            if fip.server is None:
                return
            self._wait(fip.unassign())

        self._do("unassigning the floating IP", run)

    def assign_ip(self, node: str) -> None:
        def run():
            fip = self._floating_ip()
            server = self._servers()[node]
            if fip.server is not None and fip.server.id == server.id:
                return
            self._wait(fip.assign(server))

        self._do(f"assigning the floating IP to {node}", run)

    # -- the promotion lock ----------------------------------------------------------------

    @property
    def lock_name(self) -> str:
        return self._lock_name

    def _groups(self):
        return self.client.placement_groups.get_all(name=self._lock_name)

    def now(self) -> float:
        def run() -> float:
            if not self._clock_readable:
                raise CloudError(
                    "this hcloud SDK does not let blueprints read the API's Date header, which "
                    "the promotion lock needs as the cloud's clock; install hcloud 2.x"
                )
            self._seen.date = None
            self.client.placement_groups.get_list(name=self._lock_name, per_page=1)
            date = getattr(self._seen, "date", None)
            if not date:
                raise CloudError(
                    "the Hetzner API answered without a Date header; the promotion lock needs "
                    "the cloud's clock"
                )
            return date_header(date, "the Hetzner API")

        return self._do("reading the Hetzner API's clock", run)

    def _lock_labels(self, record: LockRecord) -> dict[str, str]:
        return {**self.labels, **record.fields()}

    def create_lock(self, record: LockRecord) -> str | None:
        def run() -> str | None:
            try:
                made = self.client.placement_groups.create(
                    name=self._lock_name, type=LOCK_GROUP_TYPE, labels=self._lock_labels(record)
                )
            except APIException as exc:
                if exc.code == "uniqueness_error":
                    return None
                raise
            return str(made.placement_group.id)

        return self._do(f"creating the placement group {self._lock_name}", run)

    def read_lock(self) -> StoredLock | None:
        def run() -> StoredLock | None:
            groups = self._groups()
            if not groups:
                return None
            group = groups[0]  # names are unique in a project
            return StoredLock(str(group.id), LockRecord.parse(group.labels or {}))

        return self._do(f"reading the placement group {self._lock_name}", run)

    def update_lock(self, lock_id: str, record: LockRecord) -> bool:
        def run() -> bool:
            try:
                self.client.placement_groups.update(
                    PlacementGroup(id=int(lock_id)), labels=self._lock_labels(record)
                )
            except APIException as exc:
                if exc.code == "not_found":
                    return False
                raise
            return True

        return self._do(f"updating the placement group {self._lock_name}", run)

    def delete_lock(self, lock_id: str) -> None:
        def run() -> None:
            try:
                self.client.placement_groups.delete(PlacementGroup(id=int(lock_id)))
            except APIException as exc:
                if exc.code != "not_found":
                    raise

        self._do(f"deleting the placement group {self._lock_name}", run)
