"""`blueprints diff --base REF`: offline previews from a real git history in a temporary repo.

The repos here hold a baked project (Pulumi.yaml, program.py, stacks/, examples/app.yaml, no
blueprints/ package), so both sides are planned with the installed blueprints; one test clones
this repository itself, where each ref is planned with its own blueprints/ code.
"""

from __future__ import annotations

import json
import re
import tempfile
from decimal import Decimal
from pathlib import Path

import pytest
from baked_repo import bake_project, commit_all, edit, git
from typer.testing import CliRunner

from blueprints.cli import EXIT_DATA_LOSS, EXIT_PREVIEW_FAILED, app
from blueprints.preview.document import parse_preview
from blueprints.preview.offline import (
    REPLACE_ON_CHANGE,
    TEMP_PREFIX,
    UNKNOWN,
    DiffError,
    build_document,
    diff_inputs,
    offline_diff,
    offline_documents,
)
from blueprints.preview.report import MARKER, build_report

ROOT = Path(__file__).resolve().parent.parent
STACK = "single-vm-hcloud"
STACK_FILE = f"stacks/Pulumi.{STACK}.yaml"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A baked project with one commit: the stacks and spec of this repository."""
    repo = tmp_path / "infra"
    repo.mkdir()
    bake_project(repo)
    git(repo, "init", "-q", "-b", "main")
    commit_all(repo, "base")
    return repo


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch) -> Path:
    """Where tempfile puts the base ref's copy, to check it is gone afterwards."""
    path = tmp_path / "scratch"
    path.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    return path


@pytest.fixture
def made(monkeypatch) -> list[Path]:
    """Every temporary directory created during the test (to prove cleanup is not vacuous)."""
    made: list[Path] = []
    real = tempfile.mkdtemp

    def spy(*args, **kwargs):
        made.append(Path(real(*args, **kwargs)))
        return str(made[-1])

    monkeypatch.setattr(tempfile, "mkdtemp", spy)
    return made


runner = CliRunner()


def diff(repo: Path, *args: str):
    return runner.invoke(app, ["diff", "-C", str(repo), *args], env={"COLUMNS": "200"})


def steps_by_name(document) -> dict[str, dict]:
    return {s["urn"].rsplit("::", 1)[-1]: s for s in document["steps"]}


def test_server_type_change_is_an_update_without_data_loss(repo, scratch, made):
    edit(repo, STACK_FILE, "blueprints:serverType: cx23", "blueprints:serverType: cx33")
    commit_all(repo, "bigger servers")

    [(stack, doc)] = offline_documents(repo, "HEAD~1", [STACK])
    assert stack == STACK
    steps = steps_by_name(doc)
    changed = {n: s["op"] for n, s in steps.items() if s["op"] != "same"}
    assert changed == {
        "shop-single-vm-hcloud-primary": "update",
        "shop-single-vm-hcloud-spare": "update",
    }
    primary = steps["shop-single-vm-hcloud-primary"]
    assert primary["detailedDiff"] == {"serverType": {"kind": "update", "inputDiff": True}}
    assert primary["diffReasons"] == ["serverType"] and primary["replaceReasons"] == []
    assert primary["oldState"]["inputs"]["serverType"] == "cx23"
    assert primary["newState"]["inputs"]["serverType"] == "cx33"
    assert primary["newState"]["id"] == primary["oldState"]["id"]  # updated in place
    assert doc["changeSummary"]["update"] == 2 and "replace" not in doc["changeSummary"]
    parse_preview(doc)  # the report's own reader accepts it

    res = diff(repo, "--base", "HEAD~1", STACK, "--fail-on", "data-loss")
    assert res.exit_code == 0, res.stderr
    assert res.stdout.startswith(MARKER)
    assert "2 to update" in res.stdout
    assert "`serverType`" in res.stdout and '"cx23"' in res.stdout and '"cx33"' in res.stdout
    assert "Data loss" not in res.stdout
    assert list(scratch.iterdir()) == []
    base_copies = [p for p in made if p.name.startswith(TEMP_PREFIX)]  # the base ref's tree
    assert base_copies and all(p.parent == scratch for p in base_copies)
    assert not any(p.exists() for p in made)


