"""The light real-process fixtures (tests/realnode/light.py): each started, used, stopped."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from blueprints.render import single_vm
from blueprints.spec import load_spec
from tests.realnode.host import (
    PREFIX,
    WORK_ROOT,
    leftovers,
    require_host,
    run,
    stop_pid,
    wait_for,
)
from tests.realnode.images import UNHEALTHY_FLAG, build_standins
from tests.realnode.light import Caddy, DockerEngine, SshServer, internal_ca
from tests.realnode.net import add_netns, del_netns

APP = load_spec(Path(__file__).parents[1] / "examples/app.yaml")


@pytest.fixture(autouse=True)
def _root():
    require_host()


def test_docker_engine_in_a_namespace_runs_a_stand_in_image():
    images = build_standins(APP, WORK_ROOT / "images" / "fixture-docker", proxy=False)
    try:
        with DockerEngine("fixture") as docker:
            postgres = next(i for i in images if i.tag == "postgres:16.4")
            docker.run(postgres.import_command(str(postgres.tarball.parent)))
            docker.run(
                ["docker", "run", "--detach", "--name", "db", "--network", "host", "postgres:16.4"]
            )
            answer = docker.run(
                [
                    "curl",
                    "--silent",
                    "--retry",
                    "10",
                    "--retry-connrefused",
                    "--retry-delay",
                    "1",
                    "http://127.0.0.1:5432/",
                ]
            )
            container_id = docker.run(
                ["docker", "inspect", "--format", "{{.Config.Hostname}}", "db"]
            ).stdout.strip()
            assert answer.stdout.strip() == container_id
            # The health command the spec names is there, healthy until the flag is set.
            assert (
                docker.run(
                    ["docker", "exec", "db", "pg_isready", "-U", "shop"], check=False
                ).returncode
                == 0
            )
            docker.run(["docker", "exec", "db", "touch", UNHEALTHY_FLAG])
            assert (
                docker.run(
                    ["docker", "exec", "db", "pg_isready", "-U", "shop"], check=False
                ).returncode
                == 1
            )
            docker.run(["docker", "rm", "--force", "db"])
            pid = docker.proc.pid
        assert not Path(f"/proc/{pid}").exists()
        assert not any(
            item.startswith(f"network namespace {PREFIX}-fixture") for item in leftovers()
        )
    finally:
        shutil.rmtree(WORK_ROOT / "images" / "fixture-docker", ignore_errors=True)


def test_real_caddy_serves_the_rendered_config_over_tls_and_balances():
    netns = f"{PREFIX}-fixture-caddy"
    hosts = Path("/etc/netns") / netns
    add_netns(netns)
    servers = []
    try:
        # `ip netns exec` shows /etc/netns/NAME/hosts as /etc/hosts: the rendered upstreams
        # (web-1:8000, web-2:8000) resolve to two busybox httpd on loopback addresses.
        hosts.mkdir(parents=True, exist_ok=True)
        (hosts / "hosts").write_text("127.0.0.1 localhost\n127.0.0.2 web-1\n127.0.0.3 web-2\n")
        for n in (1, 2):
            www = WORK_ROOT / "fixtures" / f"www-{n}"
            www.mkdir(parents=True, exist_ok=True)
            (www / "index.html").write_text(f"web-{n}\n")
            (www / "healthz").write_text("ok\n")
            servers.append(
                subprocess.Popen(
                    [
                        "ip",
                        "netns",
                        "exec",
                        netns,
                        shutil.which("busybox"),
                        "httpd",
                        "-f",
                        "-p",
                        f"127.0.0.{n + 1}:8000",
                        "-h",
                        str(www),
                    ],
                    start_new_session=True,
                )
            )
        config = internal_ca(single_vm._caddy_config(APP))
        with Caddy(config, netns) as caddy:
            caddy.validate()

            def get(host: str = APP.domain) -> subprocess.CompletedProcess[str]:
                return subprocess.run(
                    [
                        "ip",
                        "netns",
                        "exec",
                        netns,
                        "curl",
                        "--silent",
                        "--max-time",
                        "5",
                        "--cacert",
                        str(caddy.root_certificate),
                        "--resolve",
                        f"{host}:443:127.0.0.1",
                        f"https://{host}/",
                    ],
                    capture_output=True,
                    text=True,
                    check=False,
                )

            # The root certificate is written before the site's own certificate is issued.
            wait_for("Caddy to serve the domain", lambda: get().returncode == 0, 30, 0.2)
            bodies = {get().stdout.strip() for _ in range(10)}
            assert bodies == {"web-1", "web-2"}
            # With one replica gone, every request still lands on the other one.
            stop_pid(servers[0].pid)
            servers[0].wait()
            assert {get().stdout.strip() for _ in range(6)} == {"web-2"}
            # Another host name gets no certificate.
            other = get("other.example.com")
            assert other.returncode != 0
            assert json.loads(caddy.config_path.read_text())["apps"]["pki"] == {
                "certificate_authorities": {"local": {"install_trust": False}}
            }
    finally:
        for proc in servers:
            stop_pid(proc.pid)
            proc.wait()
        shutil.rmtree(hosts, ignore_errors=True)
        for n in (1, 2):
            shutil.rmtree(WORK_ROOT / "fixtures" / f"www-{n}", ignore_errors=True)
        del_netns(netns)


def test_ssh_server_on_loopback_runs_commands_with_the_generated_key():
    with SshServer() as ssh:
        assert ssh.run("echo hello from sshd").stdout == "hello from sshd\n"
        failed = ssh.run("exit 3", check=False)
        assert failed.returncode == 3
        # Key-only: without the generated key the server lets nobody in.
        argv = [a for a in ssh.ssh_argv() if a != str(ssh.client_key)]
        argv.remove("-i")
        assert run([*argv, "-o", "IdentitiesOnly=yes", "true"], check=False).returncode == 255
        pid = ssh.proc.pid
    assert not Path(f"/proc/{pid}").exists()


def test_a_node_that_fails_to_come_up_leaves_nothing_behind():
    """A user data the harness cannot install, and a node whose test fails after it booted:
    both are taken down completely by the same code paths the suites' fixtures use."""
    from tests.realnode.host import HarnessError
    from tests.realnode.net import TestNetwork
    from tests.realnode.node import DataDisk, Node

    good = '#cloud-config\nruncmd: ["true"]\n'
    with TestNetwork("failing") as network:
        disk = DataDisk("failing-volume", size_mb=16)
        try:
            with pytest.raises(HarnessError, match="bootcmd"):
                Node("bad", "#cloud-config\nbootcmd: [reboot]\n", network)
            node = Node("good", good, network, host=11)
            try:
                node.start()
                node.wait_booted()
                with pytest.raises(AssertionError):
                    node.wait_active(["no-such.service"], timeout=2)
            finally:
                node.destroy()
        finally:
            disk.destroy()
    # Its own things (other sessions' nodes may be up beside it: scripts/run-tests).
    assert [item for item in leftovers() if network.name in item] == []
