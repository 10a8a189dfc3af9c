"""The single-vm stack on Hetzner Cloud, through the official `hcloud` SDK.

Servers, volume and floating IP are found by the labels the blueprint sets (app, blueprint,
node). Every action is awaited through /v1/actions before the next step reads state.
"""

from __future__ import annotations

from hcloud import APIException, Client
from hcloud.actions import ActionFailedException, ActionTimeoutException

from blueprints.failover.cloud import (
    NODES,
    Cloud,
    CloudError,
    Node,
    Snapshot,
    TransientCloudError,
)

LOCK_LABEL = "blueprints-promotion"
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
    return TransientCloudError(f"{what}: {exc.__class__.__name__}: {exc}")


class HcloudCloud(Cloud):
    def __init__(
        self,
        client: Client,
        app: str,
        stack: str,
        blueprint: str = "single-vm",
        action_max_retries: int | None = None,
    ):
        self.client = client
        self.selector = f"app={app},blueprint={blueprint},stack={stack}"
        self.app = app
        self.action_max_retries = action_max_retries

    # -- lookups ---------------------------------------------------------------------------

    def _do(self, what: str, fn):
        try:
            return fn()
        except CloudError:
            raise
        except (APIException, ActionFailedException, ActionTimeoutException) as exc:
            raise _wrap(what, exc) from exc
        except OSError as exc:  # connection refused/reset, DNS, TLS
            raise TransientCloudError(f"{what}: {exc.__class__.__name__}: {exc}") from exc

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
        action.wait_until_finished(max_retries=self.action_max_retries)

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
                lock=(volume.labels or {}).get(LOCK_LABEL),
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

    def write_lock(self, value: str | None) -> None:
        def run():
            volume = self._volume()
            labels = dict(volume.labels or {})
            if value is None:
                labels.pop(LOCK_LABEL, None)
            else:
                labels[LOCK_LABEL] = value
            volume.update(labels=labels)

        self._do("recording the promotion on the volume", run)
