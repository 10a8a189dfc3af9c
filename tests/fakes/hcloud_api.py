"""A local fake of the parts of the Hetzner Cloud API a failover tool uses.

`FakeHcloud` runs a `ThreadingHTTPServer` on 127.0.0.1 (random free port) that speaks
enough of https://docs.hetzner.cloud for the official `hcloud` Python SDK to drive it:

    with FakeHcloud() as fake:
        web = fake.add_server("web-1", location="fsn1", labels={"role": "primary"})
        client = Client(token="x", api_endpoint=fake.url, poll_interval=0.01)
        client.servers.get_by_id(web).power_off().wait_until_finished()
        assert fake.state()["servers"][web]["status"] == "off"

Behaviour (see the module constants and README-style notes in `FakeHcloud`):

* Every action POST answers 201 with an action in status ``running``. The action finishes
  (status ``success`` and its effect applied) on its ``action_polls``-th poll
  (``GET /v1/actions/{id}``, ``GET /v1/actions?id=…`` or ``GET /v1/{resource}/{id}/actions/{id}``),
  or ``action_delay`` seconds after it started, whichever comes first, or when a test calls
  `FakeHcloud.complete_actions`.
* While an action runs, every resource it names is locked: a new action touching any of
  them answers 423 ``locked``. Label/name updates (PUT) are not actions and stay allowed.
* Power actions that would not change anything (poweroff/shutdown of an ``off`` server,
  poweron of a ``running`` one, assigning a floating IP to the server it already points at,
  unassigning an unassigned one) answer 201 with an action that is already ``success``.
* Volumes attach only to servers in their own location and only when detached.
  Floating IPs can be assigned to servers in any location; assigning an assigned IP
  moves it.
* Placement groups (type ``spread``) can be created, listed (``name=``, ``label_selector=``),
  read, relabelled and deleted; a name is unique in the project, checked and taken under one
  lock, so of two concurrent creates of one name exactly one gets 201, the other 409
  ``uniqueness_error``. A deleted group answers 404.
* Every answer carries a ``Date`` header from the fake's clock: the local clock shifted by
  `FakeHcloud.shift_clock` (a cloud whose clock differs from the caller's).
* `FakeHcloud.silence` makes the API accept connections and never answer (a hung API).

Only the standard library is used.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = [
    "DROP",
    "RULE_ERRORS",
    "SERVER_STATUSES",
    "FakeHcloud",
]

#: Return this from an `on_request` callback to close the connection without answering
#: (the client sees a connection error, as if the network or the API died mid-request).
DROP = "drop"

#: (HTTP status, Hetzner error code) used by each rule the fake enforces. Codes come from
#: the "Errors" section of https://docs.hetzner.cloud (and hcloud-go's error.go for
#: ``volume_already_attached``). Where Hetzner documents no status, the choice is ours
#: and is marked so; a test may patch this dict if it needs different values.
RULE_ERRORS: dict[str, tuple[int, str]] = {
    "unauthorized": (401, "unauthorized"),
    "not_found": (404, "not_found"),
    "locked": (423, "locked"),
    "invalid_input": (400, "invalid_input"),
    "json_error": (400, "json_error"),
    "uniqueness_error": (409, "uniqueness_error"),
    # Hetzner: "Works only if the Server is in the same Location as the Volume." No
    # dedicated code is documented, so the generic input error is used.
    "volume_location_mismatch": (400, "invalid_input"),
    # Code from hcloud-go error.go ("Volume is already attached to a server, detach
    # first"); the status is our choice (not documented).
    "volume_already_attached": (409, "volume_already_attached"),
    # Not documented at all; we reject it as invalid input rather than succeed silently.
    "volume_not_attached": (400, "invalid_input"),
    "server_error": (500, "server_error"),
}

SERVER_STATUSES = frozenset(
    {
        "running",
        "initializing",
        "starting",
        "stopping",
        "off",
        "deleting",
        "migrating",
        "rebuilding",
        "unknown",
    }
)

_LOCATIONS: dict[str, dict[str, Any]] = {
    "fsn1": {
        "id": 1,
        "description": "Falkenstein DC Park 1",
        "country": "DE",
        "city": "Falkenstein",
        "latitude": 50.47612,
        "longitude": 12.370071,
        "network_zone": "eu-central",
        "dc": "fsn1-dc14",
    },
    "nbg1": {
        "id": 2,
        "description": "Nuremberg DC Park 1",
        "country": "DE",
        "city": "Nuremberg",
        "latitude": 49.452102,
        "longitude": 11.076665,
        "network_zone": "eu-central",
        "dc": "nbg1-dc3",
    },
    "hel1": {
        "id": 3,
        "description": "Helsinki DC Park 1",
        "country": "FI",
        "city": "Helsinki",
        "latitude": 60.169855,
        "longitude": 24.938379,
        "network_zone": "eu-central",
        "dc": "hel1-dc2",
    },
    "ash": {
        "id": 4,
        "description": "Ashburn, VA",
        "country": "US",
        "city": "Ashburn, VA",
        "latitude": 39.045821,
        "longitude": -77.487073,
        "network_zone": "us-east",
        "dc": "ash-dc1",
    },
    "hil": {
        "id": 5,
        "description": "Hillsboro, OR",
        "country": "US",
        "city": "Hillsboro, OR",
        "latitude": 45.54222,
        "longitude": -122.951924,
        "network_zone": "us-west",
        "dc": "hil-dc1",
    },
    "sin": {
        "id": 6,
        "description": "Singapore",
        "country": "SG",
        "city": "Singapore",
        "latitude": 1.283333,
        "longitude": 103.833333,
        "network_zone": "ap-southeast",
        "dc": "sin-dc1",
    },
}

_Query = dict[str, list[str]]
_Result = tuple[int, dict[str, Any]]

_DEFAULT_PER_PAGE = 25
_MAX_PER_PAGE = 50
_RATE_LIMIT = 3600


def _now(offset: float = 0.0) -> str:
    return datetime.fromtimestamp(time.time() + offset, UTC).isoformat(timespec="seconds")


class ApiError(Exception):
    """An error answer: HTTP status plus Hetzner's ``{"error": {...}}`` body."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers or {}

    @classmethod
    def rule(cls, rule: str, message: str, details: dict[str, Any] | None = None) -> ApiError:
        status, code = RULE_ERRORS[rule]
        return cls(status, code, message, details)


def _field_error(name: str, message: str) -> ApiError:
    return ApiError.rule(
        "invalid_input",
        f"invalid input in field '{name}': {message}",
        {"fields": [{"name": name, "messages": [message]}]},
    )


