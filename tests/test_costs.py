"""The backup bucket's object storage (blueprints/costs.py), priced from the shipped table.

Figures are computed here from blueprints/prices.yaml and the sizing model the module documents
(data x (1 + 0.1 x (keep - 1)) for keep snapshots), never copied totals. The stacks compared set
or unset blueprints:backupBucket explicitly, whatever the stack files in stacks/ say.
"""

from __future__ import annotations

import shutil
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from blueprints import costs
from blueprints.compare import compare
from blueprints.settings import StackSettings
from blueprints.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
D = Decimal
APP = load_spec(ROOT / "examples/app.yaml")
HCLOUD = costs.shipped_tables()["hcloud"]
AWS = costs.shipped_tables()["aws"]


def repository_gb(data_gb, keep) -> Decimal:
    """The model as documented: the first snapshot is the data, each further one adds 10%."""
    return D(data_gb) * (1 + D("0.1") * (keep - 1))


def hetzner_object_storage(size_gb: Decimal) -> Decimal:
    """The account's base price, plus storage beyond the included TB by the TB-hour."""
    base = HCLOUD.decimal("object_storage", "base_month")
    included = HCLOUD.decimal("object_storage", "included_storage_tb")
    per_tb_hour = HCLOUD.decimal("object_storage", "extra_storage_tb_hour")
    hours = HCLOUD.decimal("object_storage", "hours_per_month")
    assert None not in (base, included, per_tb_hour, hours)
    over = max(size_gb / 1000 - included, D(0))
    return base + over * per_tb_hour * hours


def object_storage_lines(summary: costs.CostSummary) -> list[costs.CostLine]:
    return list(costs.backup_storage_lines(summary))


# ----------------------------------------------------------------------------- the price table


def test_the_table_holds_object_storage_prices_with_their_source_and_date():
    for table in (HCLOUD, AWS):
        block = table.data["object_storage"]
        assert block["source"] and block["as_of"] and block["found"], table.cloud
    assert HCLOUD.decimal("object_storage", "base_month") > 0
    assert HCLOUD.decimal("object_storage", "included_storage_tb") == 1
    assert AWS.decimal("object_storage", "standard_gb_month") > 0


# ----------------------------------------------------------------------------- pricing one bucket


def test_hetzner_bucket_costs_the_base_price_while_the_repository_fits_the_quota():
    keep = APP.backups.keep
    item = costs.backup_storage("bucket b", "hcloud", "fsn1", APP.data_size_gb, keep)
    summary = costs.price_resources([item])
    (line,) = summary.lines
    size = repository_gb(APP.data_size_gb, keep)
    assert size < 1000  # the example app's repository is far below the included TB
    assert (line.category, line.currency) == ("backups", "EUR")
    base = HCLOUD.decimal("object_storage", "base_month")
    assert line.amount == hetzner_object_storage(size) == base
    # The line says what it assumed: the repository size, the data and the snapshots kept.
    assert f"~{size.normalize():f} GB" in line.detail
    assert f"{APP.data_size_gb} GB data" in line.detail and f"keep {keep}" in line.detail
    assert "only Object Storage user" in line.detail
    assert summary.unpriced == ()


def test_hetzner_storage_beyond_the_included_tb_is_billed_by_the_tb_hour():
    summary = costs.price_resources([costs.backup_storage("bucket b", "hcloud", "hel1", 2000, 7)])
    (line,) = summary.lines
    size = repository_gb(2000, 7)  # 3.2 TB: 2.2 TB over the quota
    assert line.amount == hetzner_object_storage(size)
    assert line.amount > HCLOUD.decimal("object_storage", "base_month")
    assert "2.2 TB over it" in line.detail


