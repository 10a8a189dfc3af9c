"""acme-retry, the Caddy rungs' helper for the first certificate: it reads the routes from the
proxy configuration a release writes (rendered here from a spec with extra hosts), looks for
their certificates where Caddy keeps them, and restarts the proxy when a domain without a
certificate starts to resolve to this server, no more often than its backoff allows. DNS, the
server's addresses, the clock, the proxy's running check and the restart are stood in by
functions that record what they are asked; the address lookups run against a real `ip -json`
output and a local HTTP server speaking IMDSv2; the shipped file is also run as the node runs it
(python3, standard library)."""

from __future__ import annotations

import http.server
import json
import shlex
import socketserver
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from blueprints.render import acme_retry as ar
from blueprints.render import compose as rc
from blueprints.render import single_vm as svm
from blueprints.render.vm import (
    ACME_RETRY,
    ACME_RETRY_STATE,
    ACME_RETRY_UNIT,
    acme_retry_files,
    acme_retry_source,
)
from blueprints.spec import parse_spec

ROOT = Path(__file__).resolve().parent.parent
HOSTS = ["admin.example.org", "shop.example.com", "www.shop.example.com"]
HERE = "203.0.113.7"  # this server's address
HERE6 = "2001:db8::7"
ELSEWHERE = ["198.51.100.1", "198.51.100.2", "198.51.100.3", "2001:db8:1::1"]
RESTART = ["systemctl", "try-restart", "blueprints-caddy.service"]
RUNNING = ["systemctl", "is-active", "blueprints-caddy.service"]
MINUTE = 60


def app():
    data = yaml.safe_load((ROOT / "examples/app.yaml").read_text())
    data["services"]["web"]["ports"] += [
        {"port": 8001, "expose": "http", "host": "www.shop.example.com"},
        {"port": 8002, "expose": "http", "host": "admin.example.org", "path": "/api"},
    ]
    return parse_spec(data)


@pytest.fixture
def node(tmp_path: Path) -> dict[str, Path]:
    """The release's caddy.json (rendered), an empty certificate store and the state file."""
    config = tmp_path / "caddy.json"
    config.write_text(json.dumps(svm._caddy_config(app())))
    return {"config": config, "storage": tmp_path / "storage", "state": tmp_path / "run/state"}


def certificate(storage: Path, host: str, issuer: str = "acme-v02.api.letsencrypt.org-directory"):
    folder = storage / "certificates" / issuer / host
    folder.mkdir(parents=True)
    (folder / f"{host}.crt").write_text("-----BEGIN CERTIFICATE-----\n")


class World:
    """DNS answers, the server's addresses and the time the test sets; whether the proxy runs
    and whether its restart works; the commands and restarts asked for."""

    def __init__(self):
        self.dns: dict[str, list[str]] = {}
        self.own = {HERE, HERE6}
        self.now = 1_000_000.0
        self.proxy_runs = True
        self.restart_status = 0
        self.restarts: list[float] = []  # when
        self.commands: list[list[str]] = []
        self.asked: list[str] = []
        self.address_lookups = 0

    def resolve(self, host: str) -> list[str]:
        self.asked.append(host)
        return sorted(self.dns.get(host, []))

    def addresses(self) -> set[str]:
        self.address_lookups += 1
        return set(self.own)

    def run_command(self, command) -> tuple[int, str]:
        command = list(command)
        self.commands.append(command)
        if command == RUNNING:
            return (0, "active\n") if self.proxy_runs else (3, "inactive\n")
        assert command == RESTART
        if self.restart_status == 0:
            self.restarts.append(self.now)
        return self.restart_status, ""

    def look(self, node: dict[str, Path]) -> int:
        return ar.run(
            node["config"],
            node["storage"],
            node["state"],
            RESTART,
            resolver=self.resolve,
            runner=self.run_command,
            addresses=self.addresses,
            running=RUNNING,
            clock=lambda: self.now,
        )

    def minutes(self, node: dict[str, Path], count: int) -> None:
        for _ in range(count):
            self.now += MINUTE
            assert self.look(node) == 0


