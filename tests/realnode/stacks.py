"""A stack's nodes as the cloud would get them, and a client on the test network."""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from blueprints.plan import Plan, plan_stack
from blueprints.render.unpack import SERVER_TYPES, server_user_data, user_data_files
from blueprints.spec import load_spec
from tests.realnode.host import WORK_ROOT, HarnessError, require_host, wait_for
from tests.realnode.images import build_standins
from tests.realnode.net import TestNetwork
from tests.realnode.node import TIMINGS, DataDisk, Node

PROJECT = Path(__file__).resolve().parents[2]


def user_data(stack: str, server_suffix: str) -> tuple[Plan, str]:
    """The offline plan of `stack` and the user data of its server whose name ends in suffix."""
    plan = plan_stack(stack, PROJECT)
    for res in plan.resources:
        if res.type in SERVER_TYPES and res.name.endswith(server_suffix):
            text = server_user_data(res)
            if text is not None:
                return plan, text
    raise HarnessError(f"stack {stack} has no server named *{server_suffix} with user data")


def written_file(user_data_text: str, path: str) -> str | None:
    return user_data_files(user_data_text).get(path.lstrip("/"))


def floating_ip(user_data_text: str) -> str | None:
    """The address the rendered netplan file puts on eth0 (Hetzner's floating IP), if any."""
    text = written_file(user_data_text, "/etc/netplan/60-floating-ip.yaml")
    if text is None:
        return None
    (address,) = yaml.safe_load(text)["network"]["ethernets"]["eth0"]["addresses"]
    return address.split("/")[0]


def http_status(run, url: str, host: str | None = None, timeout: float = 5) -> str:
    """The status code of one plain-HTTP GET, by curl through `run` (Node.exec or
    TestNetwork.run), with `host` as the Host header if given; "000" when nothing answered."""
    argv = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", str(timeout)]
    if host is not None:
        argv += ["-H", f"Host: {host}"]
    return run([*argv, url], check=False).stdout


@dataclass
class Response:
    status: int  # 0: no HTTP answer (refused, timed out, TLS failed)
    body: str
    seconds: float
    error: str = ""


class HttpsClient:
    """curl on the client side of a TestNetwork: `domain` resolved to `address`, TLS verified
    against `cacert` (Caddy's internal root, read from the node)."""

    def __init__(self, network: TestNetwork, domain: str, address: str, cacert: Path):
        self.network, self.domain, self.address, self.cacert = network, domain, address, cacert

    def get(self, path: str = "/", timeout: float = 5) -> Response:
        started = time.monotonic()
        proc = self.network.run(
            [
                "curl",
                "--silent",
                "--show-error",
                "--max-time",
                str(timeout),
                "--cacert",
                str(self.cacert),
                "--resolve",
                f"{self.domain}:443:{self.address}",
                "--write-out",
                "\n%{http_code}",
                f"https://{self.domain}{path}",
            ],
            check=False,
            timeout=timeout + 10,
        )
        body, _, code = proc.stdout.rpartition("\n")
        return Response(
            status=int(code) if code.isdigit() else 0,
            body=body,
            seconds=time.monotonic() - started,
            error=proc.stderr.strip(),
        )


@dataclass
class StackNode:
    """One booted node of a stack, on its own test network, with its volume and a client."""

    stack: str
    plan: Plan
    user_data: str
    domain: str
    network: TestNetwork
    disk: DataDisk
    node: Node
    cacert: Path | None = None
    # The test network's resolver (release.Resolver), when the node gets releases.
    resolver: Any = None

    def client(self, address: str | None = None) -> HttpsClient:
        """HTTPS to the node's proxy at `address` (default: its floating IP, else its own)."""
        if self.cacert is None:
            self.cacert = self.node.dir / "caddy-root.crt"
            # Caddy's storage root is /data/caddy in its container, /srv/data/caddy on the node.
            root = self.node.read("/srv/data/caddy/caddy/pki/authorities/local/root.crt")
            self.cacert.write_text(root)
        return HttpsClient(
            self.network,
            self.domain,
            address or floating_ip(self.user_data) or self.node.address,
            self.cacert,
        )