# --------------------------------------------------------------------------------------
# Label selectors (https://docs.hetzner.cloud, "Label Selector")
# --------------------------------------------------------------------------------------

_KEY = r"[A-Za-z0-9]([A-Za-z0-9._/-]*[A-Za-z0-9])?"
_VALUE = r"([A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?)?"
_RE_EXISTS = re.compile(rf"^(?P<neg>!?)\s*(?P<key>{_KEY})$")
_RE_EQ = re.compile(rf"^(?P<key>{_KEY})\s*(?P<op>==|=|!=)\s*(?P<value>{_VALUE})$")
_RE_SET = re.compile(rf"^(?P<key>{_KEY})\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)$")


def _split_terms(selector: str) -> list[str]:
    terms, depth, current = [], 0, []
    for ch in selector:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise _field_error("label_selector", "unbalanced parentheses")
        if ch == "," and depth == 0:
            terms.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    if depth != 0:
        raise _field_error("label_selector", "unbalanced parentheses")
    terms.append("".join(current).strip())
    return terms


def _label_matcher(selector: str) -> Callable[[dict[str, str]], bool]:
    """Compile a Hetzner label selector; raise `ApiError` (invalid_input) if malformed."""
    checks: list[Callable[[dict[str, str]], bool]] = []
    for term in _split_terms(selector):
        if not term:
            raise _field_error("label_selector", "empty term")
        if m := _RE_EQ.match(term):
            key, op, value = m["key"], m["op"], m["value"]
            if op == "!=":
                checks.append(lambda lb, k=key, v=value: lb.get(k) != v)
            else:
                checks.append(lambda lb, k=key, v=value: lb.get(k) == v)
        elif m := _RE_SET.match(term):
            key, op = m["key"], m["op"]
            values = frozenset(v.strip() for v in m["values"].split(",") if v.strip())
            if op == "in":
                checks.append(lambda lb, k=key, vs=values: lb.get(k) in vs)
            else:
                checks.append(lambda lb, k=key, vs=values: lb.get(k) not in vs)
        elif m := _RE_EXISTS.match(term):
            key, negated = m["key"], bool(m["neg"])
            checks.append(lambda lb, k=key, n=negated: (k in lb) != n)
        else:
            raise _field_error("label_selector", f"invalid term {term!r}")
    return lambda labels: all(check(labels) for check in checks)


def _validate_labels(labels: Any) -> dict[str, str]:
    if not isinstance(labels, dict):
        raise _field_error("labels", "must be an object")
    for key, value in labels.items():
        if not isinstance(value, str) or not re.fullmatch(_KEY, key):
            raise _field_error("labels", f"invalid label {key!r}")
        if not re.fullmatch(_VALUE, value) or len(value) > 63:
            raise _field_error("labels", f"invalid value for label {key!r}")
    return dict(labels)


# --------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------


@dataclass
class _Server:
    id: int
    name: str
    location: str
    labels: dict[str, str]
    status: str
    ipv4: str
    ipv6: str
    created: str


@dataclass
class _Volume:
    id: int
    name: str
    location: str
    labels: dict[str, str]
    size: int
    server: int | None
    created: str


@dataclass
class _FloatingIP:
    id: int
    name: str
    home_location: str
    labels: dict[str, str]
    ip: str
    type: str
    server: int | None
    description: str | None
    created: str


@dataclass
class _PlacementGroup:
    id: int
    name: str
    labels: dict[str, str]
    type: str
    created: str


@dataclass
class _Action:
    id: int
    command: str
    resources: list[tuple[str, int]]
    started: str
    started_at: float
    status: str = "running"
    progress: int = 0
    finished: str | None = None
    error: dict[str, str] | None = None
    polls: int = 0
    on_success: Callable[[], None] | None = None
    on_error: Callable[[], None] | None = None
    fail_with: tuple[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "command": self.command,
            "status": self.status,
            "progress": self.progress,
            "started": self.started,
            "finished": self.finished,
            "resources": [{"id": rid, "type": rtype} for rtype, rid in self.resources],
            "error": dict(self.error) if self.error else None,
        }


@dataclass
class _Fault:
    method: str
    pattern: re.Pattern[str]
    status: int
    code: str
    message: str
    remaining: int
    details: dict[str, Any] | None
    headers: dict[str, str]
    apply: bool


@dataclass
class _ActionFault:
    command: str | None
    code: str
    message: str
    remaining: int


@dataclass
class _Request:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)


_COMMANDS = {
    "poweroff": "stop_server",
    "poweron": "start_server",
    "shutdown": "shutdown_server",
    "reset": "reset_server",
    "attach": "attach_volume",
    "detach": "detach_volume",
    "assign": "assign_floating_ip",
    "unassign": "unassign_floating_ip",
}

_RESOURCE_TYPE = {"servers": "server", "volumes": "volume", "floating_ips": "floating_ip"}
_PLACEMENT_GROUP_TYPES = frozenset({"spread"})


