"""Backups on the VM rungs (single-vm, compose): what the release brings, checked by real tools.

- the backup and check units pass `systemd-analyze verify` (in the rungs' validator tests) and
  their calendars `systemd-analyze calendar`;
- blueprints-backup's configuration is one its own loader accepts, and says how this rung
  reaches the app (exec, pause, stop and start);
- the repository password and the storage keys are in the root-only secret files only: not in
  the user data, not in the release document, not in any other file;
- a stack's plan: backups with storage, the "what to set" sentence without.
The backup itself runs for real in tests/test_node_backup.py (restic, moto's S3) and on a real
node in tests/test_realnode_compose.py.
"""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path

import pytest
import validators
import yaml
from test_render_single_vm import (
    BACKUP_PASSWORD,
    BACKUP_SECRET_KEY,
    EXAMPLE_DATA,
    HCLOUD_DEVICE,
    STORAGE,
    context,
    secrets_for,
    spec,
)

from blueprints.backup import node_backup
from blueprints.backup import node_files as nf
from blueprints.plan import plan_stack
from blueprints.release.bundle import parse_release
from blueprints.release.node_kit import Exit, load_config
from blueprints.render import compose as rc
from blueprints.render import single_vm as svm
from blueprints.render.unpack import SERVER_TYPES, server_user_data

ROOT = Path(__file__).resolve().parents[1]


def compose_files(app, storage=STORAGE):
    return rc.render_vm_files(
        rc.ComposeContext(
            app=app, data_device=HCLOUD_DEVICE, storage=storage, secrets=secrets_for(app)
        )
    )


RUNGS = {
    "single-vm": lambda app, storage=STORAGE: svm.render_node_files(context(app, storage=storage)),
    "compose": compose_files,
}