def deliver_planned_release(sn: StackNode) -> float:
    """The plan's own release, handed to the node the way `pulumi up` does (over ssh as deploy,
    the agent, the secrets, then the release: tests/realnode/release.py); seconds it took."""
    from tests.realnode.release import ReleaseChannel

    sn.node.wait_active(["bpt-first-boot.service", "ssh.service", "srv-data.mount"], timeout=240)
    channel = ReleaseChannel(sn)
    channel.authorize()
    started = time.monotonic()
    proc = channel.deploy(channel.documents())
    if proc.returncode != 0:
        raise HarnessError(
            f"{sn.stack}: the planned release failed (exit {proc.returncode}):\n"
            f"{proc.stdout}{proc.stderr}\n{sn.node.diagnose()}"
        )
    return time.monotonic() - started


def boot_stack_node(stack: str, suffix: str, ready, label: str, release: bool = False) -> StackNode:
    """Plan `stack`, boot its `*suffix` server with a blank volume, wait until `ready(node)`;
    with `release`, deliver the plan's release first (the app is not in the user data).

    Records the seconds from start to booted and to ready in node.TIMINGS under `label`.
    The caller must call destroy_stack_node on the result, also when a test fails.
    """
    plan, text = user_data(stack, suffix)
    app = load_spec(PROJECT / "examples/app.yaml")
    network = TestNetwork(stack)
    network.create()
    disk = node = resolver = None
    try:
        if release:
            from tests.realnode.release import Resolver

            # Like a cloud network's resolver: NXDOMAIN at once for a name nobody holds (a
            # replica slot with no container), which Docker's DNS forwards to it.
            resolver = Resolver(network).__enter__()
        # Like Django or Rails in production, the stand-ins answer only for the app's domain.
        images = build_standins(app, WORK_ROOT / "images" / network.name, host=app.domain)
        disk = DataDisk(f"{stack}-volume")
        node = Node(suffix.lstrip("-") or "node", text, network, disk=disk, images=images)
        fip = floating_ip(text)
        if fip is not None:
            network.assign(fip, node.address)
        node.start()
        booted = node.wait_booted()
        TIMINGS.append((f"{label}: start -> systemd booted", booted))
        sn = StackNode(stack, plan, text, app.domain, network, disk, node, resolver=resolver)
        if resolver is not None:
            resolver.serve(node)
        if release:
            sent = deliver_planned_release(sn)
            TIMINGS.append((f"{label}: first release over ssh (pulls, starts, health gates)", sent))
        ready(node)
        active = time.monotonic() - node.started_at
        what = "every app unit active and healthy" if release else "ready for a release"
        TIMINGS.append((f"{label}: start -> {what}", active))
        if release and CADDY_CONFIG in (_planned_release(plan) or ""):
            # Caddy's active health checks start out failing while the replicas' names do not
            # resolve yet, so the proxy can trail the units by up to one check interval.
            client = sn.client()
            wait_for(
                "the first HTTPS answer through Caddy",
                lambda: client.get("/", timeout=3).status == 200,
                90,
                0.5,
            )
            TIMINGS.append(
                (
                    f"{label}: start -> first HTTPS 200 through Caddy",
                    time.monotonic() - node.started_at,
                )
            )
        return sn
    except BaseException:
        if node is not None:
            node.destroy()
        if disk is not None:
            disk.destroy()
        if resolver is not None:
            resolver.__exit__(None, None, None)
        network.destroy()
        shutil.rmtree(WORK_ROOT / "images" / network.name, ignore_errors=True)
        raise


CADDY_CONFIG = "/etc/blueprints/caddy.json"


def _planned_release(plan: Plan) -> str | None:
    for res in plan.resources:
        if res.type == "command:remote:Command" and res.name.endswith("-release"):
            return res.plain_inputs().get("stdin")
    return None


def destroy_stack_node(sn: StackNode) -> None:
    try:
        sn.node.destroy()
    finally:
        try:
            sn.disk.destroy()
        finally:
            if sn.resolver is not None:
                sn.resolver.__exit__(None, None, None)
            sn.network.destroy()
            shutil.rmtree(WORK_ROOT / "images" / sn.network.name, ignore_errors=True)


@contextlib.contextmanager
def booted_stack_node(
    stack: str, suffix: str, ready, label: str, release: bool = False
) -> Iterator[StackNode]:
    """boot_stack_node as a context: the node, its volume and its network are gone on exit,
    also when the body fails. A test module's fixture is `with booted_stack_node(...) as sn:
    yield sn`."""
    require_host()
    sn = boot_stack_node(stack, suffix, ready, label, release)
    try:
        yield sn
    finally:
        destroy_stack_node(sn)
