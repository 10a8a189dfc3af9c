"""`blueprints diff` on the k8s stacks, from a real git history in a temporary repo: an image
bump is one Deployment update whose diff names the images, an admin key replaces nothing, and a
k3s upgrade replaces the nodes one after another, flagged where a node holds cluster state."""

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

STACKS = ["k8s-hcloud", "k8s-localstack"]
SERVERS = {"hcloud:index/server:Server", "aws:ec2/instance:Instance"}
NODES = ["cp-1", "cp-2", "cp-3", "worker-1", "worker-2", "worker-3"]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return baked_git_repo(tmp_path, STACKS)


def run_diff(repo: Path, *args: str):
    return run_stack_diff(repo, STACKS, *args)


def diff(repo: Path):
    return offline_diff(repo, STACKS)


def test_an_image_bump_is_one_deployment_update_and_no_data_loss(repo):
    bump_web_image(repo)
    for stack, doc in offline_documents(repo, "HEAD~1", STACKS):
        assert step_ops(doc) == {f"shop-{stack}-deployment-shop-web": "update"}, stack
        assert not any(s["op"] == "replace" for s in doc["steps"])
    res = run_diff(repo, "--fail-on", "data-loss")
    assert res.exit_code == 0, res.stderr
    out = res.stdout
    assert "Data loss" not in out
    # the Deployment's diff names the old and the new image, in the stack's head and as a diff
    assert out.count("web: image ghcr.io/example/shop-web:1.4.2 -> 1.4.3") >= 2
    assert '-          "image": "ghcr.io/example/shop-web:1.4.2",' in out
    assert '+          "image": "ghcr.io/example/shop-web:1.4.3",' in out
    assert "a Kubernetes rolling update" in out


def test_a_secret_change_updates_the_secret_and_rolls_its_services(repo):
    for stack in STACKS:
        text = (repo / f"stacks/Pulumi.{stack}.yaml").read_text()
        (repo / f"stacks/Pulumi.{stack}.yaml").write_text(
            text + "  blueprints:secrets:\n    DJANGO_SECRET_KEY: one-Sekr1t\n"
        )
    commit_all(repo, "a secret")
    for stack in STACKS:
        edit(repo, f"stacks/Pulumi.{stack}.yaml", "KEY: one-Sekr1t", "KEY: two-Sekr1t")
    commit_all(repo, "another secret")
    docs, report = diff(repo)
    for stack, doc in docs:
        p = f"shop-{stack}"
        # the Secret changes in place, and the pods of the services that read it roll
        assert step_ops(doc) == {
            f"{p}-secret-shop-web-secret-env": "update",
            f"{p}-secret-shop-worker-secret-env": "update",
            f"{p}-deployment-shop-web": "update",
            f"{p}-deployment-shop-worker": "update",
        }, stack
    out = report.markdown
    assert not report.data_loss
    assert "web: secrets changed" in out and "worker: secrets changed" in out
    assert "Sekr1t" not in out  # no secret value in the report


def test_an_admin_key_updates_the_ready_commands_only(repo):
    add_admin_key(repo)
    docs, report = diff(repo)
    for stack, doc in docs:
        assert step_ops(doc) == {f"shop-{stack}-{node}-ready": "update" for node in NODES}
    assert not report.data_loss


def test_a_k3s_upgrade_replaces_the_nodes_one_after_another(repo):
    for stack in STACKS:
        edit(
            repo,
            f"stacks/Pulumi.{stack}.yaml",
            "blueprints:k3sVersion: v1.34.9+k3s1",
            "blueprints:k3sVersion: v1.34.10+k3s1",
        )
    commit_all(repo, "k3s 1.34.10")
    docs, report = diff(repo)
    for stack, doc in docs:
        p = f"shop-{stack}"
        replaced = [
            s["urn"].rsplit("::", 1)[-1]
            for s in doc["steps"]
            if s["op"] in ("replace", "delete-replaced", "create-replacement")
            and s["urn"].split("::")[-2].rsplit("$", 1)[-1] in SERVERS
        ]
        assert sorted(set(replaced)) == [f"{p}-{node}" for node in NODES], stack
        ops = step_ops(doc)
        for node in NODES:
            assert ops[f"{p}-{node}-ready"] == "replace"
        # no Kubernetes object changes
        assert not any(n.startswith((f"{p}-deployment-", f"{p}-statefulset-")) for n in ops)
    out = report.markdown
    for stack in STACKS:
        p = f"shop-{stack}"
        order = ", then ".join(
            f"`{p}-{node}`" + (f" (after `{p}-{before}-ready`)" if before else "")
            for before, node in zip([None, *NODES[:-1]], NODES, strict=True)
        )
        assert (
            f"Servers replaced one after another, each once the one before is back: {order}." in out
        )
    # the data-loss gate names every node that holds cluster state or local volumes
    assert "Data loss" in out
    assert out.count("which holds an etcd member") == 6  # 3 control planes x 2 stacks
    assert out.count("which holds local volumes") == 3  # the localstack workers
    # `--fail-on data-loss` fails on it
    assert report.data_loss and len(report.dangers) == 9