@pytest.mark.parametrize("dynamic", [False, True])
def test_the_hosts_are_read_from_the_proxy_configuration(dynamic: bool):
    """Both rungs' configurations (single-vm's fixed upstreams, compose's dynamic ones)."""
    assert ar.served_hosts(svm._caddy_config(app(), dynamic=dynamic)) == HOSTS
    assert ar.served_hosts({}) == []


def test_a_domain_that_starts_to_resolve_here_restarts_the_proxy_once(node):
    world = World()
    assert world.look(node) == 0  # nothing resolves yet: only recorded
    assert world.restarts == [] and sorted(world.asked) == HOSTS
    assert world.address_lookups == 0  # nothing to compare them with
    world.minutes(node, 1)
    assert world.restarts == []
    world.dns["www.shop.example.com"] = [HERE]
    world.minutes(node, 1)
    assert world.restarts == [world.now]
    assert world.commands == [RUNNING, RESTART]  # asked whether it runs, first
    world.minutes(node, 30)  # the same answer: no second restart
    assert len(world.restarts) == 1


def test_an_answer_holding_this_server_among_others_counts(node):
    world = World()
    world.look(node)
    world.dns["admin.example.org"] = [ELSEWHERE[0], HERE6]
    world.minutes(node, 1)
    assert len(world.restarts) == 1


def test_dns_pointing_elsewhere_never_restarts_the_proxy(node):
    """A domain behind a CDN, GeoDNS or a load balancer: its answers rotate every minute, and
    none of them is this server."""
    world = World()
    world.look(node)
    for minute in range(6 * 60):
        world.dns = {
            host: [ELSEWHERE[(minute + i) % len(ELSEWHERE)]] for i, host in enumerate(HOSTS)
        }
        world.minutes(node, 1)
    assert world.restarts == [] and world.commands == []
    assert world.address_lookups == 6 * 60  # once per run, whatever the number of hosts


def test_dns_moving_here_from_elsewhere_restarts_the_proxy(node):
    world = World()
    world.dns["shop.example.com"] = [ELSEWHERE[0]]
    world.look(node)
    world.minutes(node, 5)
    world.dns["shop.example.com"] = [HERE]
    world.minutes(node, 1)
    assert world.restarts == [world.now]


def test_restarts_back_off_per_domain(node):
    """A domain flapping between this server and elsewhere every minute (round-robin with
    another server, say) restarts the proxy at once, then 10, 20, 40 minutes later, then
    hourly: never more than Let's Encrypt's 5 failed validations per domain and hour."""
    world = World()
    world.look(node)
    for minute in range(8 * 60):
        world.dns["shop.example.com"] = [HERE] if minute % 2 else [ELSEWHERE[0]]
        world.minutes(node, 1)
    gaps = [b - a for a, b in zip(world.restarts, world.restarts[1:], strict=False)]
    assert gaps[:4] == [600, 1200, 2400, 3600]
    assert set(gaps[3:]) == {3600}
    assert ar.BACKOFF_SECONDS == 600 and ar.BACKOFF_MAX_SECONDS == 3600


def test_a_due_domain_waits_out_its_backoff_if_it_still_points_here(node):
    world = World()
    world.look(node)
    world.dns["shop.example.com"] = [HERE]
    world.minutes(node, 1)
    first = world.now
    world.dns["shop.example.com"] = [ELSEWHERE[0]]
    world.minutes(node, 1)
    world.dns["shop.example.com"] = [HERE]  # back 2 minutes after the restart: due, waits
    world.minutes(node, 8)
    assert world.restarts == [first]
    world.minutes(node, 1)  # 10 minutes after the first
    assert world.restarts == [first, first + 600]
    # due again, but it points elsewhere by the time its backoff (20 minutes) is over
    world.dns["shop.example.com"] = [ELSEWHERE[0]]
    world.minutes(node, 1)
    world.dns["shop.example.com"] = [HERE]
    world.minutes(node, 1)
    world.dns["shop.example.com"] = [ELSEWHERE[0]]
    world.minutes(node, 30)
    assert world.restarts == [first, first + 600]


