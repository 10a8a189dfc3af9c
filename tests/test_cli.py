"""The `blueprints` command as a user runs it: a real process, exit codes, stdout/stderr."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from blueprints.plan import list_stacks

ROOT = Path(__file__).resolve().parent.parent
CASES = ROOT / "tests/spec_cases"


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "blueprints.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "200", "NO_COLOR": "1"},
    )


def test_help_lists_commands_and_examples():
    res = run("--help")
    assert res.returncode == 0
    for word in ("plan", "render", "validate", "blueprints plan --all --json"):
        assert word in res.stdout


def test_validate_example():
    res = run("validate", "examples/app.yaml")
    assert res.returncode == 0, res.stderr
    assert "ok examples/app.yaml: app shop" in res.stdout


@pytest.mark.parametrize(
    "case", ["dependency_cycle_two.yaml", "yaml_syntax.yaml", "unknown_top_level_key.yaml"]
)
def test_validate_bad_spec_exits_2_with_one_line(case):
    path = CASES / case
    expected = path.read_text().splitlines()[0].removeprefix("# expect: ")
    res = run("validate", str(path))
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [f"error: {path}: {expected}"]


def test_validate_missing_file():
    res = run("validate", "nope.yaml")
    assert res.returncode == 2
    assert res.stderr.strip() == "error: nope.yaml: no such file"


def test_plan_all_json_is_for_scripts():
    res = run("plan", "--all", "--json")
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    assert {r["stack"] for r in rows} == set(list_stacks(ROOT))
    assert all(set(r) == {"stack", "type", "name", "parent", "inputs"} for r in rows)
    servers = [r for r in rows if r["type"] == "hcloud:index/server:Server"]
    assert len([s for s in servers if s["stack"] == "single-vm-hcloud"]) == 2
    instances = [r for r in rows if r["type"] == "aws:ec2/instance:Instance"]
    # user data would be masked if it held a secret; no rung's bootstrap holds one
    for row in [*servers, *instances]:
        data = row["inputs"].get("userData", row["inputs"].get("userDataBase64"))
        assert data != "[secret]", row["name"]
    secrets = [r for r in rows if r["name"].endswith("-release-secrets")]
    assert secrets and all(r["inputs"]["stdin"] == "[secret]" for r in secrets)
    assert "<secret:" not in res.stdout  # even placeholders stay masked
    assert all(s["parent"] == "shop" for s in servers)


def test_plan_tree_shows_counts_outputs_and_notes():
    res = run("plan", "single-vm-hcloud")
    assert res.returncode == 0, res.stderr
    assert "shop-single-vm-hcloud-data hcloud:index/volume:Volume (protected)" in res.stdout
    assert "18 cloud resources" in res.stdout
    assert "floatingIp" in res.stdout and "spareBilling" in res.stdout
    assert "note" in res.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("plan",), "error: name a stack or pass --all; stacks here: "),
        (("plan", "nomad-gcp"), "error: unknown stack 'nomad-gcp'; stacks here: "),
        (("plan", "--all", "single-vm-hcloud"), "error: give stack names or --all, not both"),
        (("render", "nomad-gcp"), "error: unknown stack 'nomad-gcp'; stacks here: "),
    ],
)
def test_bad_arguments_exit_2_without_traceback(args, message):
    res = run(*args)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert res.stderr.startswith(message), res.stderr


def test_usage_error_exits_2():
    res = run("plan", "--frobnicate")
    assert res.returncode == 2
    assert "No such option" in res.stderr
    assert "Traceback" not in res.stderr


def test_outside_a_project(tmp_path):
    res = run("plan", "--all", cwd=tmp_path)
    assert res.returncode == 2
    assert "no Pulumi.yaml here or above" in res.stderr


def test_render_writes_every_file_and_replaces_old_output(tmp_path):
    out = tmp_path / "rendered"
    assert run("render", "single-vm-localstack", "-o", str(out)).returncode == 0
    (out / "stale.txt").write_text("from an earlier run")
    res = run("render", "single-vm-localstack", "-o", str(out))
    assert res.returncode == 0, res.stderr
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert "stale.txt" not in files
    assert ".blueprints-render" in files
    assert "shop-single-vm-localstack-primary/user-data.yaml" in files
    assert "shop-single-vm-localstack-spare/user-data.yaml" in files
    assert any(f.startswith("shop-single-vm-localstack-primary/etc/systemd/system/") for f in files)
    text = "".join((out / f).read_text() for f in files)
    assert "<secret:DATABASE_PASSWORD>" in text
    assert not list(tmp_path.glob(".rendered-*")), "staging directory left behind"


def test_render_into_a_file_fails_cleanly(tmp_path):
    target = tmp_path / "afile"
    target.write_text("keep me")
    res = run("render", "single-vm-hcloud", "-o", str(target))
    assert res.returncode == 2
    assert res.stderr.strip() == f"error: {target}: exists and is not a directory"
    assert target.read_text() == "keep me"


def test_render_never_replaces_a_directory_it_did_not_write(tmp_path):
    mine = tmp_path / "project"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    for target in (str(mine), "."):
        res = run("render", "single-vm-hcloud", "-o", target, "-C", str(ROOT), cwd=mine)
        assert res.returncode == 2, res.stderr
        assert "is a non-empty directory that `blueprints render` did not write" in res.stderr
        assert "Traceback" not in res.stderr
    assert (mine / "notes.txt").read_text() == "precious"
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


def test_render_below_a_file_fails_cleanly(tmp_path):
    (tmp_path / "afile").write_text("x")
    res = run("render", "single-vm-hcloud", "-o", str(tmp_path / "afile" / "sub"))
    assert res.returncode == 2
    assert "is not a directory" in res.stderr and "Traceback" not in res.stderr
