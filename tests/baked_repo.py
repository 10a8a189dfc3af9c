"""A baked project in a temporary git repository, for the `blueprints diff --base REF` tests:
Pulumi.yaml, program.py, stacks/ and examples/app.yaml, no blueprints/ package, so both sides
are planned with the installed blueprints."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.com",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(repo: Path, *args: str) -> str:
    res = subprocess.run(
        ["git", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        env={**os.environ, **GIT_ENV},
        check=True,
    )
    return res.stdout


def commit_all(repo: Path, message: str) -> None:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)


def edit(repo: Path, rel: str, old: str, new: str) -> None:
    path = repo / rel
    text = path.read_text()
    assert old in text, f"{old!r} not in {rel}"
    path.write_text(text.replace(old, new, 1))


def bake_project(repo: Path, stacks: Iterable[str] | None = None) -> None:
    """This repository's stacks (all, or the named ones) and spec as a baked project has them
    (no blueprints/ package; the installed one runs the program)."""
    if stacks is None:
        shutil.copytree(ROOT / "stacks", repo / "stacks")
    else:
        (repo / "stacks").mkdir(parents=True)
        for stack in stacks:
            shutil.copy(ROOT / f"stacks/Pulumi.{stack}.yaml", repo / "stacks")
    (repo / "examples").mkdir()
    shutil.copy(ROOT / "examples/app.yaml", repo / "examples/app.yaml")
    (repo / "Pulumi.yaml").write_text(
        (ROOT / "Pulumi.yaml")
        .read_text()
        .replace("main: blueprints/program.py", "main: program.py")
    )
    (repo / "program.py").write_text("from blueprints.stack import deploy\n\ndeploy()\n")


def baked_git_repo(tmp_path: Path, stacks: Iterable[str]) -> Path:
    """A baked project with these stacks (the installed blueprints runs its program), committed
    once as the base of a `blueprints diff`."""
    repo = tmp_path / "infra"
    repo.mkdir()
    bake_project(repo, stacks)
    git(repo, "init", "-q", "-b", "main")
    commit_all(repo, "base")
    return repo


def step_ops(doc: dict) -> dict[str, str]:
    """Resource name -> op of every step of a preview document that changes something."""
    return {
        s["urn"].rsplit("::", 1)[-1]: s["op"]
        for s in doc["steps"]
        if s["op"] not in ("same", "read")
    }


def run_diff(repo: Path, stacks: Iterable[str], *args: str):
    """`blueprints diff` of the last commit against the one before, for these stacks."""
    from typer.testing import CliRunner

    from blueprints.cli import app

    return CliRunner().invoke(
        app, ["diff", "-C", str(repo), "--base", "HEAD~1", *stacks, *args], env={"COLUMNS": "200"}
    )


def offline_diff(repo: Path, stacks: list[str]):
    """The stacks' offline documents against HEAD~1 and the report `blueprints diff` builds
    from them, planned once (tests that also run the CLI plan a second time)."""
    from blueprints.preview.document import parse_preview
    from blueprints.preview.offline import offline_documents
    from blueprints.preview.report import build_report

    docs = offline_documents(repo, "HEAD~1", stacks)
    parsed = [(stack, parse_preview(doc, source=stack)) for stack, doc in docs]
    return docs, build_report(parsed, prices=False, title="diff")


NEW_ADMIN_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBn7Yz2c9q0kJx4mA8rVtW3pLsE6uHdN1fGiKoQ2bR5y new@x"
)


def bump_web_image(repo: Path) -> None:
    """The example's web image 1.4.2 -> 1.4.3, committed."""
    edit(
        repo,
        "examples/app.yaml",
        "image: ghcr.io/example/shop-web:1.4.2",
        "image: ghcr.io/example/shop-web:1.4.3",
    )
    commit_all(repo, "web 1.4.3")


def add_admin_key(repo: Path) -> None:
    """A second admin SSH key in the example spec, committed."""
    spec = repo / "examples/app.yaml"
    text = spec.read_text()
    marker = "  cidrs:\n"
    assert marker in text
    spec.write_text(text.replace(marker, f"    - {NEW_ADMIN_KEY}\n{marker}", 1))
    commit_all(repo, "a new admin")
