"""Run real validators on generated files; a missing validator fails the test, never skips it.

Install them with scripts/install-validators (cloud-init, shellcheck, systemd-analyze,
systemctl).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

INSTALL_HINT = "run scripts/install-validators"

# Units the VM gets from packages installed at boot (docker.io). They are not on this machine,
# so `systemd-analyze verify` would report them missing; these stand-ins only have to exist.
BOOT_INSTALLED_UNITS = {
    "docker.service": "[Unit]\nDescription=stand-in for docker.io's unit\n\n"
    "[Service]\nExecStart=/usr/bin/dockerd\n",
}
BOOT_INSTALLED_BINARIES = ["/usr/bin/dockerd"]


def require(command: str) -> str:
    path = shutil.which(command)
    if path is None:
        pytest.fail(f"validator {command!r} is not installed; {INSTALL_HINT}", pytrace=False)
    return path


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False, **kwargs)


def cloud_init_schema(user_data: str, workdir: Path) -> None:
    """`cloud-init schema --config-file F`: the user data must be valid cloud-config."""
    exe = require("cloud-init")
    path = workdir / "user-data.yaml"
    path.write_text(user_data, encoding="utf-8")
    proc = _run([exe, "schema", "--config-file", str(path)])
    out = proc.stdout + proc.stderr
    # cloud-init 22.4 exits 0 on deprecation warnings but still prints them.
    if proc.returncode != 0 or "Valid cloud-config" not in out or "deprecat" in out.lower():
        pytest.fail(f"cloud-init schema rejected the user data:\n{out}", pytrace=False)


def shellcheck(path: Path, shell: str = "bash") -> None:
    """`shellcheck -s SHELL F` with every check on (style level included)."""
    exe = require("shellcheck")
    proc = _run([exe, "--shell", shell, "--severity", "style", str(path)])
    if proc.returncode != 0:
        pytest.fail(
            f"shellcheck found problems in {path.name}:\n{proc.stdout}{proc.stderr}", pytrace=False
        )


def lay_out(files: Mapping[str, str], root: Path, executable: Iterable[str] = ()) -> None:
    """Write rendered files (absolute VM paths) under root, with the given paths executable."""
    executable = set(executable)
    for vm_path, text in files.items():
        target = root / vm_path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        target.chmod(0o755 if vm_path in executable else 0o644)


def systemd_root(files: Mapping[str, str], root: Path, executable: Iterable[str]) -> Path:
    """A file system root for `systemd-analyze verify --root`: this machine's own system units
    (standing in for the image's), stand-ins for units installed at boot, and the rendered
    files themselves, scripts executable, so ExecStart= checks find the real generated scripts.
    """
    require("systemd-analyze")
    (root / "usr/lib/systemd").mkdir(parents=True)
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    for name in ("bin", "sbin", "lib"):  # a merged-/usr layout, as on Ubuntu 24.04
        (root / name).symlink_to(f"usr/{name}")
    for name, text in BOOT_INSTALLED_UNITS.items():
        (root / "usr/lib/systemd/system" / name).write_text(text)
    for binary in BOOT_INSTALLED_BINARIES:
        stub = root / binary.lstrip("/")
        stub.parent.mkdir(parents=True, exist_ok=True)
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(0o755)
    lay_out(files, root, executable)
    return root


def systemd_verify(root: Path, units: list[str]) -> None:
    """`systemd-analyze verify --root=ROOT UNIT...`; any message at all counts as a failure,
    because systemd only warns (exit 0) about unknown keys and unparsable values."""
    exe = require("systemd-analyze")
    env = {**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": ""}
    proc = _run([exe, "verify", f"--root={root}", "--man=no", *units], env=env)
    out = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0 or out:
        pytest.fail(
            f"systemd-analyze verify failed (exit {proc.returncode}):\n{out}", pytrace=False
        )


def systemctl_enable(root: Path, unit: str) -> None:
    """`systemctl --root=ROOT enable UNIT`: the links the VM's `systemctl enable` creates, made
    offline under root from the unit's [Install] section."""
    exe = require("systemctl")
    proc = _run([exe, f"--root={root}", "enable", unit])
    if proc.returncode != 0:
        pytest.fail(
            f"systemctl enable {unit} failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}",
            pytrace=False,
        )


def check_jsonschema(builtin_schema: str, path: Path) -> None:
    """`check-jsonschema --builtin-schema NAME F` (schemas ship inside the package, so this
    works offline); the tool comes with the dev dependencies, beside this interpreter."""
    exe = Path(sys.executable).parent / "check-jsonschema"
    if not exe.exists():
        exe = Path(require("check-jsonschema"))
    proc = _run([str(exe), "--builtin-schema", builtin_schema, str(path)])
    if proc.returncode != 0:
        pytest.fail(
            f"check-jsonschema ({builtin_schema}) rejected {path.name}:\n"
            f"{proc.stdout}{proc.stderr}",
            pytrace=False,
        )