def test_location_change_replaces_the_volume_and_fails_on_data_loss(repo, scratch):
    edit(repo, STACK_FILE, "blueprints:location: fsn1", "blueprints:location: nbg1")
    commit_all(repo, "move to Nuremberg")

    res = diff(repo, "--base", "HEAD~1", STACK, "--fail-on", "data-loss")
    assert res.exit_code == EXIT_DATA_LOSS, res.stderr
    report = res.stdout
    assert "Data loss" in report
    warning = report.split("### Stack")[0]  # the warning block comes before the details
    assert "volume `shop-single-vm-hcloud-data`" in warning
    assert "because `location` changed" in warning
    assert "floating IP `shop-single-vm-hcloud-ip`" in warning
    assert "data loss:" in res.stderr and "shop-single-vm-hcloud-data" in res.stderr
    assert "Traceback" not in res.stderr
    assert list(scratch.iterdir()) == []

    # Without --fail-on the same report, exit 0.
    again = diff(repo, "--base", "HEAD~1", STACK)
    assert again.exit_code == 0 and again.stdout == report


def test_replacement_makes_dependent_ids_unknown(repo):
    edit(repo, STACK_FILE, "blueprints:location: fsn1", "blueprints:location: nbg1")
    [(_, doc)] = offline_documents(repo, "HEAD", [STACK])  # working-tree change, uncommitted
    steps = steps_by_name(doc)
    volume = steps["shop-single-vm-hcloud-data"]
    assert volume["op"] == "replace"
    assert volume["replaceReasons"] == ["location"]
    assert volume["detailedDiff"] == {"location": {"kind": "update-replace", "inputDiff": True}}
    assert "id" not in volume["newState"] and volume["newState"]["outputs"] == {}
    assert volume["oldState"]["protect"] is True
    attachment = steps["shop-single-vm-hcloud-data-attachment"]
    assert attachment["op"] == "replace"
    assert attachment["newState"]["inputs"]["volumeId"] == UNKNOWN
    assert attachment["replaceReasons"] == ["serverId", "volumeId"]
    errors = [d for d in doc["diagnostics"] if d["severity"] == "error"]
    assert {d["urn"].rsplit("::", 1)[-1] for d in errors} == {
        "shop-single-vm-hcloud-data",
        "shop-single-vm-hcloud-ip",
    }
    assert all("protected" in d["message"] for d in errors)


def test_no_change_says_so(repo, scratch, made):
    res = diff(repo, "--base", "HEAD", STACK)
    assert res.exit_code == 0, res.stderr
    assert "No resource changes" in res.stdout
    assert "## Offline diff of the working tree against HEAD\n" in res.stdout
    assert "Data loss" not in res.stdout
    assert list(scratch.iterdir()) == []
    base_copies = [p for p in made if p.name.startswith(TEMP_PREFIX)]  # the base ref's tree
    assert base_copies and all(p.parent == scratch for p in base_copies)
    assert not any(p.exists() for p in made)


def test_same_input_same_bytes(repo):
    edit(repo, STACK_FILE, "blueprints:location: fsn1", "blueprints:location: nbg1")
    first = diff(repo, "--base", "HEAD", STACK, "single-vm-localstack")
    second = diff(repo, "--base", "HEAD", STACK, "single-vm-localstack")
    assert first.exit_code == second.exit_code == 0
    assert first.stdout == second.stdout
    assert first.stdout.count("### Stack") == 2


def test_unknown_ref_is_one_clear_line(repo, scratch):
    res = diff(repo, "--base", "no-such-branch")
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert lines[-1].startswith("error: --base 'no-such-branch' is not a commit in")
    assert "Traceback" not in res.stderr and res.stdout == ""
    assert list(scratch.iterdir()) == []


@pytest.mark.parametrize("ref", ["-x", "--output=/tmp/evil", ""])
def test_refs_that_look_like_options_are_refused(repo, ref):
    with pytest.raises(DiffError, match="is not a git ref"):
        offline_documents(repo, ref, [STACK])


def test_not_a_git_repository(tmp_path):
    project = tmp_path / "loose"
    project.mkdir()
    (project / "Pulumi.yaml").write_text("name: loose\nmain: program.py\nstackConfigDir: stacks\n")
    res = diff(project, "--base", "HEAD")
    assert res.exit_code == 2
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "is not inside a git repository" in errors[0]
    assert "Traceback" not in res.stderr