def test_s3_bucket_costs_the_repository_size_at_the_standard_price():
    keep = APP.backups.keep
    item = costs.backup_storage("bucket b", "aws", "eu-central-1", APP.data_size_gb, keep)
    (line,) = costs.price_resources([item]).lines
    per_gb = AWS.decimal("object_storage", "standard_gb_month")
    assert (line.category, line.currency) == ("backups", "USD")
    assert line.amount == repository_gb(APP.data_size_gb, keep) * per_gb
    assert "S3 Standard" in line.detail and f"keep {keep}" in line.detail


def test_more_snapshots_kept_cost_more_on_s3():
    one, thirty = (
        costs.price_resources([costs.backup_storage("bucket b", "aws", None, 100, keep)]).total
        for keep in (1, 30)
    )
    per_gb = AWS.decimal("object_storage", "standard_gb_month")
    assert one == {"USD": 100 * per_gb}  # one snapshot: the data itself
    assert thirty == {"USD": repository_gb(100, 30) * per_gb}


@pytest.mark.parametrize(
    ("item", "why"),
    [
        (
            costs.backup_storage("bucket b", "aws", "us-east-1", 10, 7),
            "bucket b: backup bucket in us-east-1, which is not in the price table (eu-central-1)",
        ),
        (
            costs.backup_storage("bucket b", "hcloud", "ash", 10, 7),
            "bucket b: backup bucket in ash, which is not in the price table (fsn1, nbg1, hel1)",
        ),
        (
            costs.backup_storage("bucket b", "aws", None, "[secret]", 7),
            "bucket b: backup data size or snapshots kept not known",
        ),
        (
            costs.backup_storage("bucket b", "aws", None, 10, 0),
            "bucket b: backup data size or snapshots kept not known",
        ),
        (
            (costs.BACKUP_STORAGE, "bucket b", {"cloud": "at minio.example.com"}),
            "bucket b: backup storage (at minio.example.com) is not in the price table",
        ),
    ],
)
def test_what_the_table_cannot_price_is_unpriced_not_guessed(item, why):
    summary = costs.price_resources([item])
    assert summary.lines == () and summary.unpriced == (why,)


def test_the_bucket_resource_itself_is_free():
    summary = costs.price_resources([(costs.AWS_BUCKET, "b", {"bucket": "shop-backups"})])
    assert summary.lines == () and summary.unpriced == ()


@pytest.mark.parametrize(
    ("endpoint", "place"),
    [
        ("https://fsn1.your-objectstorage.com", ("hcloud", "fsn1")),
        ("https://hel1.your-objectstorage.com/", ("hcloud", "hel1")),
        ("https://s3.eu-central-1.amazonaws.com", ("aws", "eu-central-1")),
        ("https://s3-eu-west-1.amazonaws.com", ("aws", "eu-west-1")),
        ("http://localhost:4566", ("aws", None)),
        ("https://minio.example.com", None),
    ],
)
def test_bucket_place_from_its_endpoint(endpoint, place):
    assert costs.bucket_place(endpoint) == place


# ----------------------------------------------------------------------------- from a stack


def settings(**kw) -> StackSettings:
    return StackSettings.model_validate(kw)


def test_a_stack_without_a_bucket_has_no_object_storage():
    s = settings(blueprint="compose", target="hcloud")
    assert costs.stack_backup_storage(s, APP) is None


def test_a_stack_bucket_is_sized_from_the_spec():
    s = settings(
        blueprint="compose",
        target="hcloud",
        location="nbg1",
        backupBucket="shop-backups",
        backupEndpoint="https://nbg1.your-objectstorage.com",
        backupAccessKey="AK",
    )
    item = costs.stack_backup_storage(s, APP)
    assert item == (
        costs.BACKUP_STORAGE,
        "bucket shop-backups",
        {"cloud": "hcloud", "location": "nbg1", "dataGb": APP.data_size_gb, "keep": 7},
    )
    local = settings(
        blueprint="single-vm", target="localstack", backupBucket="b-1", backupAccessKey="test"
    )
    assert costs.stack_backup_storage(local, APP)[2] == {  # type: ignore[index]
        "cloud": "aws",
        "region": "eu-central-1",
        "dataGb": APP.data_size_gb,
        "keep": APP.backups.keep,
    }