def test_a_restart_counts_for_every_domain_without_a_certificate(node):
    """Caddy asks for all of them when it starts: another domain coming here just after does
    not restart it again before its own backoff is over."""
    world = World()
    world.look(node)
    world.dns["shop.example.com"] = [HERE]
    world.minutes(node, 1)
    world.dns["www.shop.example.com"] = [HERE]
    world.minutes(node, 9)
    assert len(world.restarts) == 1
    world.minutes(node, 1)
    assert world.restarts[1] - world.restarts[0] == 600


def test_a_failed_restart_is_tried_again_and_not_counted(node, capsys):
    world = World()
    world.look(node)
    world.dns["shop.example.com"] = [HERE]
    world.restart_status = 1
    world.now += MINUTE
    assert world.look(node) == 1
    assert "try-restart blueprints-caddy.service failed (exit status 1)" in capsys.readouterr().err
    world.now += MINUTE
    assert world.look(node) == 1  # still due: tried again the next minute
    assert world.commands.count(RESTART) == 2 and world.restarts == []
    world.restart_status = 0
    world.minutes(node, 1)
    assert world.restarts == [world.now]
    state = json.loads(node["state"].read_text())["shop.example.com"]
    assert state["restarted"] == world.now and state["backoff"] == 600 and not state["due"]
    world.minutes(node, 30)
    assert len(world.restarts) == 1


def test_a_proxy_that_does_not_run_is_not_started(node, capsys):
    """An admin stopped it: it asks for the certificate by itself once started again."""
    world = World()
    world.look(node)
    world.proxy_runs = False
    world.dns["shop.example.com"] = [HERE]
    world.minutes(node, 1)
    assert world.commands == [RUNNING]
    assert "the proxy does not run" in capsys.readouterr().out
    world.proxy_runs = True
    world.minutes(node, 30)
    assert world.restarts == [] and world.commands == [RUNNING]


def test_what_resolves_at_the_first_look_is_left_to_the_proxy(node):
    """The proxy just started and asks by itself: a restart would only interrupt it."""
    world = World()
    world.dns = {h: [HERE] for h in HOSTS}
    world.look(node)
    world.minutes(node, 30)
    assert world.restarts == []


def test_a_domain_with_a_certificate_is_not_looked_up(node):
    world = World()
    for host in HOSTS:
        certificate(node["storage"], host)
    world.look(node)
    world.dns = {h: [HERE] for h in HOSTS}
    world.minutes(node, 1)
    assert world.asked == [] and world.restarts == []


def test_only_the_domains_without_a_certificate_count(node):
    world = World()
    certificate(node["storage"], "shop.example.com")
    world.look(node)
    assert sorted(set(world.asked)) == ["admin.example.org", "www.shop.example.com"]
    world.dns["shop.example.com"] = [HERE]  # has its certificate: no restart
    world.minutes(node, 1)
    assert world.restarts == []
    world.dns["admin.example.org"] = [HERE6]
    world.minutes(node, 1)
    assert len(world.restarts) == 1


def test_no_configuration_no_work(node):
    node["config"].unlink()
    world = World()
    assert world.look(node) == 0
    assert world.asked == [] and world.commands == [] and not node["state"].exists()


@pytest.mark.parametrize(
    "state",
    [
        "not json",
        "[]",
        # an older or foreign format: the answers alone
        json.dumps({"shop.example.com": []}),
        json.dumps({"shop.example.com": {"answer": [], "here": False, "due": True}}),
        json.dumps(
            {
                "shop.example.com": {
                    "answer": [],
                    "here": False,
                    "due": False,
                    "restarted": None,
                    "backoff": 10**9,
                }
            }
        ),
    ],
)
def test_a_state_it_did_not_write_counts_as_a_first_look(node, state):
    node["state"].parent.mkdir(parents=True)
    node["state"].write_text(state)
    world = World()
    world.dns["shop.example.com"] = [HERE]
    assert world.look(node) == 0 and world.restarts == []
    assert json.loads(node["state"].read_text())["shop.example.com"]["here"] is True