def test_unknown_stack(repo):
    res = diff(repo, "--base", "HEAD", "nope")
    assert res.exit_code == 2
    assert "unknown stack 'nope'" in res.stderr and STACK in res.stderr


def test_stack_added_and_removed(repo, scratch):
    added = repo / "stacks/Pulumi.extra-hcloud.yaml"
    added.write_text((repo / STACK_FILE).read_text())
    (repo / "stacks/Pulumi.single-vm-localstack.yaml").unlink()
    docs = dict(offline_documents(repo, "HEAD", ["extra-hcloud", "single-vm-localstack"]))

    created = docs["extra-hcloud"]
    assert {s["op"] for s in created["steps"]} == {"create"}
    assert created["changeSummary"] == {"create": len(created["steps"])}
    assert all("oldState" not in s for s in created["steps"])

    deleted = docs["single-vm-localstack"]
    assert {s["op"] for s in deleted["steps"]} == {"delete"}
    assert all("newState" not in s for s in deleted["steps"])
    protected = [s for s in deleted["steps"] if s["oldState"]["protect"]]
    assert protected  # the volume and the elastic IP
    errors = {d["urn"] for d in deleted["diagnostics"] if d["severity"] == "error"}
    assert errors == {s["urn"] for s in protected}
    assert list(scratch.iterdir()) == []


def test_base_that_cannot_be_planned_cleans_up(repo, scratch, made):
    edit(repo, STACK_FILE, "blueprints:serverType: cx23", "blueprints:serverType: [1, 2]")
    commit_all(repo, "broken")
    edit(repo, STACK_FILE, "blueprints:serverType: [1, 2]", "blueprints:serverType: cx23")
    with pytest.raises(DiffError, match=r"^HEAD: stack single-vm-hcloud: "):
        offline_documents(repo, "HEAD", [STACK])
    assert made and not any(p.exists() for p in made)
    assert list(scratch.iterdir()) == []


def test_secrets_are_compared_but_never_shown(repo):
    stack_file = repo / STACK_FILE
    stack_file.write_text(
        stack_file.read_text()
        + "  blueprints:secrets:\n    DATABASE_PASSWORD: old-hunter2\n"
        + "    DJANGO_SECRET_KEY: django-old\n    POSTGRES_PASSWORD: pg-old\n"
    )
    commit_all(repo, "secrets in plain text (bad, but it happens)")
    edit(repo, STACK_FILE, "old-hunter2", "new-hunter2")

    [(_, doc)] = offline_documents(repo, "HEAD", [STACK])
    text = json.dumps(doc)
    for value in ("hunter2", "django-old", "pg-old"):
        assert value not in text
    steps = steps_by_name(doc)
    # Secrets are no part of a server's user data (issue 15): the servers stay as they are and
    # the changed value travels in the secrets Command's stdin, a secret.
    assert steps["shop-single-vm-hcloud-primary"]["op"] == "same"
    sent = steps["shop-single-vm-hcloud-release-secrets"]
    assert (sent["op"], sent["diffReasons"]) == ("update", ["stdin"])
    assert sent["oldState"]["inputs"]["stdin"] == sent["newState"]["inputs"]["stdin"] == "[secret]"
    # The release names its secrets by a keyed digest, so it is updated too.
    assert steps["shop-single-vm-hcloud-release"]["op"] == "update"

    res = diff(repo, "--base", "HEAD", STACK)
    assert "hunter2" not in res.stdout + res.stderr
    assert "secrets changed" in res.stdout


def test_gitlab_flag_posts_the_same_report(repo):
    from fake_gitlab import BOT, FakeGitLab

    gl = FakeGitLab()
    try:
        gl.world.tokens = {"tok": BOT}
        gl.world.notes[("9", 3)] = []
        env = {
            "COLUMNS": "200",
            "CI_API_V4_URL": gl.api_url,
            "CI_PROJECT_ID": "9",
            "CI_MERGE_REQUEST_IID": "3",
            "GITLAB_TOKEN": "tok",
        }
        edit(repo, STACK_FILE, "blueprints:serverType: cx23", "blueprints:serverType: cx33")
        res = runner.invoke(
            app, ["diff", "-C", str(repo), "--base", "HEAD", STACK, "--gitlab"], env=env
        )
        assert res.exit_code == 0, res.stderr
        [note] = gl.world.notes[("9", 3)]
        assert note["body"] == res.stdout
        assert re.search(r"created note \d+", res.stderr)
    finally:
        gl.stop()