@pytest.mark.parametrize(
    ("backups", "backup", "check"),
    [
        ({"schedule": "daily", "at": "03:00"}, "*-*-* 03:00:00 UTC", "Sun *-*-* 05:00:00 UTC"),
        ({"schedule": "hourly", "at": "00:15"}, "*-*-* *:15:00 UTC", "Sun *-*-* 02:45:00 UTC"),
        ({"schedule": "weekly", "at": "23:30"}, "Sun *-*-* 23:30:00 UTC", "Sun *-*-* 01:30:00 UTC"),
    ],
)
@pytest.mark.parametrize("rung", sorted(RUNGS))
def test_timers_follow_the_spec_and_systemd_reads_their_calendars(rung, backups, backup, check):
    app = spec({**copy.deepcopy(EXAMPLE_DATA), "backups": backups})
    files = RUNGS[rung](app)
    for unit, calendar in ((nf.UNIT, backup), (nf.CHECK_UNIT, check)):
        assert f"OnCalendar={calendar}\n" in files[f"/etc/systemd/system/{unit}.timer"]
        proc = subprocess.run(
            [validators.require("systemd-analyze"), "calendar", calendar],
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr


def _config(files, tmp_path):
    path = tmp_path / "config.json"
    path.write_text(files[nf.CONFIG])
    return load_config(
        str(path), "blueprints-backup", node_backup.CONFIG_FIELDS, node_backup.check_config
    )


def test_the_configuration_is_one_blueprints_backup_accepts_and_says_how_to_reach_the_app(
    tmp_path,
):
    app = spec()
    single = _config(RUNGS["single-vm"](app), tmp_path)
    assert single["repository"] == STORAGE.repository
    assert single["name"] == "shop-golden"
    assert single["paths"] == ["/srv/data"] and single["volumes"] == ["/srv/data/pgdata"]
    # the database is dumped inside its container, its volume left out of the file backup
    (dump,) = single["dumps"]
    assert dump["exec"] == ["docker", "exec", "-i", "postgres-1"]
    assert dump["dump"] == ["pg_dump", "--username=shop", "--format=custom", "shop"]
    assert dump["volumes"] == ["/srv/data/pgdata"]
    assert single["pause"] is None  # nothing is backed up as files while it runs
    assert (single["stop"], single["start"]) == (
        ["systemctl", "stop", "app.target"],
        ["systemctl", "start", "app.target"],
    )
    assert single["keep"] == app.backups.keep
    # the release state on the volume (its secrets documents) is never backed up
    assert "/srv/data/.blueprints" in single["exclude"]

    compose = _config(RUNGS["compose"](app), tmp_path)
    assert compose["dumps"][0]["exec"] == [rc.WRAPPER, "exec", "-T", "postgres"]
    assert compose["stop"] == ["systemctl", "stop", rc.APP_UNIT]

    # without a dump, the service is paused around the file snapshot, every replica of it
    data = copy.deepcopy(EXAMPLE_DATA)
    del data["services"]["postgres"]["backup"]
    single = _config(RUNGS["single-vm"](spec(data)), tmp_path)
    assert single["dumps"] == []
    assert single["pause"] == ["docker", "pause", "postgres-1"]
    assert single["resume"] == ["docker", "unpause", "postgres-1"]
    compose = _config(RUNGS["compose"](spec(data)), tmp_path)
    assert compose["pause"] == [rc.WRAPPER, "pause", "postgres"]


def test_a_changed_configuration_field_is_refused_by_the_node(tmp_path):
    files = dict(RUNGS["single-vm"](spec()))
    config = json.loads(files[nf.CONFIG])
    config["keep"] = 0
    files[nf.CONFIG] = json.dumps(config)
    with pytest.raises(Exit, match="keep must be a whole number from 1 to 1000"):
        _config(files, tmp_path)


@pytest.mark.parametrize("rung", sorted(RUNGS))
def test_storage_keys_and_password_only_in_root_only_secret_files(rung):
    app = spec()
    files = RUNGS[rung](app)
    secret = {
        BACKUP_PASSWORD: {nf.PASSWORD_FILE},
        BACKUP_SECRET_KEY: {nf.STORAGE_FILE},
    }
    for value, holders in secret.items():
        assert {p for p, t in files.items() if value in t} == holders
    assert files[nf.PASSWORD_FILE] == BACKUP_PASSWORD + "\n"
    assert files[nf.STORAGE_FILE] == (
        f"AWS_ACCESS_KEY_ID={STORAGE.access_key}\n"
        f"AWS_SECRET_ACCESS_KEY={BACKUP_SECRET_KEY}\n"
        f"AWS_DEFAULT_REGION={STORAGE.region}\n"
    )
    for path in (nf.PASSWORD_FILE, nf.STORAGE_FILE):
        assert svm.file_permissions(path) == "0600"
    # they travel in the secrets document only: never in the release document or user data
    render = {"single-vm": svm.release_documents, "compose": rc.release_documents}[rung]
    docs = render(app, "key", secrets_for(app), STORAGE)
    assert BACKUP_PASSWORD not in docs.release and BACKUP_SECRET_KEY not in docs.release
    sent = yaml.safe_load(docs.secrets)["files"]
    assert sent[nf.PASSWORD_FILE] == {"mode": "0600", "text": BACKUP_PASSWORD + "\n"}
    assert sent[nf.STORAGE_FILE]["mode"] == "0600"
    release = parse_release(docs.release)
    assert sorted(nf.release_units()) == sorted(
        u for u in release["units"] if u.startswith("blueprints-backup")
    )


def test_a_line_break_in_a_storage_key_is_refused():
    with pytest.raises(ValueError, match="secret key is empty or holds a line break"):
        STORAGE.env_text("abc\nAWS_ACCESS_KEY_ID=evil")
    with pytest.raises(ValueError, match="password is empty"):
        nf.secret_files(STORAGE, "", "key")


def _user_data(plan) -> list[str]:
    return [
        t
        for r in plan.resources
        if r.type in SERVER_TYPES and (t := server_user_data(r)) is not None
    ]


@pytest.mark.parametrize("stack", ["single-vm-localstack", "compose-localstack"])
def test_a_stack_with_a_bucket_backs_up_and_keeps_its_secrets_out_of_sight(stack):
    plan = plan_stack(stack, ROOT)
    assert not [n for n in plan.notes if "backup" in n and "placeholder" not in n]
    release_cmd = next(r for r in plan.resources if r.name.endswith("-release"))
    release = parse_release(release_cmd.plain_inputs()["stdin"])
    config = json.loads(release["files"][nf.CONFIG]["text"])
    rung = stack.rsplit("-", 1)[0]
    assert config["repository"] == (
        f"s3:http://localhost:4566/shop-{rung}-backups/restic/shop-{stack}"
    )
    assert {"blueprints-backup.timer", "blueprints-backup-check.timer"} <= set(release["units"])
    outputs = plan.public_outputs()
    assert outputs["backupRepository"] == config["repository"]
    # the generated password and the secret key (placeholders in a plan) reach the node only
    # in the secrets command, whose stdin is a secret
    password = f"offline-shop-{stack}-backup-password"
    secrets_cmd = next(r for r in plan.resources if r.name.endswith("-release-secrets"))
    assert password in secrets_cmd.plain_inputs()["stdin"]
    for text in [*_user_data(plan), release_cmd.plain_inputs()["stdin"]]:
        assert password not in text and "backupSecretKey" not in text
    bucket = next(r for r in plan.resources if r.type == "aws:s3/bucket:Bucket")
    assert bucket.plain_inputs()["bucket"] == f"shop-{rung}-backups" and bucket.protect


@pytest.mark.parametrize("stack", ["single-vm-hcloud", "compose-hcloud"])
def test_a_stack_without_storage_says_exactly_what_to_set(stack):
    plan = plan_stack(stack, ROOT)
    (note,) = [n for n in plan.notes if "backup" in n and "placeholder" not in n]
    assert note == (
        "the spec asks for backups but the stack has no backup storage, so nothing is backed "
        "up: create an Object Storage bucket and S3 keys in the Hetzner Cloud Console, then set "
        "blueprints:backupBucket, blueprints:backupAccessKey, blueprints:backupEndpoint (like "
        "https://fsn1.your-objectstorage.com) and the secret `pulumi config set --secret "
        "blueprints:backupSecretKey KEY`"
    )
    # with them set, the plan has backups and no such note
    configured = plan_stack(
        stack,
        ROOT,
        {
            "blueprints:backupBucket": "shop-backups",
            "blueprints:backupEndpoint": "https://fsn1.your-objectstorage.com",
            "blueprints:backupAccessKey": "AK",
        },
    )
    assert not [n for n in configured.notes if "backup storage" in n]
    assert configured.public_outputs()["backupRepository"] == (
        f"s3:https://fsn1.your-objectstorage.com/shop-backups/restic/shop-{stack}"
    )
    # Hetzner's bucket is the user's: the stack creates none
    assert not [r for r in configured.resources if "bucket" in r.type.lower()]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"blueprints:backupAccessKey": "AK with\nnewline"},
            "stacks/Pulumi.single-vm-localstack.yaml: blueprints:backupAccessKey: must be an S3 "
            "access key id: letters, digits and ._+/=- only, like AKIAIOSFODNN7EXAMPLE",
        ),
        (
            {"blueprints:backupSecretKey": "two words"},
            "stacks/Pulumi.single-vm-localstack.yaml: blueprints:backupSecretKey: contains a "
            "space or a control character, which no S3 secret key has; set it again with "
            "`pulumi config set --secret blueprints:backupSecretKey VALUE`",
        ),
    ],
)
def test_bad_storage_keys_are_one_line_before_anything_is_planned(overrides, message):
    from blueprints.plan import PlanError

    with pytest.raises(PlanError) as raised:
        plan_stack("single-vm-localstack", ROOT, overrides)
    assert str(raised.value) == message
