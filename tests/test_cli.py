"""The `blueprints` command as a user runs it: a real process, exit codes, stdout/stderr."""

from __future__ import annotations

import json
import re
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


# ---------------------------------------------------------------------------------------------
# plan --all per stack, --spec, output for logs (issue 22)

REFUSED_BY_K8S = "name: 'kube-system' is the name of a namespace the cluster uses itself"


def run_piped(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """As a CI job runs it: stdout and stderr are pipes and COLUMNS is not set (width 80)."""
    return subprocess.run(
        [sys.executable, "-m", "blueprints.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "NO_COLOR": "1"},
    )


@pytest.fixture(scope="module")
def one_rung_refuses(tmp_path_factory) -> tuple[Path, Path]:
    """A baked project under a long path whose k8s-hcloud stack names a spec the k8s rung
    refuses (an app named like a namespace the cluster uses itself); the other seven stacks
    keep the example. -> (project, the refused spec)."""
    from baked_repo import bake_project

    deep = tmp_path_factory.mktemp("plan-all")
    for part in ("a-rather-long-directory-name-for-ci-runners", "builds", "shop-infrastructure"):
        deep = deep / part
    deep.mkdir(parents=True)
    bake_project(deep)
    refused = deep / "examples/kube-system.yaml"
    refused.write_text(
        (deep / "examples/app.yaml").read_text().replace("name: shop\n", "name: kube-system\n", 1)
    )
    stack_file = deep / "stacks/Pulumi.k8s-hcloud.yaml"
    text = stack_file.read_text()
    assert "blueprints:spec: examples/app.yaml" in text
    stack_file.write_text(
        text.replace(
            "blueprints:spec: examples/app.yaml", "blueprints:spec: examples/kube-system.yaml"
        )
    )
    return deep, refused


def tree_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if "── " in line]


def test_plan_all_with_one_rung_refusing_prints_the_other_seven_and_exits_2(one_rung_refuses):
    project, refused = one_rung_refuses
    res = run_piped("plan", "--all", cwd=project)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    stacks = list_stacks(project)
    assert len(stacks) == 8
    planned = [s for s in stacks if s != "k8s-hcloud"]
    # Each stack that planned: its tree (its own header line), outputs and notes.
    headers = [line for line in res.stdout.splitlines() if line in stacks]
    assert headers == planned
    assert res.stdout.count("cloud resources: ") == 7
    assert "k8s-localstack" in headers and "kubeconfig:" in res.stdout
    # The summary has a row for every stack, the refused one marked.
    summary = res.stdout.split("summary\n", 1)[1]
    rows = {line.split()[0]: line.split()[1:] for line in summary.splitlines()[2:] if line.strip()}
    assert set(rows) == set(stacks)
    assert rows["k8s-hcloud"] == ["│", "not", "planned", "│", "-"]
    assert rows["single-vm-hcloud"] == ["│", "18", "│", "2"]
    # Why, on stderr, each line prefixed with the stack, the spec's path whole.
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert errors[0].startswith(f"error: k8s-hcloud: {refused}: {REFUSED_BY_K8S}")
    assert errors[0].endswith("choose another name")
    assert res.stderr.splitlines()[-1] == "1 of 8 stacks could not be planned: k8s-hcloud"
    # Progress: one line per stack on stderr, before the errors.
    assert "planning 8 stacks..." in res.stderr
    assert all(f"  {s}..." in res.stderr for s in stacks)


def test_plan_all_json_prints_the_stacks_that_planned_and_exits_2(one_rung_refuses):
    project, refused = one_rung_refuses
    res = run_piped("plan", "--all", "--json", cwd=project)
    assert res.returncode == 2
    rows = json.loads(res.stdout)  # stdout is the JSON alone
    assert {r["stack"] for r in rows} == set(list_stacks(project)) - {"k8s-hcloud"}
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: k8s-hcloud: {refused}: ")


def test_plan_json_when_no_stack_plans_is_an_empty_list_and_exits_2(one_rung_refuses):
    project, refused = one_rung_refuses
    res = run_piped("plan", "k8s-hcloud", "--json", cwd=project)
    assert res.returncode == 2
    assert json.loads(res.stdout) == [] and res.stdout == "[]\n"
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {refused}: {REFUSED_BY_K8S}")


def test_piped_plan_output_keeps_every_line_whole(one_rung_refuses):
    """At 80 columns (COLUMNS unset, piped) no line is wrapped or cropped: each tree line ends
    with a whole resource type, every note and output is one line, and the long path too."""
    project, refused = one_rung_refuses
    res = run_piped("plan", "--all", cwd=project)
    listed = run_piped("plan", "--all", "--json", cwd=project)
    pairs = {f"{r['name']} {r['type']}" for r in json.loads(listed.stdout)}
    lines = tree_lines(res.stdout)
    assert len(lines) > 100, (res.stdout[:500], res.stderr[-2000:])
    for line in lines:
        label = line.split("── ", 1)[1].removesuffix(" (protected)")
        assert label in pairs, line
    assert max(len(line) for line in lines) > 80  # long labels exist and stayed whole
    # Every other line is one of what plan prints, whole: a wrapped line would be none of them.
    stacks = set(list_stacks(project))
    summary = res.stdout.index("\nsummary\n")
    for line in res.stdout[:summary].splitlines():
        if not line or line in stacks or "── " in line:
            continue
        if line.startswith("  note: "):
            assert not line.endswith((",", " ")), line
            continue
        if line.startswith("  "):
            key, value = line[2:].split(": ", 1)
            assert key.isidentifier(), line
            json.loads(value)  # a folded value would not parse
            continue
        assert re.fullmatch(r"\d+ cloud resources: (\d+ \w+)(, \d+ \w+)*", line), line
    assert any(len(line) > 80 for line in res.stdout.splitlines() if line.startswith("  note: "))
    assert len(str(refused)) > 80
    assert sum(str(refused) in line for line in res.stderr.splitlines()) == 1


def test_plan_and_render_with_spec(tmp_path):
    spec = tmp_path / "kiosk.yaml"
    spec.write_text(
        (ROOT / "examples/app.yaml")
        .read_text()
        .replace("name: shop\n", "name: kiosk\n", 1)
        .replace("shop-web:1.4.2", "shop-web:9.9.9")
    )
    res = run("plan", "single-vm-hcloud", "--spec", str(spec))
    assert res.returncode == 0, res.stderr
    assert "kiosk-single-vm-hcloud-data hcloud:index/volume:Volume (protected)" in res.stdout
    assert "shop-single-vm-hcloud" not in res.stdout

    out = tmp_path / "rendered"
    res = run("render", "compose-hcloud", "--spec", str(spec), "-o", str(out))
    assert res.returncode == 0, res.stderr
    files = {p.relative_to(out).as_posix(): p for p in out.rglob("*") if p.is_file()}
    assert any(f.startswith("kiosk-compose-hcloud") for f in files)
    assert any("shop-web:9.9.9" in p.read_text() for p in files.values())
    assert not any("shop-web:1.4.2" in p.read_text() for p in files.values())
    assert "planning compose-hcloud..." in res.stderr


@pytest.mark.parametrize("command", [["plan", "--all"], ["render", "single-vm-hcloud"]])
def test_bad_spec_option_is_refused_before_planning(tmp_path, command):
    res = run(*command, "--spec", str(tmp_path / "missing.yaml"))
    assert res.returncode == 2
    assert (
        res.stderr.strip()
        == f"error: --spec: {tmp_path / 'missing.yaml'} does not exist or is not a file"
    )
    assert res.stdout == ""

    case = CASES / "unknown_top_level_key.yaml"
    expected = case.read_text().splitlines()[0].removeprefix("# expect: ")
    res = run(*command, "--spec", str(case))
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [f"error: {case}: {expected}"]
    assert res.stdout == "" and "planning" not in res.stderr


def test_a_single_stack_that_cannot_be_planned_keeps_its_plain_error_lines(one_rung_refuses):
    project, refused = one_rung_refuses
    res = run_piped("plan", "k8s-hcloud", cwd=project)
    assert res.returncode == 2 and res.stdout == ""
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {refused}: {REFUSED_BY_K8S}")


def test_tree_nests_children_under_their_parent_whatever_their_names():
    """A grandchild whose name sorts before its parent component still hangs below it, and a
    component sharing its name with a custom resource holds the children."""
    from types import SimpleNamespace

    from blueprints.cli import _tree_lines

    def res(name, type_, parent=None, custom=True):
        return SimpleNamespace(name=name, type=type_, parent=parent, custom=custom, protect=False)

    plan = SimpleNamespace(
        stack="s",
        resources=[
            res("app", "x:index:App", custom=False),
            res("app-z", "x:index:Part", parent="app", custom=False),
            res("app-a", "x:a:A", parent="app-z"),
            res("app", "x:b:SameName", parent="app"),
            res("loose", "x:c:C", parent="gone"),
        ],
    )
    assert _tree_lines(plan) == [
        "[bold]s[/bold]",
        "├── app [dim]x:index:App[/dim]",
        "│   ├── app [dim]x:b:SameName[/dim]",
        "│   └── app-z [dim]x:index:Part[/dim]",
        "│       └── app-a [dim]x:a:A[/dim]",
        "└── loose [dim]x:c:C[/dim]",
    ]


def test_a_table_too_narrow_for_its_words_is_printed_wider_when_piped(capsys):
    from rich.table import Table

    from blueprints.cli import _print_whole

    path = "/srv/data/postgres/" + "deep/" * 20 + "end"
    table = Table("snapshot", "paths")
    table.add_row("4f2a9c1e", f"{path} /srv/data/redis")
    _print_whole(table)
    printed = capsys.readouterr().out
    assert path in printed  # whole, on one line
    narrow = Table("stack", "servers")
    narrow.add_row("single-vm-hcloud", "2")
    _print_whole(narrow)
    assert max(len(line) for line in capsys.readouterr().out.splitlines()) <= 80


def test_error_lines_print_keys_as_written_never_as_emoji(tmp_path):
    """rich turns `:x:` into an emoji unless told not to; a stack key `blueprints:x:` must print
    as written."""
    pulumi_yaml = (ROOT / "Pulumi.yaml").read_text()
    main = f"main: {ROOT / 'blueprints/program.py'}"
    (tmp_path / "Pulumi.yaml").write_text(pulumi_yaml.replace("main: blueprints/program.py", main))
    (tmp_path / "stacks").mkdir()
    (tmp_path / "stacks/Pulumi.s.yaml").write_text(
        "config:\n  blueprints:blueprint: compose\n  blueprints:target: hcloud\n  blueprints:x: 1\n"
    )
    res = run("plan", "s", cwd=tmp_path)
    assert res.returncode == 2
    assert "blueprints:x: unknown key" in res.stderr
    assert "\u274c" not in res.stderr