def test_diff_inputs_paths():
    old = {"labels": {"a": "1", "b-c": "2"}, "rules": [{"port": "22"}], "size": 1}
    new = {"labels": {"a": "1", "b-c": "3", "d": "4"}, "rules": [{"port": "2222"}, {}]}
    assert diff_inputs(old, new) == {
        'labels["b-c"]': "update",
        "labels.d": "add",
        "rules[0].port": "update",
        "rules[1]": "add",
        "size": "delete",
    }


def test_options_the_plan_records_are_honoured():
    def plan(inputs, **options):
        resource = {
            "type": "hcloud:index/firewall:Firewall",
            "name": "fw",
            "parent": None,
            "custom": True,
            "id": "123",
            "inputs": inputs,
            **options,
        }
        return {"resources": [resource], "outputs": {}, "notes": []}

    old = plan({"name": "a", "labels": {"x": "1"}})
    forced = plan({"name": "b", "labels": {"x": "1"}}, replaceOnChanges=["name"])
    doc = build_document("s", old, forced, old_project="p", new_project="p", base_label="main")
    [step] = [s for s in doc["steps"] if s["op"] != "same"]
    assert (step["op"], step["replaceReasons"]) == ("replace", ["name"])

    ignored = plan({"name": "a", "labels": {"x": "2"}}, ignoreChanges=["labels"])
    doc = build_document("s", old, ignored, old_project="p", new_project="p", base_label="main")
    assert doc["changeSummary"] == {"same": 2}


def test_every_resource_type_the_project_plans_has_replacement_rules():
    from blueprints.plan import plan_all

    types = {
        r.type
        for p in plan_all(ROOT)
        for r in p.resources
        if r.custom and not r.type.startswith("pulumi:providers:")
    }
    assert types - set(REPLACE_ON_CHANGE) == set()


def test_this_repository_plans_each_ref_with_its_own_code(tmp_path, scratch):
    """A clone of this repository: the base ref's own blueprints/ package plans the base."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", "--no-hardlinks", str(ROOT), str(clone))
    edit(
        clone,
        "blueprints/targets/base.py",
        '"managed-by": "blueprints"}',
        '"managed-by": "blueprints-next"}',
    )
    commit_all(clone, "relabel")
    [(_, doc)] = offline_documents(clone, "HEAD~1", [STACK])
    volume = steps_by_name(doc)["shop-single-vm-hcloud-data"]
    # Only code changed: the installed package would plan both sides alike.
    assert volume["op"] == "update"
    assert volume["detailedDiff"] == {'labels["managed-by"]': {"kind": "update", "inputDiff": True}}
    assert volume["oldState"]["inputs"]["labels"]["managed-by"] == "blueprints"
    assert volume["newState"]["inputs"]["labels"]["managed-by"] == "blueprints-next"
    assert list(scratch.iterdir()) == []


def test_project_that_did_not_exist_at_the_base(tmp_path):
    repo = tmp_path / "young"
    repo.mkdir()
    (repo / "README.md").write_text("infra to come\n")
    git(repo, "init", "-q", "-b", "main")
    commit_all(repo, "readme")
    bake_project(repo)
    [(_, doc)] = offline_documents(repo, "HEAD", [STACK])
    assert {s["op"] for s in doc["steps"]} == {"create"}


def test_cost_delta_counts_only_the_running_instance(repo):
    """A bigger instance type on single-vm-localstack: the parked spare is stopped, so only the
    primary's compute changes price (the unchanged InstanceState is in the document)."""
    from blueprints.costs import shipped_tables

    stack = "single-vm-localstack"
    text = (repo / f"stacks/Pulumi.{stack}.yaml").read_text()
    [before] = re.findall(r"blueprints:serverType: (\S+)", text)
    after = "t3.xlarge"
    assert before != after
    edit(repo, f"stacks/Pulumi.{stack}.yaml", f"serverType: {before}", f"serverType: {after}")
    commit_all(repo, "bigger instances")
    [(name, doc)] = offline_documents(repo, "HEAD~1", [stack])
    rep = build_report([(name, doc)])
    hours = Decimal(730)
    types = shipped_tables()["aws"].server_types
    assert types[after].price > types[before].price  # per hour
    assert rep.stacks[0].cost.delta == {"USD": (types[after].price - types[before].price) * hours}


