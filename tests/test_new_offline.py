"""A project baked by `blueprints new`, copied away from this checkout, installs with its own
README's commands without any network (a network namespace with no interfaces up, and uv told
to stay offline) and passes its own tests there: it carries the wheel of blueprints, and uv's
cache holds every other package after the main project's `uv sync`. The blueprints installed
there from that wheel (not a checkout) then bakes the same project again."""

from __future__ import annotations

import importlib.metadata
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import warnings
import zipfile
from pathlib import Path

from blueprints.vendoring import find_uv

ROOT = Path(__file__).resolve().parent.parent
BLUEPRINTS = Path(sys.executable).parent / "blueprints"  # the entry point `make setup` installs
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHc2mXkq1QeC3rVbCq1y8f0p5h0dU7v9yq8x3r0mP6Fh dev@laptop"
UV = find_uv()
assert UV, "uv is not installed (scripts/bootstrap installs it)"
# uv's cache as this machine has it (the test's HOME is a temporary one).
UV_CACHE = subprocess.run([UV, "cache", "dir"], capture_output=True, text=True, check=True)
UV_CACHE_DIR = UV_CACHE.stdout.strip()


def no_network() -> list[str]:
    """A command prefix that runs without any network: a fresh network namespace (as root, or
    as a user through a user namespace). Where neither is allowed, say so: uv's offline mode
    is then the only guard."""
    for prefix in (["unshare", "-n"], ["unshare", "-rn"]):
        if shutil.which(prefix[0]):
            probe = subprocess.run([*prefix, "true"], capture_output=True)
            if probe.returncode == 0:
                return prefix
    warnings.warn(
        "no network namespace available: the offline install is enforced by UV_OFFLINE only",
        stacklevel=2,
    )
    return []


def readme_shell_lines(readme: str) -> list[str]:
    """The commands of the README's ```sh blocks, as printed (comments dropped)."""
    lines = []
    for block in re.findall(r"^\s*```sh\n(.*?)^\s*```", readme, re.S | re.M):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if words:
                lines.append(shlex.join(words))
    return lines


def test_a_baked_project_installs_offline_and_passes_its_own_tests(tmp_path):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519.pub").write_text(KEY + "\n")
    (tmp_path / "bake").mkdir()
    env = {
        "PATH": f"{Path(UV).parent}:/usr/bin:/bin",
        "HOME": str(home),
        "NO_COLOR": "1",
        "UV_CACHE_DIR": UV_CACHE_DIR,
    }
    res = subprocess.run(
        [str(BLUEPRINTS), "new", "shop", "--no-input"],
        cwd=tmp_path / "bake", env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "next: cd shop && uv sync && uv run pytest" in res.stdout

    # Moved away from where it was baked (and from this checkout): nothing points back.
    project = tmp_path / "elsewhere" / "shop"
    shutil.copytree(tmp_path / "bake" / "shop", project, symlinks=True)
    shutil.rmtree(tmp_path / "bake")
    for path in project.rglob("*"):
        if path.is_file() and path.suffix != ".whl":
            text = path.read_text()
            assert str(ROOT) not in text and str(tmp_path) not in text, path

    # The README's install commands, as printed, with the network gone.
    readme = (project / "README.md").read_text()
    commands = [c for c in readme_shell_lines(readme) if not c.startswith("pulumi ")]
    assert commands == ["uv sync", "uv run pytest"], commands  # step 1, Install
    offline = {
        **{k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV" and not k.startswith("UV_")},
        "UV_OFFLINE": "1",
        "UV_CACHE_DIR": UV_CACHE_DIR,
        "PATH": f"{Path(UV).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    prefix = no_network()

    def run(command: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*prefix, "bash", "-c", command],
            cwd=project, env=offline, capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    sync = run(commands[0])
    assert sync.returncode == 0, sync.stderr
    stacks = len(list((project / "stacks").iterdir()))
    tests = run(commands[1])
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert f"{2 + stacks} passed" in tests.stdout, tests.stdout

    # What got installed: blueprints from the wheel it carries, the rest at the versions that
    # blueprints runs with here (so uv.lock is the same wherever it is first made).
    lock = tomllib.loads((project / "uv.lock").read_text())
    packages = {p["name"]: p for p in lock["package"]}
    wheel = f"vendor/blueprints-{importlib.metadata.version('blueprints')}-py3-none-any.whl"
    assert packages["blueprints"]["source"] == {"path": wheel}
    for name in ("pulumi", "pulumi-hcloud", "pydantic", "pytest"):
        assert packages[name]["version"] == importlib.metadata.version(name), name

    # The blueprints now installed in the project (from the wheel, not a checkout) bakes the
    # same project again, offline: it packs its installed files into the wheel they came from.
    again = tmp_path / "again"
    key = home / ".ssh" / "id_ed25519.pub"
    rebake = run(f"uv run blueprints new {again} --no-input --ssh-public-key {key}")
    assert rebake.returncode == 0, rebake.stderr
    skip = {".venv", "uv.lock", "vendor", ".pytest_cache", "__pycache__"}

    def tree(root: Path) -> dict[str, bytes]:
        return {
            str(p.relative_to(root)): p.read_bytes()
            for p in root.rglob("*")
            if p.is_file() and not skip & set(p.relative_to(root).parts)
        }

    assert tree(again) == tree(project)  # every text file, byte for byte
    with zipfile.ZipFile(project / wheel) as a, zipfile.ZipFile(again / wheel) as b:
        assert sorted(a.namelist()) == sorted(b.namelist())
        for name in a.namelist():
            if not name.endswith(".dist-info/RECORD"):
                assert a.read(name) == b.read(name), name

    # The README's next commands run as printed too (the cheap one for real).
    assert "`uv run blueprints validate app.yaml`" in readme
    check = run("uv run blueprints validate app.yaml")
    assert check.returncode == 0, check.stderr
    assert check.stdout.startswith("ok app.yaml: app shop ")
    for used in sorted(set(re.findall(r"`uv run blueprints ([a-z-]+)", readme))):
        helped = run(f"uv run blueprints {used} --help")
        assert helped.returncode == 0, (used, helped.stderr)