def test_a_spec_without_backups_stores_no_app_data():
    off = APP.model_copy(update={"backups": APP.backups.model_copy(update={"enabled": False})})
    s = settings(blueprint="compose", target="aws", backupBucket="b-1", backupAccessKey="AK")
    item = costs.stack_backup_storage(s, off)
    assert item is not None and item[2]["dataGb"] == 0
    assert costs.price_resources([item]).total == {"USD": D(0)}


def test_live_prices_keep_the_shipped_object_storage_prices():
    raw = dict(HCLOUD.data)
    table = costs._table("hcloud", {**raw, "as_of": "live"})
    item = costs.backup_storage("bucket b", "hcloud", "fsn1", 10, 7)
    assert costs.price_resources([item], {"hcloud": table}).total == {
        "EUR": HCLOUD.decimal("object_storage", "base_month")
    }


# ----------------------------------------------------------------------------- compare


def _project(root: Path, bucket: bool) -> Path:
    """A project with the compose stacks of both clouds, with or without a backup bucket."""
    for name in ("Pulumi.yaml", "examples"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, root / name)
    (root / "blueprints").mkdir()
    shutil.copy(ROOT / "blueprints/program.py", root / "blueprints/program.py")
    (root / "stacks").mkdir()
    for stack in ("compose-hcloud", "compose-localstack"):
        doc = yaml.safe_load((ROOT / f"stacks/Pulumi.{stack}.yaml").read_text())
        config = {k: v for k, v in doc["config"].items() if "backup" not in k.lower()}
        if bucket:
            config["blueprints:backupBucket"] = f"shop-{stack}"
            config["blueprints:backupAccessKey"] = "AK"
            if stack.endswith("hcloud"):
                config["blueprints:backupEndpoint"] = "https://fsn1.your-objectstorage.com"
        doc["config"] = config
        (root / f"stacks/Pulumi.{stack}.yaml").write_text(yaml.safe_dump(doc))
    return root


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    out = {}
    for bucket in (True, False):
        project = _project(tmp_path_factory.mktemp("with" if bucket else "without"), bucket)
        for target in ("hcloud", "localstack"):
            (row,) = compare(target, project_dir=project).rows
            out[bucket, target] = row
    return out


def test_compare_prices_a_hetzner_backup_bucket(compared):
    with_, without = compared[True, "hcloud"], compared[False, "hcloud"]
    (line,) = object_storage_lines(with_.cost)
    expected = hetzner_object_storage(repository_gb(APP.data_size_gb, APP.backups.keep))
    assert line.resource == "bucket shop-compose-hcloud" and line.amount == expected
    assert with_.cost.total["EUR"] - without.cost.total["EUR"] == expected
    assert with_.cost.by_category()["backups"] - without.cost.by_category()["backups"] == expected
    # The assumption is on the line and, for the text formats, in the row's notes.
    assert f"keep {APP.backups.keep}" in line.detail
    assert any(n.startswith("backups: bucket shop-compose-hcloud: ") for n in with_.notes)


def test_compare_names_the_object_storage_source_only_when_it_priced_some(tmp_path_factory):
    from blueprints import compare_output

    for bucket in (True, False):
        project = _project(tmp_path_factory.mktemp("sources"), bucket)
        text = compare_output.to_markdown(compare("localstack", project_dir=project))
        assert ("Backup object storage: Amazon S3 pricing" in text) is bucket
        assert ("backups: bucket shop-compose-localstack: S3 Standard; repository ~" in text) is (
            bucket
        )


