"""A Hetzner server's power state as a Pulumi resource (pulumi-hcloud has none).

`ServerPower` keeps one server running or powered off. It is a Pulumi dynamic resource whose
provider talks to the Hetzner API with the official `hcloud` client, using the stack's
`hcloud:token` (a secret input, kept encrypted in the state) and, where HCLOUD_ENDPOINT is set
when the program runs, that API endpoint instead of Hetzner's.

Its diff reads the server's real status at every preview instead of trusting what Pulumi last
recorded: a server meant to run that is found off (fenced by a promotion, stopped in the console,
powered off by its OS) shows as an update in `pulumi preview`, and the next `pulumi up` powers it
on; a cold spare found running is shut down again. A refresh reads the status too.

Powering off is an ACPI shutdown first, so the OS stops cleanly, then a hard power-off if the
server is not off within `shutdown_wait` seconds. Deleting the resource leaves the server as it
is (a deleted server takes its power state with it).

Every request has the stack's apiTimeout and the SDK's own retry loop is off (it would retry a
timed-out request 5 times, backing off up to 60 s, unseen); `apply` retries what may pass on a
second try (a locked server, a rate limit, a gateway error, a timeout) until `power_wait`. An
error reaches `pulumi up` as one sentence, with the token never in it, and without the Python
traceback Pulumi's dynamic provider host would otherwise send along.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import pulumi
from pulumi import dynamic

RUNNING = "running"
OFF = "off"
STATES = (RUNNING, OFF)
DEFAULT_ENDPOINT = "https://api.hetzner.cloud/v1"
# Hetzner's server statuses that are (or are on their way to) each wanted state: a server that
# is starting is not "found off", and one that is stopping is not "found running".
REACHED = {
    RUNNING: frozenset({"running", "starting", "initializing", "migrating", "rebuilding"}),
    OFF: frozenset({"off", "stopping"}),
}
# Statuses that settle by themselves; an action is only sent once the server is in neither.
_MOVING = frozenset({"starting", "stopping", "initializing", "migrating", "rebuilding"})
# What the provider passes through unchanged: inputs it compares and keeps in the state.
_COMPARED = ("state", "token", "endpoint", "timeout")
# Answers worth a second try (the SDK's own retry policy, which is off here): the API's error
# codes and their HTTP statuses.
_TRANSIENT = frozenset({"locked", "rate_limit_exceeded", "conflict", "bad_gateway", "timeout"})
_TRANSIENT_STATUS = frozenset({423, 429, 502, 504})
# Where Pulumi's dynamic provider host runs (`python -m pulumi.dynamic`).
_HOST_MODULE = "pulumi.dynamic.__main__"
REDACTED = "***"


class PowerError(Exception):
    """One sentence: what could not be done to which server, and why."""


def _redact(text: str, props: Any) -> str:
    """`text` without the API token of `props` (a mapping of inputs), stripped or not."""
    raw = str(props.get("token") or "") if isinstance(props, Mapping) else ""
    for token in sorted({raw, raw.strip()}, key=len, reverse=True):
        if token.strip():
            text = text.replace(token, REDACTED)
    return text


def _in_provider_host() -> bool:
    main = sys.modules.get("__main__")
    return getattr(getattr(main, "__spec__", None), "name", None) == _HOST_MODULE


def _one_sentence(method: Callable[..., Any]) -> Callable[..., Any]:
    """A provider method whose PowerError reaches Pulumi as its sentence alone: no token in it,
    and, in Pulumi's dynamic provider host (which reports `traceback.format_exc()`), no
    traceback either. Other exceptions (bugs) keep theirs."""

    @functools.wraps(method)
    def run(self: ServerPowerProvider, *args: Any) -> Any:
        try:
            return method(self, *args)
        except PowerError as exc:
            text = str(exc)
            for props in args:
                text = _redact(text, props)
            if _in_provider_host():
                # The host formats the exception being handled; with no frames that is one
                # line, `<module>.PowerError: <sentence>`. The process serves Pulumi's dynamic
                # resources only, and ends with the update.
                sys.tracebacklimit = 0
            raise PowerError(text) from None

    return run


class ServerPowerProvider(dynamic.ResourceProvider):
    """The provider behind ServerPower. Its attributes are timings (tests make them short);
    `client` makes the API client from (token, endpoint, timeout) (tests hand in the fake's)."""

    def __init__(
        self,
        *,
        poll: float = 2.0,
        shutdown_wait: float = 60.0,
        power_wait: float = 300.0,
        client: Callable[[str, str, float], Any] | None = None,
    ) -> None:
        super().__init__()
        self.poll = poll
        self.shutdown_wait = shutdown_wait
        self.power_wait = power_wait
        self.client = client

    # -- the provider protocol ----------------------------------------------------------------

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> dynamic.CheckResult:
        failures = []
        if news.get("state") not in STATES:
            failures.append(dynamic.CheckFailure("state", f"must be one of {', '.join(STATES)}"))
        if news.get("serverId") in (None, ""):
            failures.append(dynamic.CheckFailure("serverId", "is required"))
        return dynamic.CheckResult(news, failures)

    @_one_sentence
    def create(self, props: dict[str, Any]) -> dynamic.CreateResult:
        status = self.apply(props)
        return dynamic.CreateResult(str(props["serverId"]), self._outs(props, status))

    @_one_sentence
    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.DiffResult:
        if str(news.get("serverId")) != str(olds.get("serverId")):
            # Another server (or one not created yet): a new resource for it.
            return dynamic.DiffResult(
                changes=True, replaces=["serverId"], delete_before_replace=True
            )
        changed = any(olds.get(key) != news.get(key) for key in _COMPARED)
        # The token may be unknown in a preview (computed); the stored one reads the status then.
        usable = news if _known(news.get("token")) else olds
        status = self.status({**usable, "serverId": news["serverId"]})
        found_other = status not in REACHED[news["state"]]
        return dynamic.DiffResult(changes=changed or found_other, replaces=[])

    @_one_sentence
    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> dynamic.UpdateResult:
        return dynamic.UpdateResult(self._outs(news, self.apply(news)))

    @_one_sentence
    def read(self, id_: str, props: dict[str, Any]) -> dynamic.ReadResult:
        status = self.status(props)
        if status == "":
            return dynamic.ReadResult("", {})  # the server is gone: so is its power state
        return dynamic.ReadResult(id_, self._outs(props, status))

    @_one_sentence
    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        """Nothing to undo: the server keeps whatever state it is in."""

    # -- the work ---------------------------------------------------------------------------

    def status(self, props: Mapping[str, Any]) -> str:
        """The server's status now ("" if it does not exist): one read, no retry."""
        server = self._server(props)
        return "" if server is None else str(server.status)

    def apply(self, props: Mapping[str, Any]) -> str:
        """Bring the server to props["state"]; return the status it ends in."""
        want = str(props["state"])
        sid = props["serverId"]
        deadline = time.monotonic() + self.power_wait
        while True:
            server = self._server(props, deadline)
            if server is None:
                raise PowerError(
                    f"server {sid} does not exist (deleted outside Pulumi?); run `pulumi refresh`"
                )
            status = str(server.status)
            if status == want:
                return status
            if time.monotonic() > deadline:
                raise PowerError(
                    f"server {sid} is still {status} after {self.power_wait:g}s; wanted {want}"
                )
            if status in _MOVING:
                time.sleep(self.poll)
            elif want == RUNNING:
                self._act(props, "power on", server.power_on, deadline)
            else:
                self._power_off(props, server, deadline)

    def _power_off(self, props: Mapping[str, Any], server: Any, deadline: float) -> None:
        self._act(props, "shut down", server.shutdown, deadline)
        waited = time.monotonic() + self.shutdown_wait
        while time.monotonic() < min(waited, deadline):
            now = self._server(props, deadline)
            if now is None or str(now.status) == OFF:
                return
            time.sleep(self.poll)
        # The OS did not power off by itself (it ignores ACPI, or hangs): cut the power.
        now = self._server(props, deadline)
        if now is not None and str(now.status) != OFF:
            self._act(props, "power off", now.power_off, deadline)

    def _act(
        self, props: Mapping[str, Any], what: str, call: Callable[[], Any], deadline: float
    ) -> None:
        """Send one action and wait for it, retrying while the server is locked by another
        action (a server just created is, for a while) or the API answers something that may
        pass (a rate limit, a gateway error), until `deadline`."""
        from hcloud import APIException
        from hcloud.actions import ActionException

        sid = props["serverId"]
        while True:
            try:
                action = call()
                action.wait_until_finished()
                return
            except APIException as exc:
                if _transient(exc) and time.monotonic() < deadline:
                    time.sleep(self.poll)
                    continue
                raise PowerError(
                    _redact(
                        f"could not {what} server {sid}: the Hetzner API answered {exc.code}: "
                        f"{exc.message}",
                        props,
                    )
                ) from None
            except ActionException as exc:
                error = getattr(exc.action, "error", None) or {}
                raise PowerError(
                    _redact(
                        f"could not {what} server {sid}: its action ended "
                        f"{getattr(exc.action, 'status', 'unfinished')}"
                        + (f" ({error.get('code')}: {error.get('message')})" if error else ""),
                        props,
                    )
                ) from None
            except Exception as exc:  # a network error or a timeout: say which
                if _timed_out(exc) and time.monotonic() < deadline:
                    time.sleep(self.poll)
                    continue
                raise PowerError(
                    _redact(
                        f"could not {what} server {sid} at {_endpoint(props)}: "
                        f"{exc.__class__.__name__}: {exc}",
                        props,
                    )
                ) from None

    def _server(self, props: Mapping[str, Any], deadline: float | None = None) -> Any:
        """The server (None if it does not exist). With a deadline, an answer that may pass
        on a second try is retried until then; without one, one request decides."""
        from hcloud import APIException

        sid = props["serverId"]
        while True:
            try:
                return self._client(props).servers.get_by_id(int(sid))
            except APIException as exc:
                if exc.code in ("not_found", 404):
                    return None
                if _transient(exc) and deadline is not None and time.monotonic() < deadline:
                    time.sleep(self.poll)
                    continue
                raise PowerError(
                    _redact(
                        f"could not read server {sid}: the Hetzner API answered {exc.code}: "
                        f"{exc.message}",
                        props,
                    )
                ) from None
            except Exception as exc:  # a network error: say which, without a traceback
                if _timed_out(exc) and deadline is not None and time.monotonic() < deadline:
                    time.sleep(self.poll)
                    continue
                raise PowerError(
                    _redact(
                        f"could not read server {sid} from {_endpoint(props)}: "
                        f"{exc.__class__.__name__}: {exc}",
                        props,
                    )
                ) from None

    def _client(self, props: Mapping[str, Any]) -> Any:
        # Stripped: a token pasted with its line end would be sent as a broken header, and
        # the HTTP library's complaint about it quotes the header.
        token = str(props.get("token") or "").strip()
        endpoint = _endpoint(props)
        timeout = float(props.get("timeout") or 10)
        if self.client is not None:
            return self.client(token, endpoint, timeout)
        from hcloud import Client

        client = Client(
            token=token,
            api_endpoint=endpoint,
            application_name="blueprints",
            poll_interval=self.poll,
            timeout=timeout,
        )
        # The SDK retries a timed-out request 5 times with backoff up to 60 s (hcloud 2.x),
        # unseen and past any wait of ours; `apply` retries instead, within power_wait (as
        # blueprints.failover.session.hcloud_cloud does for the failover commands).
        for base in (getattr(client, "_client", None), getattr(client, "_client_hetzner", None)):
            if base is not None and hasattr(base, "_retry_max_retries"):
                base._retry_max_retries = 0
        return client

    @staticmethod
    def _outs(props: Mapping[str, Any], status: str) -> dict[str, Any]:
        out = {key: props[key] for key in ("serverId", *_COMPARED) if props.get(key) is not None}
        out["status"] = status
        return out


def _endpoint(props: Mapping[str, Any]) -> str:
    return str(props.get("endpoint") or DEFAULT_ENDPOINT)


def _transient(exc: Any) -> bool:
    """An API answer that may pass on a second try."""
    return exc.code in _TRANSIENT or exc.code in _TRANSIENT_STATUS


def _timed_out(exc: BaseException) -> bool:
    import requests

    return isinstance(exc, requests.exceptions.Timeout)


def _known(value: Any) -> bool:
    from pulumi.runtime import rpc

    return value not in (None, "", rpc.UNKNOWN)


class ServerPower(dynamic.Resource, module="blueprints", name="ServerPower"):
    """Keep a Hetzner server running (running=True) or powered off; `status` is what the API
    said after the last change or refresh."""

    status: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        *,
        server_id: pulumi.Input[str],
        running: bool,
        token: pulumi.Input[str],
        endpoint: str | None = None,
        timeout: int = 10,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props: dict[str, Any] = {
            "serverId": server_id,
            "state": RUNNING if running else OFF,
            "token": pulumi.Output.secret(token),
            "timeout": timeout,
            "status": None,
        }
        if endpoint:
            props["endpoint"] = endpoint
        # The token comes back among the outputs (a refresh needs it): keep it a secret there.
        secret = pulumi.ResourceOptions(additional_secret_outputs=["token"])
        super().__init__(
            ServerPowerProvider(), name, props, pulumi.ResourceOptions.merge(opts, secret)
        )