def test_the_storage_is_where_caddy_keeps_its_certificates():
    """The host path the unit names is the container's storage root, through the mount."""
    root = svm._caddy_config(app())["storage"]["root"]
    assert root.startswith("/data/")
    assert f"/srv/data/{svm.CADDY_DIR}/{root.removeprefix('/data/')}" == svm.CADDY_STORAGE
    compose = yaml.safe_load(rc.render_compose_file(app()))
    volumes = compose["services"][rc.PROXY_SERVICE]["volumes"]
    assert {"source": f"/srv/data/{svm.CADDY_DIR}", "target": "/data"}.items() <= next(
        v for v in volumes if v["target"] == "/data"
    ).items()


# --- the server's own addresses ------------------------------------------------------------------

# `ip -json address show` of a Hetzner server with a floating IP on eth0 and docker running.
IP_JSON = json.dumps(
    [
        {
            "ifname": "lo",
            "addr_info": [
                {"family": "inet", "local": "127.0.0.1", "prefixlen": 8, "scope": "host"},
                {"family": "inet6", "local": "::1", "prefixlen": 128, "scope": "host"},
            ],
        },
        {
            "ifname": "eth0",
            "addr_info": [
                {"family": "inet", "local": "203.0.113.7", "prefixlen": 32, "scope": "global"},
                {"family": "inet", "local": "198.51.100.9", "prefixlen": 32, "scope": "global"},
                {
                    "family": "inet6",
                    "local": "2001:0db8:0000::0007",
                    "prefixlen": 64,
                    "scope": "global",
                },
                {"family": "inet6", "local": "fe80::1", "prefixlen": 64, "scope": "link"},
            ],
        },
        {"ifname": "eth1", "flags": ["NO-CARRIER"]},
    ]
)


def test_interface_addresses_are_the_global_ones():
    assert ar.interface_addresses(IP_JSON) == {"203.0.113.7", "198.51.100.9", "2001:db8::7"}
    assert ar.interface_addresses("") == set()
    assert ar.interface_addresses('{"not": "a list"}') == set()


def test_interface_addresses_of_this_machine():
    proc = subprocess.run(["ip", "-json", "address", "show"], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip("no iproute2 with -json here")
    found = ar.interface_addresses(proc.stdout)
    assert "127.0.0.1" not in found and "::1" not in found


class Metadata(http.server.BaseHTTPRequestHandler):
    """AWS's IMDSv2 as far as acme-retry uses it: a token by PUT, then the address with it."""

    address = "198.51.100.20\n"
    token = "t0ken"

    def do_PUT(self):
        if self.path != "/latest/api/token" or not self.headers.get(
            "X-aws-ec2-metadata-token-ttl-seconds"
        ):
            self.send_error(400)
            return
        self._send(self.token)

    def do_GET(self):
        if self.headers.get("X-aws-ec2-metadata-token") != self.token:
            self.send_error(401)
        elif self.path == "/latest/meta-data/public-ipv4" and self.address:
            self._send(self.address)
        else:
            self.send_error(404)

    def _send(self, text: str) -> None:
        body = text.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def metadata() -> Iterator[tuple[str, type[Metadata]]]:
    handler = type("Handler", (Metadata,), {})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/latest", handler
    server.shutdown()
    server.server_close()


def test_the_aws_public_address_comes_from_the_instance_metadata(metadata):
    base, handler = metadata
    assert ar.metadata_public_addresses(base) == {"198.51.100.20"}
    handler.address = ""  # no public address: 404
    assert ar.metadata_public_addresses(base) == set()
    handler.address = "not an address\n"
    assert ar.metadata_public_addresses(base) == set()


def test_no_metadata_service_no_address(tmp_path: Path):
    """Another cloud's metadata service, or none: nothing, quickly."""
    with http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler) as server:
        port = server.server_port  # bound, then closed: nothing listens
    assert ar.metadata_public_addresses(f"http://127.0.0.1:{port}/latest") == set()