def test_compare_prices_an_s3_backup_bucket(compared):
    with_, without = compared[True, "localstack"], compared[False, "localstack"]
    (line,) = object_storage_lines(with_.cost)
    per_gb = AWS.decimal("object_storage", "standard_gb_month")
    expected = repository_gb(APP.data_size_gb, APP.backups.keep) * per_gb
    assert line.amount == expected and line.category == "backups"
    assert with_.cost.total["USD"] - without.cost.total["USD"] == expected
    assert f"{APP.data_size_gb} GB data" in line.detail


def test_compare_without_a_bucket_shows_no_object_storage(compared):
    for target in ("hcloud", "localstack"):
        row = compared[False, target]
        assert object_storage_lines(row.cost) == []
        assert not any(n.startswith("backups:") for n in row.notes)
        assert row.cost.unpriced == ()


# ----------------------------------------------------------------------------- spare modes


def _aws_pair(spare_state: str | None, with_ids: bool = True) -> list[tuple]:
    """An aws single-vm's two instances (the primary with an Elastic IP), the spare kept in
    `spare_state` by an InstanceState (None: no InstanceState, the instance simply runs).
    Without ids, as in a preview of new resources: the power resource names its instance."""
    root = {"volumeSize": 20, "volumeType": "gp3"}
    instance = {"instanceType": "t3.small", "associatePublicIpAddress": True}
    instance["rootBlockDevice"] = root
    out: list[tuple] = [
        (costs.AWS_INSTANCE, "app-primary", instance, "i-1" if with_ids else None),
        (costs.AWS_INSTANCE, "app-spare", instance, "i-2" if with_ids else None),
        (costs.AWS_EIP, "app-ip", {}),
        (costs.AWS_EIP_ASSOCIATION, "app-ip-assoc", {"instanceId": "i-1"}),
    ]
    if spare_state is not None:
        power = {"state": spare_state, "instanceId": "i-2" if with_ids else "[unknown]"}
        out.append((costs.AWS_INSTANCE_STATE, "app-spare-power", power))
    return out


def _spare_lines(summary: costs.CostSummary) -> dict[str, Decimal]:
    return {line.category: line.amount for line in summary.lines if line.resource == "app-spare"}


def test_an_aws_cold_spare_costs_its_root_disk_only():
    disk = 20 * AWS.decimal("ebs_gb_month", "gp3")
    for with_ids in (True, False):
        summary = costs.price_resources(_aws_pair("stopped", with_ids))
        # no compute, and no public IPv4: a stopped instance gives its address back
        assert _spare_lines(summary) == {"servers": D(0), "volumes": disk}, with_ids
        spare = next(line for line in summary.lines if line.resource == "app-spare")
        assert spare.detail == "t3.small, stopped: no compute charge"


def test_an_aws_warm_spare_costs_a_running_instance():
    hours = AWS.decimal("hours_per_month")
    disk = 20 * AWS.decimal("ebs_gb_month", "gp3")
    ipv4 = AWS.decimal("public_ipv4_hour") * hours
    compute = AWS.server_types["t3.small"].price * hours
    for state in ("running", None):
        summary = costs.price_resources(_aws_pair(state))
        assert _spare_lines(summary) == {"servers": compute, "ips": ipv4, "volumes": disk}
    warm, cold = (costs.price_resources(_aws_pair(s)).total["USD"] for s in ("running", "stopped"))
    assert warm - cold == compute + ipv4


def test_a_hetzner_spare_costs_the_same_warm_or_cold():
    # Hetzner bills a powered-off server in full: whatever keeps it off changes nothing.
    server = {"serverType": "cx23", "location": "fsn1"}
    warm = costs.price_resources([(costs.HCLOUD_SERVER, "app-spare", server)])
    cold = costs.price_resources(
        [
            (costs.HCLOUD_SERVER, "app-spare", server),
            ("command:local:Command", "app-spare-power", {"create": "poweroff"}),
        ]
    )
    assert warm.total == cold.total == {"EUR": D("2.99") + D("0.50")}
    assert warm.lines[0].detail == "cx23, billed running or off"