# ---------------------------------------------------------------------------------------------
# Releases (issue 15): an app change is an in-place update of the release Command, nothing else

RELEASE_STACKS = [
    "single-vm-hcloud",
    "single-vm-localstack",
    "compose-hcloud",
    "compose-localstack",
]
NEW_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIO8mDpqjxnOvJA0XomYEgDYajggdH/7KKl7Q4yGfwYVn dev@ex.com"
)
APP_CHANGES = {
    "image": (
        '    image: ghcr.io/example/shop-web:1.4.2\n    command: ["gunicorn"',
        '    image: ghcr.io/example/shop-web:1.4.3\n    command: ["gunicorn"',
        ["web: image ghcr.io/example/shop-web:1.4.2 -> 1.4.3"],
    ),
    "admin-key": (
        "ops@example.com\n  cidrs:",
        f"ops@example.com\n    - {NEW_KEY}\n  cidrs:",
        [f"+{NEW_KEY}"],
    ),
    "env": (
        "      DJANGO_SETTINGS_MODULE: shop.settings.production\n    secret_env: [DATABASE_PASSWORD"
        ", DJANGO_SECRET_KEY]\n    health:\n      type: http",
        "      DJANGO_SETTINGS_MODULE: shop.settings.staging\n    secret_env: [DATABASE_PASSWORD"
        ", DJANGO_SECRET_KEY]\n    health:\n      type: http",
        ["web: container definition changed", "shop.settings.staging"],
    ),
    "replicas": ("    replicas: 2\n", "    replicas: 1\n", ["web: replicas 2 -> 1"]),
}


@pytest.mark.parametrize("change", sorted(APP_CHANGES))
def test_an_app_change_is_one_release_update_per_stack(repo, change):
    old, new, shown = APP_CHANGES[change]
    edit(repo, "examples/app.yaml", old, new)

    docs = offline_documents(repo, "HEAD", RELEASE_STACKS)
    assert [stack for stack, _ in docs] == RELEASE_STACKS
    for stack, doc in docs:
        changed = {
            s["urn"].rsplit("::", 1)[-1]: (s["op"], s["urn"].split("::")[2].split("$")[-1])
            for s in doc["steps"]
            if s["op"] != "same"
        }
        expected = {f"shop-{stack}-release": ("update", "command:remote:Command")}
        if change == "image" and stack == "single-vm-hcloud":  # the warm standby pulls it too
            expected[f"shop-{stack}-standby-images"] = ("update", "command:remote:Command")
        assert changed == expected, stack
        assert "replace" not in doc["changeSummary"], stack

    res = diff(repo, "--base", "HEAD", *RELEASE_STACKS, "--fail-on", "data-loss")
    assert res.exit_code == 0, res.stderr
    report = res.stdout
    updates = 5 if change == "image" else 4
    assert f"**0 to create, {updates} to update, 0 to replace, 0 to delete** in 4 stacks" in report
    assert "Data loss" not in report and "data loss" not in res.stderr
    for stack in RELEASE_STACKS:
        section = report.split(f"### Stack `{stack}`")[1].split("### Stack")[0]
        assert f"Release `shop-{stack}-release` (update)" in section
        for text in shown:
            assert text in section, (stack, text)


# ---------------------------------------------------------------------------------------------
# Per stack (issue 22): a stack that cannot be planned is reported, the others are diffed

OTHER_STACK = "single-vm-localstack"
OTHER_FILE = f"stacks/Pulumi.{OTHER_STACK}.yaml"
OWN_SPEC = "blueprints:spec: examples/app.yaml"
MISSING_SPEC = "blueprints:spec: examples/missing.yaml"


