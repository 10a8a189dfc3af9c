"""`blueprints backup | backups | restore`: the stack's backups, from an admin's machine.

The commands reach the node that holds the data the way `pulumi up` does: over SSH as `deploy`
with the stack's deploy key, both read from the stack's outputs (`pulumi stack output --json
--show-secrets`, or a file holding them: `--outputs FILE`). What runs there is the rung's
(`Access`): on single-vm and compose, blueprints-backup itself. Secrets never reach a command
line: the key goes to a 0600 file in a private temporary directory, removed afterwards.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from blueprints.backup import node_files

DEPLOY_USER = "deploy"
SSH_OPTIONS = (
    "-o",
    "BatchMode=yes",
    "-o",
    "ConnectTimeout=15",
    "-o",
    "LogLevel=ERROR",
    # The host key is accepted on first use, as pulumi-command does for the release channel.
    "-o",
    "StrictHostKeyChecking=accept-new",
)


class RemoteError(Exception):
    """One sentence: what could not be done and what to do."""


@dataclass(frozen=True)
class Access:
    """How to run each backup command of one stack: where, and the command line (run by
    `deploy`, so with sudo where it needs root)."""

    host: str
    key: str
    now: str
    snapshots: str
    # restore SNAPSHOT: (the steps it takes, printed and nothing done; the restore itself)
    restore_plan: Callable[[str], str]
    restore: Callable[[str], str]
    # What each command reads on standard input (a secret such a command needs, never on its
    # command line); None: nothing (/dev/null).
    stdin: str | None = None
    # `latest` is one snapshot (the newest in `snapshots`), pinned to its id before the restore
    # is planned, so the restore that acts is the one shown and confirmed. False where `latest`
    # means each service's own newest snapshot (k8s).
    pin_latest: bool = True


def vm_access(outputs: Mapping[str, object], address_output: str) -> Access:
    """single-vm and compose: blueprints-backup on the one node holding the volume."""
    tool = f"sudo {node_files.SCRIPT} --config {node_files.CONFIG}"
    host = required_output(outputs, address_output)
    return Access(
        host=host,
        key=required_output(outputs, "deployKey"),
        now=f"{tool} backup",
        snapshots=f"{tool} snapshots --json",
        restore_plan=lambda snap: f"{tool} restore-app {shlex.quote(snap)} --plan",
        restore=lambda snap: f"{tool} restore-app {shlex.quote(snap)}",
    )


def required_output(outputs: Mapping[str, object], name: str) -> str:
    """A stack output that must be a non-empty text (RemoteError saying so otherwise)."""
    value = outputs.get(name)
    if not isinstance(value, str) or not value:
        raise RemoteError(
            f"the stack has no output {name}; has `pulumi up` run (with backups configured)?"
        )
    return value


def read_outputs(stack: str, project: Path, outputs_file: Path | None) -> dict[str, object]:
    """The stack's outputs, secrets in plain text: from the file, or from the pulumi CLI."""
    if outputs_file is not None:
        try:
            text = outputs_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise RemoteError(
                f"--outputs {outputs_file}: cannot be read ({exc.strerror})"
            ) from None
        where = f"--outputs {outputs_file}"
    else:
        pulumi = shutil.which("pulumi")
        if pulumi is None:
            raise RemoteError(
                "the pulumi CLI is not installed (not on PATH); run `pulumi stack output --json "
                f"--show-secrets --stack {stack} > outputs.json` where it is and pass "
                "--outputs outputs.json"
            )
        proc = subprocess.run(
            [pulumi, "stack", "output", "--json", "--show-secrets", "--stack", stack],
            cwd=project,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
            raise RemoteError(f"pulumi stack output --stack {stack} failed: {last}")
        text, where = proc.stdout, f"pulumi stack output --stack {stack}"
    try:
        outputs = json.loads(text)
    except ValueError:
        raise RemoteError(f"{where}: is not JSON (expected the stack's outputs)") from None
    if not isinstance(outputs, dict):
        raise RemoteError(f"{where}: is not a JSON object of the stack's outputs")
    return outputs


class Session:
    """SSH to one host as deploy with the stack's key (kept in a private temporary directory)."""

    def __init__(self, access: Access, ssh: str = "ssh"):
        self.access = access
        self.ssh = ssh
        self._dir: tempfile.TemporaryDirectory | None = None

    def __enter__(self) -> Session:
        self._dir = tempfile.TemporaryDirectory(prefix="blueprints-ssh-")
        key = Path(self._dir.name) / "deploy"
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.access.key if self.access.key.endswith("\n") else self.access.key + "\n")
        self.key_file = key
        self.known_hosts = Path(self._dir.name) / "known_hosts"
        return self

    def __exit__(self, *exc) -> None:
        if self._dir is not None:
            self._dir.cleanup()

    def argv(self, command: str) -> list[str]:
        return [
            self.ssh,
            "-i",
            str(self.key_file),
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            *SSH_OPTIONS,
            f"{DEPLOY_USER}@{self.access.host}",
            command,
        ]

    def run(self, command: str, capture: bool) -> subprocess.CompletedProcess:
        """The command on the node; with capture=False its output streams to ours."""
        try:
            stdin = self.access.stdin
            return subprocess.run(
                self.argv(command),
                **({"stdin": subprocess.DEVNULL} if stdin is None else {"input": stdin}),
                capture_output=capture,
                text=True,
                check=False,
            )
        except OSError as exc:
            raise RemoteError(f"cannot run {self.ssh} ({exc.strerror or exc})") from None
