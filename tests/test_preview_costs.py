"""The cost column of the merge-request report never reads as free when it is not known: a
resource the table cannot price is listed and the total marked partial, the AWS region comes
from the stack's config when a resource names no zone, and the note says when the prices hold."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from test_preview_report import doc, state, step

from blueprints.costs import bills_nothing, shipped_tables
from blueprints.preview.document import load_preview, parse_preview
from blueprints.preview.report import build_report

REAL = Path(__file__).resolve().parent / "preview_docs" / "pulumi-engine"
INSTANCE = "aws:ec2/instance:Instance"


def instance(stack: str, name: str) -> dict:
    inputs = {
        "instanceType": "t3.small",
        "rootBlockDevice": {"volumeSize": 20, "volumeType": "gp3"},
    }
    return state(stack, INSTANCE, name, inputs)


def summary(document: dict):
    report = build_report([("s", parse_preview(document))], prices=True)
    return report, report.stacks[0].cost


def test_an_eks_cluster_is_listed_not_priced_and_the_total_is_partial():
    """Pulumi's recorded EKS stream: the cluster is billed by AWS, the table has no price."""
    report = build_report([("dev", load_preview(REAL / "up-3.ndjson"))], prices=True)
    cost = report.stacks[0].cost
    assert cost is not None
    assert any(u.startswith("eks-cluster: ") for u in cost.unpriced)
    # the role, its attachments and the security group bill nothing: not listed
    assert not any(u.startswith(("eks-role", "eks-rpa", "eks-sg")) for u in cost.unpriced)
    assert "| 0 (partial) |" in report.markdown


def test_types_off_the_priced_clouds_are_listed_not_priced():
    steps = [
        step(
            "create",
            "s",
            "gcp:compute/disk:Disk",
            "disk",
            None,
            state("s", "gcp:compute/disk:Disk", "disk", {"size": 50}),
        ),
        step(
            "create",
            "s",
            "random:index/randomPassword:RandomPassword",
            "pw",
            None,
            state("s", "random:index/randomPassword:RandomPassword", "pw", {}),
        ),
    ]
    report, cost = summary(doc(steps))
    assert cost.unpriced == (
        "disk: gcp:compute/disk:Disk is not in the price table (hcloud and aws only)",
    )
    assert "(partial)" in report.markdown
    assert bills_nothing("random:index/randomPassword:RandomPassword")
    assert not bills_nothing("aws:rds/instance:Instance")


def test_an_aws_type_the_table_lacks_is_listed_not_priced():
    steps = [
        step(
            "create",
            "s",
            "aws:rds/instance:Instance",
            "db",
            None,
            state("s", "aws:rds/instance:Instance", "db", {"instanceClass": "db.t3.micro"}),
        ),
    ]
    _, cost = summary(doc(steps))
    assert cost.unpriced == ("db: aws:rds/instance:Instance is not in the price table",)


def test_the_region_comes_from_the_stack_config_when_no_zone_is_named():
    priced_in = shipped_tables()["aws"].places[0]
    document = doc([step("create", "s", INSTANCE, "web", None, instance("s", "web"))])
    document["config"] = {"aws:region": priced_in}
    _, cost = summary(document)
    assert cost.unpriced == () and cost.delta["USD"] > Decimal(0)
    document["config"] = {"aws:region": "us-west-2"}
    report, cost = summary(document)
    assert cost.unpriced == (f"web: region us-west-2 is not in the price table ({priced_in})",)
    assert "(partial)" in report.markdown


def test_the_note_says_when_the_prices_hold():
    report, _ = summary(doc([step("create", "s", INSTANCE, "web", None, instance("s", "web"))]))
    tables = shipped_tables()
    for cloud, table in tables.items():
        assert f"{cloud} as of {table.as_of}" in report.markdown