def test_a_metadata_service_that_is_not_http_gives_no_address():
    class Garbage(socketserver.StreamRequestHandler):
        def handle(self):
            self.rfile.readline()
            self.wfile.write(b"hello\r\n")

    with socketserver.TCPServer(("127.0.0.1", 0), Garbage) as server:
        thread = threading.Thread(target=server.handle_request, daemon=True)
        thread.start()
        base = f"http://127.0.0.1:{server.server_address[1]}/latest"
        assert ar.metadata_public_addresses(base) == set()
        thread.join(timeout=10)


# --- the unit and the shipped program ------------------------------------------------------------


@pytest.mark.parametrize(
    ("restart", "running"),
    [
        (RESTART, RUNNING),
        (
            [rc.WRAPPER, "restart", rc.PROXY_SERVICE],
            [rc.WRAPPER, "ps", "--status", "running", "--quiet", rc.PROXY_SERVICE],
        ),
    ],
)
def test_the_unit_runs_the_shipped_program_as_written(tmp_path: Path, restart, running):
    """The unit's command line, parsed as the program parses it, against files in tmp_path;
    and the shipped file runs with the system's python3 on its own."""
    files = acme_retry_files(svm.CADDY_CONFIG, svm.CADDY_STORAGE, restart, running)
    assert files[ACME_RETRY] == acme_retry_source()
    assert files[ACME_RETRY].startswith("#!/usr/bin/env python3\n")
    unit = files[f"/etc/systemd/system/{ACME_RETRY_UNIT}.service"]
    [exec_start] = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    argv = shlex.split(exec_start.removeprefix("ExecStart="))
    assert argv[0] == ACME_RETRY
    rest, check = ar.split_running(argv[1:])
    assert check == running
    assert rest[rest.index("--") + 1 :] == restart
    assert rest[rest.index("--state") + 1] == ACME_RETRY_STATE
    program = tmp_path / "acme-retry"
    program.write_text(files[ACME_RETRY])
    marker = tmp_path / "restarted"
    local = {
        svm.CADDY_CONFIG: str(tmp_path / "caddy.json"),
        svm.CADDY_STORAGE: str(tmp_path / "storage"),
        ACME_RETRY_STATE: str(tmp_path / "state.json"),
    }
    args = [local.get(a, a) for a in argv[1 : argv.index("--") + 1]] + ["touch", str(marker)]
    (tmp_path / "caddy.json").write_text(json.dumps({"apps": {"http": {"servers": {}}}}))
    proc = subprocess.run(
        ["/usr/bin/python3", "-I", str(program), *args], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "state.json").read_text()) == {}
    assert not marker.exists()


def test_both_rungs_check_that_the_proxy_runs():
    single = svm.bootstrap_files(
        svm.NodeContext(app=app(), node="primary", data_device="/dev/sdb", floating_ip=None)
    )
    unit = single[f"/etc/systemd/system/{ACME_RETRY_UNIT}.service"].content
    assert f"--running {' '.join(RUNNING)} -- {' '.join(RESTART)}" in unit


def test_running_without_its_end_is_refused(tmp_path: Path, capsys):
    with pytest.raises(SystemExit) as exc:
        ar.main(["--config", "c", "--storage", "s", "--state", "x", "--running", "true", "touch"])
    assert exc.value.code == 2
    assert "--running's command ends with `--`" in capsys.readouterr().err
    with pytest.raises(ValueError, match="check that the proxy runs"):
        acme_retry_files(svm.CADDY_CONFIG, svm.CADDY_STORAGE, RESTART, [])