def test_a_stack_that_cannot_be_planned_is_reported_and_the_others_diffed(repo, scratch):
    edit(repo, STACK_FILE, "blueprints:location: fsn1", "blueprints:location: nbg1")
    edit(repo, OTHER_FILE, OWN_SPEC, MISSING_SPEC)

    res = diff(repo, "--base", "HEAD", STACK, OTHER_STACK)
    assert res.exit_code == 2, res.stderr
    report = res.stdout
    assert report.startswith(MARKER)
    [failed] = [line for line in report.splitlines() if line.startswith("**The preview failed")]
    assert f"`{OTHER_STACK}`" in failed  # (and single-vm-hcloud: its protected volume's error)
    section = report.split(f"### Stack `{OTHER_STACK}`")[1]
    assert (
        f"{OTHER_STACK} could not be planned in the working tree, so it was not diffed: " in section
    )
    assert "missing.yaml" in section
    # Not "no changes" and not a cost of 0: the row's cost is unknown, the section says why.
    assert "No resource changes could be shown: the preview failed (why under Diagnostics)." in (
        section
    )
    assert "\nNo resource changes.\n" not in section
    [row] = [line for line in report.splitlines() if line.startswith(f"| `{OTHER_STACK}` |")]
    assert row.split(" | ")[-2:] == ["?", "1 / 0 |"], row
    [total] = [line for line in report.splitlines() if line.startswith("| **total** |")]
    assert total.split(" | ")[-2].endswith("(partial)"), total
    assert (
        f"`{OTHER_STACK}`: **the preview reported 1 error(s)**, so its cost delta is unknown (`?`)"
        in report
    )
    # The stack that planned is diffed as usual, its data loss named.
    assert "volume `shop-single-vm-hcloud-data`" in report.split("### Stack")[0]
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert errors and all(
        line.startswith(f"error: {OTHER_STACK} (in the working tree): ") for line in errors
    )
    assert "missing.yaml" in errors[0]
    assert res.stderr.splitlines()[-1] == (
        f"1 of 2 stacks could not be planned and were not diffed: {OTHER_STACK}"
    )
    # Progress: a line per stack and side.
    for line in (f"  {STACK} at HEAD...", f"  {STACK} in the working tree..."):
        assert line in res.stderr.splitlines()
    assert "Traceback" not in res.stderr
    assert list(scratch.iterdir()) == []

    # The gate: data loss in the stacks that planned is exit 4; the unplanned one still listed.
    gated = diff(repo, "--base", "HEAD", STACK, OTHER_STACK, "--fail-on", "data-loss")
    assert gated.exit_code == EXIT_DATA_LOSS
    assert gated.stdout == report
    assert errors[0] in gated.stderr.splitlines()


