"""`blueprints diff` on the nomad stacks, from a real git history in a temporary repo: an image
bump is one job update whose diff names the images, an admin key replaces nothing, and a
machine change replaces the nodes one after another."""

from __future__ import annotations

from pathlib import Path

import pytest
from baked_repo import (
    add_admin_key,
    baked_git_repo,
    bump_web_image,
    commit_all,
    edit,
    offline_diff,
    step_ops,
)
from baked_repo import run_diff as run_stack_diff

from blueprints.preview.offline import offline_documents

STACKS = ["nomad-hcloud", "nomad-localstack"]
SERVERS = {"hcloud:index/server:Server", "aws:ec2/instance:Instance"}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return baked_git_repo(tmp_path, STACKS)


def run_diff(repo: Path, *args: str):
    return run_stack_diff(repo, STACKS, *args)


def test_an_image_bump_is_one_job_update_and_no_data_loss(repo):
    bump_web_image(repo)
    for stack, doc in offline_documents(repo, "HEAD~1", STACKS):
        assert step_ops(doc) == {f"shop-{stack}-job-web": "update"}, stack
        assert not any(s["op"] == "replace" for s in doc["steps"])
    res = run_diff(repo, "--fail-on", "data-loss")
    assert res.exit_code == 0, res.stderr
    out = res.stdout
    assert "Data loss" not in out
    # the job's diff names the old and the new image, in the stack's head and as a diff
    assert out.count("web: image ghcr.io/example/shop-web:1.4.2 -> 1.4.3") >= 2
    assert '-        image = "ghcr.io/example/shop-web:1.4.2"' in out
    assert '+        image = "ghcr.io/example/shop-web:1.4.3"' in out
    assert "a Nomad deployment: one instance at a time, health-gated, reverted if it fails" in out


def test_an_admin_key_updates_the_ready_commands_only(repo):
    add_admin_key(repo)
    docs, report = offline_diff(repo, STACKS)
    for stack, doc in docs:
        assert step_ops(doc) == {f"shop-{stack}-node-{i}-ready": "update" for i in (1, 2, 3)}
    assert not report.data_loss


def test_a_nomad_version_bump_replaces_the_nodes_one_after_another(repo):
    for stack in STACKS:
        edit(
            repo,
            f"stacks/Pulumi.{stack}.yaml",
            "blueprints:nomadVersion: 1.10.5",
            "blueprints:nomadVersion: 1.10.6",
        )
    commit_all(repo, "nomad 1.10.6")
    docs, report = offline_diff(repo, STACKS)
    for stack, doc in docs:
        replaced = [
            s["urn"].rsplit("::", 1)[-1]
            for s in doc["steps"]
            if s["op"] in ("replace", "delete-replaced", "create-replacement")
            and s["urn"].split("::")[-2].rsplit("$", 1)[-1] in SERVERS
        ]
        assert sorted(set(replaced)) == [f"shop-{stack}-node-{i}" for i in (1, 2, 3)], stack
        ops = step_ops(doc)
        # each node's ready command runs again on its new server; no job, no Variable changes
        for i in (1, 2, 3):
            assert ops[f"shop-{stack}-node-{i}-ready"] == "replace"
        assert not any("-job-" in n or "-secrets-" in n for n in ops)
    for stack in STACKS:
        p = f"shop-{stack}"
        assert (
            "Servers replaced one after another, each once the one before is back: "
            f"`{p}-node-1`, then `{p}-node-2` (after `{p}-node-1-ready`), then "
            f"`{p}-node-3` (after `{p}-node-2-ready`)."
        ) in report.markdown