class FakeHcloud:
    """Fake Hetzner Cloud API server for tests. Use as a context manager.

    :param action_polls: an action finishes on its N-th poll (default 2: the first poll
        still sees ``running``, the second ``success``). ``0`` finishes actions as they are
        created (the POST already answers ``success``); ``None`` disables poll counting.
    :param action_delay: seconds after which a running action finishes regardless of
        polls (checked on every request and on `state`); ``None`` (default) disables it.
    :param token: the only bearer token accepted; ``None`` (default) accepts any
        non-empty token.
    :param shutdown_powers_off: whether a ``shutdown`` action leaves the server ``off``
        (default) or, like an OS that ignores ACPI, ``running``.
    """

    def __init__(
        self,
        *,
        action_polls: int | None = 2,
        action_delay: float | None = None,
        token: str | None = None,
        shutdown_powers_off: bool = True,
    ) -> None:
        if action_polls is not None and action_polls < 0:
            raise ValueError("action_polls must be >= 0 or None")
        self.action_polls = action_polls
        self.action_delay = action_delay
        self.token = token
        self.shutdown_powers_off = shutdown_powers_off

        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self._action_ids = itertools.count(1)
        self._ip_counter = itertools.count(10)
        self._servers: dict[int, _Server] = {}
        self._volumes: dict[int, _Volume] = {}
        self._floating_ips: dict[int, _FloatingIP] = {}
        self._placement_groups: dict[int, _PlacementGroup] = {}
        self._actions: dict[int, _Action] = {}
        self._faults: list[_Fault] = []
        self._action_faults: list[_ActionFault] = []
        self._hooks: list[Callable[[str, str], Any]] = []
        self._log: list[_Request] = []
        self.errors: list[str] = []
        """Tracebacks of unexpected exceptions inside the fake (answered as 500)."""
        self.clock_offset = 0.0
        """Seconds the fake's clock (its Date headers, timestamps) is ahead of the local one."""
        self._silent = False
        self._wake = threading.Condition(self._lock)

        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> FakeHcloud:
        if self._httpd is not None:
            raise RuntimeError("already started")
        httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        # Join handler threads on server_close() so nothing outlives the fake.
        httpd.daemon_threads = False
        httpd.block_on_close = True
        httpd.fake = self  # type: ignore[attr-defined]
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fake-hcloud-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        self.silence(False)
        httpd.shutdown()
        httpd.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> FakeHcloud:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("not started")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """The API endpoint to hand to the SDK: ``http://127.0.0.1:{port}/v1``."""
        return f"http://127.0.0.1:{self.port}/v1"

    def client(
        self,
        token: str = "test-token",
        *,
        poll_interval: float = 0.01,
        application_name: str | None = None,
    ) -> Any:
        """An `hcloud.Client` pointed at this fake, with the SDK's retry backoff
        (1 s + jitter, exponential) set to zero so retried errors keep tests fast. An
        `application_name` starts its User-Agent, which the request log shows."""
        from hcloud import Client  # lazy: the fake itself stays stdlib-only

        client = Client(
            token=token,
            api_endpoint=self.url,
            poll_interval=poll_interval,
            application_name=application_name,
        )
        client._client._retry_interval_func = lambda retries: 0.0
        return client

    # ---------------------------------------------------------------- seeding

    def add_server(
        self,
        name: str,
        location: str = "fsn1",
        labels: dict[str, str] | None = None,
        status: str = "running",
        *,
        ipv4: str | None = None,
    ) -> int:
        if status not in SERVER_STATUSES:
            raise ValueError(f"unknown server status {status!r}")
        with self._lock:
            if any(s.name == name for s in self._servers.values()):
                raise ValueError(f"server name {name!r} already used")
            sid = next(self._ids)
            n = next(self._ip_counter)
            self._servers[sid] = _Server(
                id=sid,
                name=name,
                location=location,
                labels=_validate_labels(dict(labels or {})),
                status=status,
                ipv4=ipv4 or f"203.0.{113 + n // 250}.{n % 250 + 1}",
                ipv6=f"2001:db8:{sid:x}::/64",
                created=_now(self.clock_offset),
            )
            return sid

    def add_volume(
        self,
        name: str,
        location: str = "fsn1",
        labels: dict[str, str] | None = None,
        size: int = 10,
        server: int | None = None,
    ) -> int:
        with self._lock:
            if any(v.name == name for v in self._volumes.values()):
                raise ValueError(f"volume name {name!r} already used")
            if server is not None:
                srv = self._servers.get(server)
                if srv is None:
                    raise ValueError(f"no server {server}")
                if srv.location != location:
                    raise ValueError("a volume can only be attached in its own location")
            vid = next(self._ids)
            self._volumes[vid] = _Volume(
                id=vid,
                name=name,
                location=location,
                labels=_validate_labels(dict(labels or {})),
                size=size,
                server=server,
                created=_now(self.clock_offset),
            )
            return vid

    def add_floating_ip(
        self,
        name: str,
        home_location: str = "fsn1",
        labels: dict[str, str] | None = None,
        server: int | None = None,
        *,
        type: str = "ipv4",
        ip: str | None = None,
        description: str | None = None,
    ) -> int:
        if type not in ("ipv4", "ipv6"):
            raise ValueError("type must be ipv4 or ipv6")
        with self._lock:
            if any(f.name == name for f in self._floating_ips.values()):
                raise ValueError(f"floating IP name {name!r} already used")
            if server is not None and server not in self._servers:
                raise ValueError(f"no server {server}")
            fid = next(self._ids)
            n = next(self._ip_counter)
            if ip is None:
                ip = (
                    f"198.51.{100 + n // 250}.{n % 250 + 1}"
                    if type == "ipv4"
                    else f"2001:db8:ff{fid:02x}::/64"
                )
            self._floating_ips[fid] = _FloatingIP(
                id=fid,
                name=name,
                home_location=home_location,
                labels=_validate_labels(dict(labels or {})),
                ip=ip,
                type=type,
                server=server,
                description=description,
                created=_now(self.clock_offset),
            )
            return fid

    def remove_server(self, server_id: int) -> None:
        """Make a server vanish (later requests for it get 404); its volumes are detached
        and its floating IPs unassigned, as Hetzner does on delete."""
        with self._lock:
            del self._servers[server_id]
            for vol in self._volumes.values():
                if vol.server == server_id:
                    vol.server = None
            for fip in self._floating_ips.values():
                if fip.server == server_id:
                    fip.server = None

    # ---------------------------------------------------------------- test control

    def set_status(self, server_id: int, status: str) -> None:
        """Flip a server's status directly (the primary dies / comes back)."""
        if status not in SERVER_STATUSES:
            raise ValueError(f"unknown server status {status!r}")
        with self._lock:
            self._servers[server_id].status = status

    def now(self) -> float:
        """The fake's clock (unix seconds): what its Date headers say."""
        return time.time() + self.clock_offset

    def shift_clock(self, seconds: float) -> None:
        """Move the fake's clock by `seconds` (negative: back), as seen in its Date headers."""
        with self._lock:
            self.clock_offset += seconds

    def silence(self, on: bool = True) -> None:
        """While on, every request is accepted and read but never answered: the client waits
        until its own timeout. Turning it off (or stopping the fake) closes those connections
        without an answer."""
        with self._lock:
            self._silent = on
            self._wake.notify_all()

    def _hold_if_silent(self) -> bool:
        """Called by the handler: blocks while silent; True when the request must go
        unanswered."""
        with self._lock:
            if not self._silent:
                return False
            while self._silent:
                self._wake.wait()
            return True

    def placement_groups(self) -> dict[int, dict[str, Any]]:
        """{id: {"name", "labels", "type"}} of every placement group."""
        with self._lock:
            return {
                g.id: {"name": g.name, "labels": dict(g.labels), "type": g.type}
                for g in self._placement_groups.values()
            }

    def fail_next(
        self,
        method: str,
        path_regex: str,
        status: int = 500,
        code: str = "server_error",
        message: str | None = None,
        times: int = 1,
        *,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        apply: bool = False,
    ) -> None:
        """Answer the next `times` requests whose method matches (``"*"`` for any) and whose
        path (without query, e.g. ``/v1/servers/1/actions/poweroff``) matches `path_regex`
        (``re.search``) with an error. Checked after authentication.

        With ``apply=True`` the request is first handled normally (its side effects
        happen) and only the answer is replaced: a lost response.
        A 429 gets ``RateLimit-Remaining: 0`` unless `headers` says otherwise."""
        if times < 1:
            raise ValueError("times must be >= 1")
        hdrs = dict(headers or {})
        if status == 429:
            hdrs.setdefault("RateLimit-Remaining", "0")
        with self._lock:
            self._faults.append(
                _Fault(
                    method=method.upper(),
                    pattern=re.compile(path_regex),
                    status=status,
                    code=code,
                    message=message or f"injected {code}",
                    remaining=times,
                    details=details,
                    headers=hdrs,
                    apply=apply,
                )
            )

    def fail_next_action(
        self,
        command: str | None = None,
        *,
        code: str = "action_failed",
        message: str = "Action failed",
        times: int = 1,
    ) -> None:
        """Make the next `times` actions (optionally only those with this `command`, e.g.
        ``"attach_volume"``) finish in status ``error`` with this error; their effect is
        not applied and transitional server states are rolled back."""
        with self._lock:
            self._action_faults.append(_ActionFault(command, code, message, times))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._action_faults.clear()

    def on_request(self, callback: Callable[[str, str], Any]) -> None:
        """Call ``callback(method, path)`` before each request is handled (before auth,
        outside the fake's lock, so it may call `set_status` etc.). If it returns
        `DROP` the connection is closed without an answer; if it returns a
        ``(status, code, message)`` tuple that error is answered instead."""
        with self._lock:
            self._hooks.append(callback)

    def clear_hooks(self) -> None:
        with self._lock:
            self._hooks.clear()

    def complete_actions(self) -> int:
        """Finish every running action now; return how many were finished."""
        with self._lock:
            running = [a for a in self._actions.values() if a.status == "running"]
            for action in running:
                self._finish(action)
            return len(running)

    @property
    def requests(self) -> list[tuple[str, str]]:
        """(method, path) of every request received so far, query string stripped."""
        with self._lock:
            return [(r.method, r.path) for r in self._log]

    @property
    def request_log(self) -> list[dict[str, Any]]:
        """Every request with its query, JSON body, answered HTTP status and User-Agent."""
        with self._lock:
            return [
                {
                    "method": r.method,
                    "path": r.path,
                    "query": copy.deepcopy(r.query),
                    "body": copy.deepcopy(r.body),
                    "status": r.status,
                    "user_agent": r.headers.get("User-Agent", ""),
                }
                for r in self._log
            ]

    def clear_requests(self) -> None:
        with self._lock:
            self._log.clear()

    def state(self) -> dict[str, Any]:
        """A deep snapshot for invariant checks::

        {"servers": {id: {"name", "status", "location", "labels", "ipv4"}},
         "volumes": {id: {"name", "server", "location", "labels"}},
         "floating_ips": {id: {"name", "server", "ip", "home_location", "labels"}},
         "placement_groups": {id: {"name", "labels", "type"}},
         "actions": {id: {"command", "status", "resources", "error"}}}
        """
        with self._lock:
            self._tick()
            return {
                "servers": {
                    s.id: {
                        "name": s.name,
                        "status": s.status,
                        "location": s.location,
                        "labels": dict(s.labels),
                        "ipv4": s.ipv4,
                    }
                    for s in self._servers.values()
                },
                "volumes": {
                    v.id: {
                        "name": v.name,
                        "server": v.server,
                        "location": v.location,
                        "labels": dict(v.labels),
                    }
                    for v in self._volumes.values()
                },
                "floating_ips": {
                    f.id: {
                        "name": f.name,
                        "server": f.server,
                        "ip": f.ip,
                        "home_location": f.home_location,
                        "labels": dict(f.labels),
                    }
                    for f in self._floating_ips.values()
                },
                "placement_groups": {
                    g.id: {"name": g.name, "labels": dict(g.labels), "type": g.type}
                    for g in self._placement_groups.values()
                },
                "actions": {
                    a.id: {
                        "command": a.command,
                        "status": a.status,
                        "resources": list(a.resources),
                        "error": dict(a.error) if a.error else None,
                    }
                    for a in self._actions.values()
                },
            }

    # ---------------------------------------------------------------- request entry

    def _handle(self, method: str, raw_path: str, headers: Any, body: bytes) -> _Response:
        split = urlsplit(raw_path)
        path = split.path.rstrip("/") or "/"
        query = parse_qs(split.query, keep_blank_values=True)
        try:
            parsed: Any = json.loads(body) if body.strip() else None
            json_ok = True
        except ValueError:
            parsed, json_ok = None, False
        entry = _Request(
            method, path, query, parsed, headers={"User-Agent": headers.get("User-Agent") or ""}
        )
        with self._lock:
            self._log.append(entry)
            hooks = list(self._hooks)
            n_requests = len(self._log)
        rate_headers = {
            "RateLimit-Limit": str(_RATE_LIMIT),
            "RateLimit-Remaining": str(max(0, _RATE_LIMIT - n_requests)),
            "RateLimit-Reset": str(int(self.now()) + min(n_requests, _RATE_LIMIT)),
        }

        response = self._answer(method, path, query, headers, parsed, json_ok, hooks)
        if response is not None and response is not _DROPPED:
            response.headers = {**rate_headers, **response.headers}
            entry.status = response.status
        return response

    def _answer(
        self,
        method: str,
        path: str,
        query: dict[str, list[str]],
        headers: Any,
        body: Any,
        json_ok: bool,
        hooks: Iterable[Callable[[str, str], Any]],
    ) -> _Response:
        try:
            for hook in hooks:
                outcome = hook(method, path)
                if outcome == DROP:
                    return _DROPPED
                if isinstance(outcome, tuple):
                    status, code, message = outcome
                    raise ApiError(status, code, message)

            auth = headers.get("Authorization") or ""
            scheme, _, token = auth.partition(" ")
            token = token.strip()
            if scheme != "Bearer" or not token or (self.token is not None and token != self.token):
                raise ApiError.rule("unauthorized", "unable to authenticate")

            with self._lock:
                fault = self._take_fault(method, path)
                if fault is not None and not fault.apply:
                    raise ApiError(
                        fault.status, fault.code, fault.message, fault.details, fault.headers
                    )
                self._tick()
                if not json_ok:
                    raise ApiError.rule("json_error", "request body is not valid JSON")
                status, payload = self._dispatch(method, path, query, body)
                if fault is not None:
                    raise ApiError(
                        fault.status, fault.code, fault.message, fault.details, fault.headers
                    )
                return _Response(status, payload)
        except ApiError as err:
            error: dict[str, Any] = {"code": err.code, "message": err.message}
            error["details"] = err.details if err.details is not None else {}
            return _Response(err.status, {"error": error}, dict(err.headers))
        except Exception:
            tb = traceback.format_exc()
            with self._lock:
                self.errors.append(tb)
            status, code = RULE_ERRORS["server_error"]
            return _Response(
                status, {"error": {"code": code, "message": "fake crashed", "details": {}}}
            )

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        for fault in self._faults:
            if fault.method not in ("*", method) or not fault.pattern.search(path):
                continue
            fault.remaining -= 1
            if fault.remaining <= 0:
                self._faults.remove(fault)
            return fault
        return None

    def _dispatch(
        self, method: str, path: str, query: dict[str, list[str]], body: Any
    ) -> tuple[int, dict[str, Any]]:
        for route_method, pattern, handler in _ROUTES:
            if route_method != method:
                continue
            m = pattern.match(path)
            if m:
                return handler(self, m, query, body)
        raise ApiError.rule("not_found", f"no route for {method} {path}")

    # ---------------------------------------------------------------- actions

    def _tick(self) -> None:
        if self.action_delay is None:
            return
        now = time.monotonic()
        for action in list(self._actions.values()):
            if action.status == "running" and now - action.started_at >= self.action_delay:
                self._finish(action)

    def _poll(self, action: _Action) -> None:
        if action.status != "running":
            return
        action.polls += 1
        if self.action_polls is not None and action.polls >= self.action_polls:
            self._finish(action)

    def _finish(self, action: _Action) -> None:
        if action.status != "running":
            return
        action.progress = 100
        action.finished = _now(self.clock_offset)
        if action.fail_with is not None:
            code, message = action.fail_with
            action.status = "error"
            action.error = {"code": code, "message": message}
            if action.on_error is not None:
                action.on_error()
        else:
            action.status = "success"
            if action.on_success is not None:
                action.on_success()

    def _check_unlocked(self, resources: list[tuple[str, int]]) -> None:
        wanted = set(resources)
        for action in self._actions.values():
            if action.status != "running":
                continue
            busy = wanted.intersection(action.resources)
            if busy:
                rtype, rid = sorted(busy)[0]
                raise ApiError.rule(
                    "locked",
                    f"{rtype} {rid} is locked by running action {action.id} ({action.command})",
                )

    def _start_action(
        self,
        command: str,
        resources: list[tuple[str, int]],
        *,
        on_success: Callable[[], None] | None = None,
        on_error: Callable[[], None] | None = None,
        noop: bool = False,
    ) -> tuple[int, dict[str, Any]]:
        now = _now(self.clock_offset)
        action = _Action(
            id=next(self._action_ids),
            command=command,
            resources=resources,
            started=now,
            started_at=time.monotonic(),
            on_success=on_success,
            on_error=on_error,
        )
        self._actions[action.id] = action
        if noop:
            action.status, action.progress, action.finished = "success", 100, now
        else:
            for fault in self._action_faults:
                if fault.command in (None, command):
                    action.fail_with = (fault.code, fault.message)
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._action_faults.remove(fault)
                    break
            if self.action_polls == 0:
                self._finish(action)
        return 201, {"action": action.to_json()}

    # ---------------------------------------------------------------- lookups

    def _server(self, sid: int) -> _Server:
        srv = self._servers.get(sid)
        if srv is None:
            raise ApiError.rule("not_found", f"server with ID '{sid}' not found")
        return srv

    def _volume(self, vid: int) -> _Volume:
        vol = self._volumes.get(vid)
        if vol is None:
            raise ApiError.rule("not_found", f"volume with ID '{vid}' not found")
        return vol

    def _floating_ip(self, fid: int) -> _FloatingIP:
        fip = self._floating_ips.get(fid)
        if fip is None:
            raise ApiError.rule("not_found", f"floating_ip with ID '{fid}' not found")
        return fip

    def _target_server(self, body: Any) -> _Server:
        if not isinstance(body, dict) or "server" not in body:
            raise _field_error("server", "is required")
        sid = body["server"]
        if not isinstance(sid, int) or isinstance(sid, bool):
            raise _field_error("server", "must be an integer")
        return self._server(sid)

    # ---------------------------------------------------------------- JSON views

    @staticmethod
    def _location_json(name: str) -> dict[str, Any]:
        info = _LOCATIONS.get(name)
        if info is None:
            info = {
                "id": 100 + sum(map(ord, name)),
                "description": name,
                "country": "DE",
                "city": name,
                "latitude": 0.0,
                "longitude": 0.0,
                "network_zone": "eu-central",
            }
        return {"name": name, **{k: v for k, v in info.items() if k != "dc"}}

    def _server_json(self, s: _Server) -> dict[str, Any]:
        location = self._location_json(s.location)
        dc_name = _LOCATIONS.get(s.location, {}).get("dc", f"{s.location}-dc1")
        return {
            "id": s.id,
            "name": s.name,
            "status": s.status,
            "created": s.created,
            "public_net": {
                "ipv4": {"id": 100000 + s.id, "ip": s.ipv4, "blocked": False, "dns_ptr": ""},
                "ipv6": {
                    "id": 200000 + s.id,
                    "ip": s.ipv6,
                    "blocked": False,
                    "dns_ptr": [],
                },
                "floating_ips": sorted(
                    f.id for f in self._floating_ips.values() if f.server == s.id
                ),
                "firewalls": [],
            },
            "private_net": [],
            "server_type": {
                "id": 22,
                "name": "cx22",
                "description": "CX22",
                "category": "cost_optimized",
                "cores": 2,
                "memory": 4.0,
                "disk": 40,
                "prices": [],
                "storage_type": "local",
                "cpu_type": "shared",
                "architecture": "x86",
                "deprecation": None,
                "locations": [
                    {
                        "id": location["id"],
                        "name": s.location,
                        "deprecation": None,
                        "available": True,
                        "recommended": True,
                    }
                ],
            },
            "datacenter": {
                "id": location["id"],
                "name": dc_name,
                "description": dc_name,
                "location": location,
            },
            "location": location,
            "image": {
                "id": 161547269,
                "type": "system",
                "status": "available",
                "name": "ubuntu-24.04",
                "description": "Ubuntu 24.04",
                "image_size": None,
                "disk_size": 5,
                "created": "2024-04-25T00:00:00+00:00",
                "created_from": None,
                "bound_to": None,
                "os_flavor": "ubuntu",
                "os_version": "24.04",
                "rapid_deploy": True,
                "protection": {"delete": False},
                "deprecation": None,
                "labels": {},
                "architecture": "x86",
            },
            "iso": None,
            "rescue_enabled": False,
            "locked": False,
            "backup_window": None,
            "outgoing_traffic": 0,
            "ingoing_traffic": 0,
            "included_traffic": 21990232555520,
            "protection": {"delete": False, "rebuild": False},
            "labels": dict(s.labels),
            "volumes": sorted(v.id for v in self._volumes.values() if v.server == s.id),
            "load_balancers": [],
            "primary_disk_size": 40,
            "placement_group": None,
        }

    def _volume_json(self, v: _Volume) -> dict[str, Any]:
        return {
            "id": v.id,
            "name": v.name,
            "created": v.created,
            "server": v.server,
            "location": self._location_json(v.location),
            "size": v.size,
            "linux_device": f"/dev/disk/by-id/scsi-0HC_Volume_{v.id}",
            "format": "ext4",
            "protection": {"delete": False},
            "labels": dict(v.labels),
            "status": "available",
        }

    @staticmethod
    def _placement_group_json(g: _PlacementGroup) -> dict[str, Any]:
        return {
            "id": g.id,
            "name": g.name,
            "labels": dict(g.labels),
            "type": g.type,
            "created": g.created,
            "servers": [],
        }

    def _floating_ip_json(self, f: _FloatingIP) -> dict[str, Any]:
        return {
            "id": f.id,
            "name": f.name,
            "description": f.description,
            "created": f.created,
            "ip": f.ip,
            "type": f.type,
            "server": f.server,
            "dns_ptr": [{"ip": f.ip.split("/")[0], "dns_ptr": f"static.{f.ip}.example"}],
            "home_location": self._location_json(f.home_location),
            "blocked": False,
            "protection": {"delete": False},
            "labels": dict(f.labels),
        }

    # ---------------------------------------------------------------- list helpers

    @staticmethod
    def _paginate(
        key: str, items: list[dict[str, Any]], query: dict[str, list[str]]
    ) -> tuple[int, dict[str, Any]]:
        def number(name: str, default: int) -> int:
            raw = query.get(name, [str(default)])[-1]
            try:
                value = int(raw)
            except ValueError:
                raise _field_error(name, "must be an integer") from None
            if value < 1:
                raise _field_error(name, "must be >= 1")
            return value

        page = number("page", 1)
        per_page = min(number("per_page", _DEFAULT_PER_PAGE), _MAX_PER_PAGE)
        total = len(items)
        last_page = max(1, -(-total // per_page))
        chunk = items[(page - 1) * per_page : page * per_page]
        return 200, {
            key: chunk,
            "meta": {
                "pagination": {
                    "page": page,
                    "per_page": per_page,
                    "previous_page": page - 1 if page > 1 else None,
                    "next_page": page + 1 if page < last_page else None,
                    "last_page": last_page,
                    "total_entries": total,
                }
            },
        }

    @staticmethod
    def _filtered(
        records: Iterable[Any], query: dict[str, list[str]], *, status_attr: str | None = None
    ) -> list[Any]:
        selected = sorted(records, key=lambda r: r.id)
        if "label_selector" in query:
            match = _label_matcher(query["label_selector"][-1])
            selected = [r for r in selected if match(r.labels)]
        if "name" in query:
            name = query["name"][-1]
            selected = [r for r in selected if r.name == name]
        if status_attr is not None and "status" in query:
            wanted = set(query["status"])
            selected = [r for r in selected if getattr(r, status_attr) in wanted]
        return selected

    def _update(self, record: Any, collection: Iterable[Any], body: Any, allowed: set[str]) -> None:
        if not isinstance(body, dict):
            raise ApiError.rule("invalid_input", "request body must be a JSON object")
        unknown = set(body) - allowed
        if unknown:
            raise _field_error(sorted(unknown)[0], "unknown field")
        if "name" in body:
            name = body["name"]
            if not isinstance(name, str) or not name:
                raise _field_error("name", "must be a non-empty string")
            if any(o.name == name and o.id != record.id for o in collection):
                raise ApiError(
                    *RULE_ERRORS["uniqueness_error"],
                    "name is already used",
                    {"fields": [{"name": "name"}]},
                )
        labels = _validate_labels(body["labels"]) if "labels" in body else None
        if "description" in body and not isinstance(body["description"], str | None):
            raise _field_error("description", "must be a string")
        if "name" in body:
            record.name = body["name"]
        if labels is not None:
            record.labels = labels  # Hetzner replaces the whole label set
        if "description" in body:
            record.description = body["description"]

    # ---------------------------------------------------------------- handlers

    def _h_list_servers(self, m: re.Match[str], query: _Query, body: Any) -> _Result:
        servers = self._filtered(self._servers.values(), query, status_attr="status")
        return self._paginate("servers", [self._server_json(s) for s in servers], query)

    def _h_get_server(self, m: re.Match[str], query: _Query, body: Any) -> _Result:
        return 200, {"server": self._server_json(self._server(int(m[1])))}

    def _h_update_server(self, m: re.Match[str], query: _Query, body: Any) -> _Result:
        srv = self._server(int(m[1]))
        self._update(srv, self._servers.values(), body, {"name", "labels"})
        return 200, {"server": self._server_json(srv)}

    def _h_server_action(self, m: re.Match[str], query: _Query, body: Any) -> _Result:
        srv = self._server(int(m[1]))
        verb = m[2]
        command = _COMMANDS[verb]
        resources = [("server", srv.id)]
        self._check_unlocked(resources)
        previous = srv.status

        def restore() -> None:
            if srv.status in ("starting", "stopping"):
                srv.status = previous

        if verb in ("poweroff", "shutdown"):
            if srv.status == "off":
                return self._start_action(command, resources, noop=True)
            final = "off" if verb == "poweroff" or self.shutdown_powers_off else previous
            srv.status = "stopping"
        elif verb == "poweron":
            if srv.status == "running":
                return self._start_action(command, resources, noop=True)
            final = "running"
            srv.status = "starting"
        else:  # reset: cut power and start again
            final = "running"
            srv.status = "starting"

        def apply() -> None:
            srv.status = final

        return self._start_action(command, resources, on_success=apply, on_error=restore)

    def _h_list_volumes(self, m: re.Match[str], query: _Query, body: Any) -> _Result:
        volumes = self._filtered(self._volumes.values(), query)
        if "status" in query and "available" not in query["status"]:
            volumes = []
        return self._paginate("volumes", [self._volume_json(v) for v in volumes], query)

    def _h_get_volume(self, m: re.Match[str], query: _Query, body: Any) -> _Result:
        return 200, {"volume": self._volume_json(self._volume(int(m[1])))}

    def _h_update_volume(self, m: re.Match[str], query: _Query, body: Any) -> _Result:
        vol = self._volume(int(m[1]))
        self._update(vol, self._volumes.values(), body, {"name", "labels"})
        return 200, {"volume": self._volume_json(vol)}

    def _h_volume_attach(self, m: re.Match[str], query: _Query, body: Any) -> _Result:
        vol = self._volume(int(m[1]))
        srv = self._target_server(body)
        if "automount" in body and not isinstance(body["automount"], bool):
            raise _field_error("automount", "must be a boolean")
        resources = [("volume", vol.id), ("server", srv.id)]
        self._check_unlocked(resources)
        if vol.server is not None:
            raise ApiError.rule(
                "volume_already_attached",
                f"volume {vol.id} is already attached to server {vol.server}, detach first",
            )
        if vol.location != srv.location:
            raise ApiError.rule(
                "volume_location_mismatch",
                f"volume {vol.id} is in {vol.location}, server {srv.id} is in {srv.location}: "
                "a volume can only be attached to a server in the same location",
                {"fields": [{"name": "server", "messages": ["location mismatch"]}]},
            )

        def apply() -> None:
            vol.server = srv.id

        return self._start_action("attach_volume", resources, on_success=apply)

    def _h_volume_detach(self, m: re.Match[str], query: _Query, body: Any) -> _Result:
        vol = self._volume(int(m[1]))
        if vol.server is None:
            self._check_unlocked([("volume", vol.id)])
            raise ApiError.rule("volume_not_attached", f"volume {vol.id} is not attached")
        resources = [("volume", vol.id), ("server", vol.server)]
        self._check_unlocked(resources)

        def apply() -> None:
            vol.server = None

        return self._start_action("detach_volume", resources, on_success=apply)

    def _h_list_floating_ips(self, m: re.Match[str], query: _Query, body: Any) -> _Result:
        fips = self._filtered(self._floating_ips.values(), query)
        return self._paginate("floating_ips", [self._floating_ip_json(f) for f in fips], query)

    def _h_get_floating_ip(self, m: re.Match[str], query: _Query, body: Any) -> _Result:
        return 200, {"floating_ip": self._floating_ip_json(self._floating_ip(int(m[1])))}

    def _h_update_floating_ip(self, m: re.Match[str], query: _Query, body: Any) -> _Result:
        fip = self._floating_ip(int(m[1]))
        self._update(fip, self._floating_ips.values(), body, {"name", "labels", "description"})
        return 200, {"floating_ip": self._floating_ip_json(fip)}

    def _h_floating_ip_assign(self, m: re.Match[str], query: _Query, body: Any) -> _Result:
        fip = self._floating_ip(int(m[1]))
        srv = self._target_server(body)
        resources = [("floating_ip", fip.id), ("server", srv.id)]
        self._check_unlocked(resources)
        if fip.server == srv.id:
            return self._start_action("assign_floating_ip", resources, noop=True)

        def apply() -> None:
            fip.server = srv.id  # reassigns if it pointed elsewhere; any location is fine

        return self._start_action("assign_floating_ip", resources, on_success=apply)

    def _h_floating_ip_unassign(self, m: re.Match[str], query: _Query, body: Any) -> _Result:
        fip = self._floating_ip(int(m[1]))
        resources = [("floating_ip", fip.id)]
        if fip.server is not None:
            resources.append(("server", fip.server))
        self._check_unlocked(resources)
        if fip.server is None:
            return self._start_action("unassign_floating_ip", resources, noop=True)

        def apply() -> None:
            fip.server = None

        return self._start_action("unassign_floating_ip", resources, on_success=apply)

    def _placement_group(self, gid: int) -> _PlacementGroup:
        group = self._placement_groups.get(gid)
        if group is None:
            raise ApiError.rule("not_found", f"placement_group with ID '{gid}' not found")
        return group

    def _h_list_placement_groups(self, m: re.Match[str], query: _Query, body: Any) -> _Result:
        groups = self._filtered(self._placement_groups.values(), query)
        if "type" in query:
            groups = [g for g in groups if g.type in set(query["type"])]
        items = [self._placement_group_json(g) for g in groups]
        return self._paginate("placement_groups", items, query)

    def _h_get_placement_group(self, m: re.Match[str], query: _Query, body: Any) -> _Result:
        return 200, {
            "placement_group": self._placement_group_json(self._placement_group(int(m[1])))
        }

    def _h_create_placement_group(self, m: re.Match[str], query: _Query, body: Any) -> _Result:
        # Runs under the fake's lock (see _answer): checking the name and taking it is atomic.
        if not isinstance(body, dict):
            raise ApiError.rule("invalid_input", "request body must be a JSON object")
        unknown = set(body) - {"name", "type", "labels"}
        if unknown:
            raise _field_error(sorted(unknown)[0], "unknown field")
        name = body.get("name")
        if not isinstance(name, str) or not name:
            raise _field_error("name", "is required")
        if body.get("type") not in _PLACEMENT_GROUP_TYPES:
            raise _field_error("type", "must be one of: spread")
        labels = _validate_labels(body.get("labels") or {})
        if any(g.name == name for g in self._placement_groups.values()):
            raise ApiError(
                *RULE_ERRORS["uniqueness_error"],
                "name is already used",
                {"fields": [{"name": "name"}]},
            )
        group = _PlacementGroup(
            id=next(self._ids),
            name=name,
            labels=labels,
            type=body["type"],
            created=_now(self.clock_offset),
        )
        self._placement_groups[group.id] = group
        return 201, {"placement_group": self._placement_group_json(group), "action": None}

    def _h_update_placement_group(self, m: re.Match[str], query: _Query, body: Any) -> _Result:
        group = self._placement_group(int(m[1]))
        self._update(group, self._placement_groups.values(), body, {"name", "labels"})
        return 200, {"placement_group": self._placement_group_json(group)}

    def _h_delete_placement_group(self, m: re.Match[str], query: _Query, body: Any) -> _Result:
        del self._placement_groups[self._placement_group(int(m[1])).id]
        return 204, {}

    def _h_get_action(self, m: re.Match[str], query: _Query, body: Any) -> _Result:
        action = self._actions.get(int(m[1]))
        if action is None:
            raise ApiError.rule("not_found", f"action with ID '{m[1]}' not found")
        self._poll(action)
        return 200, {"action": action.to_json()}

    def _h_list_actions(self, m: re.Match[str], query: _Query, body: Any) -> _Result:
        # Listing all actions without ids was removed from the API (changelog 2023-07-20).
        if "id" not in query:
            raise _field_error("id", "is required")
        actions = []
        for raw in query["id"]:
            try:
                action = self._actions.get(int(raw))
            except ValueError:
                raise _field_error("id", "must be an integer") from None
            if action is not None:
                self._poll(action)
                actions.append(action)
        actions = self._filter_actions(actions, query)
        return self._paginate("actions", [a.to_json() for a in actions], query)

    def _resource_actions(self, collection: str, rid: int) -> list[_Action]:
        lookup = {
            "servers": self._server,
            "volumes": self._volume,
            "floating_ips": self._floating_ip,
        }[collection]
        lookup(rid)  # 404 for an unknown resource
        key = (_RESOURCE_TYPE[collection], rid)
        return [a for a in self._actions.values() if key in a.resources]

    @staticmethod
    def _filter_actions(actions: list[_Action], query: dict[str, list[str]]) -> list[_Action]:
        if "status" in query:
            wanted = set(query["status"])
            actions = [a for a in actions if a.status in wanted]
        return sorted(actions, key=lambda a: a.id)

    def _h_list_resource_actions(self, m: re.Match[str], query: _Query, body: Any) -> _Result:
        actions = self._filter_actions(self._resource_actions(m[1], int(m[2])), query)
        return self._paginate("actions", [a.to_json() for a in actions], query)

    def _h_get_resource_action(self, m: re.Match[str], query: _Query, body: Any) -> _Result:
        aid = int(m[3])
        for action in self._resource_actions(m[1], int(m[2])):
            if action.id == aid:
                self._poll(action)
                return 200, {"action": action.to_json()}
        raise ApiError.rule("not_found", f"action with ID '{aid}' not found")


@dataclass
class _Response:
    status: int
    payload: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


_DROPPED: Any = object()

_ROUTES: list[tuple[str, re.Pattern[str], Callable[..., tuple[int, dict[str, Any]]]]] = [
    (method, re.compile(pattern), handler)
    for method, pattern, handler in [
        ("GET", r"^/v1/servers$", FakeHcloud._h_list_servers),
        ("GET", r"^/v1/servers/(\d+)$", FakeHcloud._h_get_server),
        ("PUT", r"^/v1/servers/(\d+)$", FakeHcloud._h_update_server),
        (
            "POST",
            r"^/v1/servers/(\d+)/actions/(poweroff|poweron|shutdown|reset)$",
            FakeHcloud._h_server_action,
        ),
        ("GET", r"^/v1/volumes$", FakeHcloud._h_list_volumes),
        ("GET", r"^/v1/volumes/(\d+)$", FakeHcloud._h_get_volume),
        ("PUT", r"^/v1/volumes/(\d+)$", FakeHcloud._h_update_volume),
        ("POST", r"^/v1/volumes/(\d+)/actions/attach$", FakeHcloud._h_volume_attach),
        ("POST", r"^/v1/volumes/(\d+)/actions/detach$", FakeHcloud._h_volume_detach),
        ("GET", r"^/v1/floating_ips$", FakeHcloud._h_list_floating_ips),
        ("GET", r"^/v1/floating_ips/(\d+)$", FakeHcloud._h_get_floating_ip),
        ("PUT", r"^/v1/floating_ips/(\d+)$", FakeHcloud._h_update_floating_ip),
        ("POST", r"^/v1/floating_ips/(\d+)/actions/assign$", FakeHcloud._h_floating_ip_assign),
        (
            "POST",
            r"^/v1/floating_ips/(\d+)/actions/unassign$",
            FakeHcloud._h_floating_ip_unassign,
        ),
        ("GET", r"^/v1/placement_groups$", FakeHcloud._h_list_placement_groups),
        ("POST", r"^/v1/placement_groups$", FakeHcloud._h_create_placement_group),
        ("GET", r"^/v1/placement_groups/(\d+)$", FakeHcloud._h_get_placement_group),
        ("PUT", r"^/v1/placement_groups/(\d+)$", FakeHcloud._h_update_placement_group),
        ("DELETE", r"^/v1/placement_groups/(\d+)$", FakeHcloud._h_delete_placement_group),
        ("GET", r"^/v1/actions$", FakeHcloud._h_list_actions),
        ("GET", r"^/v1/actions/(\d+)$", FakeHcloud._h_get_action),
        (
            "GET",
            r"^/v1/(servers|volumes|floating_ips)/(\d+)/actions$",
            FakeHcloud._h_list_resource_actions,
        ),
        (
            "GET",
            r"^/v1/(servers|volumes|floating_ips)/(\d+)/actions/(\d+)$",
            FakeHcloud._h_get_resource_action,
        ),
    ]
]


class _HTTPServer(ThreadingHTTPServer):
    # Room for many clients connecting at once (racing promoters); the default backlog of 5
    # resets the connections beyond it.
    request_queue_size = 128


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.0: one request per connection, so handler threads end with their request
    # and FakeHcloud.stop() can join them.
    protocol_version = "HTTP/1.0"
    timeout = 10
    server_version = "FakeHcloud/1.0"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def date_time_string(self, timestamp: float | None = None) -> str:
        # The Date header: the fake's clock, which a test may have shifted.
        fake: FakeHcloud = self.server.fake  # type: ignore[attr-defined]
        return super().date_time_string(fake.now() if timestamp is None else timestamp)

    def _serve(self, method: str) -> None:
        fake: FakeHcloud = self.server.fake  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        if fake._hold_if_silent():
            self.close_connection = True
            return
        response = fake._handle(method, self.path, self.headers, body)
        if response is _DROPPED:
            self.close_connection = True
            return
        data = b"" if response.status == 204 else json.dumps(response.payload).encode()
        self.send_response(response.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")