def test_a_stack_broken_only_at_the_base_is_shown_against_nothing(repo, tmp_path):
    """The MR that fixes a stack broken at the base passes without a gate: the stack is
    diffed against nothing (all creates) with a warning; --fail-on data-loss still fails closed
    (exit 5, data loss unknown), after writing the report."""
    edit(repo, OTHER_FILE, OWN_SPEC, MISSING_SPEC)
    commit_all(repo, "broken")
    edit(repo, OTHER_FILE, MISSING_SPEC, OWN_SPEC)

    result = offline_diff(repo, "HEAD", [STACK, OTHER_STACK])
    assert result.failed == {}
    [(label, why)] = result.against_nothing.values()
    assert list(result.against_nothing) == [OTHER_STACK] and label == "HEAD"
    assert "missing.yaml" in why
    docs = dict(result.documents)
    ops = {step["op"] for step in docs[OTHER_STACK]["steps"]}
    assert ops == {"create"} and len(docs[OTHER_STACK]["steps"]) > 10
    assert {step["op"] for step in docs[STACK]["steps"]} == {"same"}  # the other stack as usual

    res = diff(repo, "--base", "HEAD", STACK, OTHER_STACK)
    assert res.exit_code == 0, res.stderr
    report = res.stdout
    head, section = report.split(f"### Stack `{OTHER_STACK}`")
    assert (
        f"**`{OTHER_STACK}` could not be planned at `HEAD`**: shown against nothing (every "
        "resource as created), so what this change replaces or deletes there is unknown."
    ) in head
    assert "The preview failed" not in report
    assert f"where the preview is complete; for `{OTHER_STACK}` it is unknown" in head
    assert "**Shown against nothing**: this stack could not be planned at `HEAD`" in section
    assert f"{OTHER_STACK} could not be planned at HEAD, so it is shown against nothing" in section
    assert "missing.yaml" in section
    assert "(create)" in section and "No resource changes" not in section
    [row] = [line for line in head.splitlines() if line.startswith(f"| `{OTHER_STACK}` |")]
    assert row.split(" | ")[-2] == "?", row  # all creates, not a cost delta
    assert (
        f"`{OTHER_STACK}`: **not planned at `HEAD`**: shown against nothing, so its cost delta"
        in head
    )
    # The base's reason names the file as git does, not the temporary copy it was planned in.
    assert "HEAD:examples/missing.yaml: no such file" in section
    assert TEMP_PREFIX not in report
    warnings = [line for line in res.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1
    assert warnings[0].startswith(f"warning: {OTHER_STACK} could not be planned at HEAD: ")
    assert warnings[0].endswith("; shown against nothing") and "missing.yaml" in warnings[0]
    assert "error:" not in res.stderr and "Traceback" not in res.stderr
    assert f"data loss unknown: {OTHER_STACK}: " in res.stderr

    out = tmp_path / "report.md"
    gated = diff(
        repo, "--base", "HEAD", STACK, OTHER_STACK, "--fail-on", "data-loss", "-o", str(out)
    )
    assert gated.exit_code == EXIT_PREVIEW_FAILED, gated.stderr
    assert out.read_text() == report
    assert warnings[0] in gated.stderr.splitlines()
    assert "pulumi preview" in gated.stderr  # what to do instead


def test_a_stack_broken_on_both_sides_is_not_diffed_and_exits_2(repo):
    """Still broken in the working tree: the working tree is what merges, so exit 2."""
    edit(repo, OTHER_FILE, OWN_SPEC, MISSING_SPEC)
    commit_all(repo, "broken")
    result = offline_diff(repo, "HEAD", [OTHER_STACK])
    assert [label for label, _ in result.failed[OTHER_STACK]] == ["HEAD", "working tree"]
    assert result.against_nothing == {}
    res = diff(repo, "--base", "HEAD", OTHER_STACK)
    assert res.exit_code == 2
    assert f"{OTHER_STACK} could not be planned at HEAD, so it was not diffed" in res.stdout
    assert f"{OTHER_STACK} could not be planned in the working tree, so it" in res.stdout
    assert "No resource changes could be shown" in res.stdout
    assert f"error: {OTHER_STACK} (at HEAD): " in res.stderr
    assert f"error: {OTHER_STACK} (in the working tree): " in res.stderr
    with pytest.raises(DiffError, match=r"missing\.yaml"):
        offline_documents(repo, "HEAD", [OTHER_STACK])


def test_spec_plans_the_working_tree_with_it_and_the_base_as_it_was(repo, tmp_path):
    spec = tmp_path / "next.yaml"
    spec.write_text(
        (repo / "examples/app.yaml").read_text().replace("shop-web:1.4.2", "shop-web:1.4.3")
    )
    [(_, doc)] = offline_documents(repo, "HEAD", [STACK], spec=spec)
    changed = {n: s["op"] for n, s in steps_by_name(doc).items() if s["op"] != "same"}
    assert changed == {
        "shop-single-vm-hcloud-release": "update",
        "shop-single-vm-hcloud-standby-images": "update",
    }
    res = diff(repo, "--base", "HEAD", STACK, "--spec", str(spec), "--fail-on", "data-loss")
    assert res.exit_code == 0, res.stderr
    assert "against HEAD, the working tree planned with next" in res.stdout
    assert "web: image ghcr.io/example/shop-web:1.4.2 -> 1.4.3" in res.stdout
    # Without --spec the working tree plans its own spec: nothing changed.
    assert "No resource changes" in diff(repo, "--base", "HEAD", STACK).stdout


def test_bad_spec_is_one_line_before_anything_is_planned(repo, tmp_path, made):
    res = diff(repo, "--base", "HEAD", "--spec", str(tmp_path / "nope.yaml"))
    assert res.exit_code == 2
    assert (
        res.stderr.strip()
        == f"error: --spec: {tmp_path / 'nope.yaml'} does not exist or is not a file"
    )
    assert res.stdout == "" and not made
