"""`blueprints backup | backups | restore` up to the SSH boundary: the stack's outputs read and
checked, the deploy key handed to ssh in a private file that is gone afterwards, the node's
answers shown, every refusal one line with exit status 2. A stand-in `ssh` on PATH records what
it was asked and answers as the node would; the real SSH path (a booted node, blueprints-backup,
restic) is the backup drill in tests/test_realnode_compose.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nnot-a-real-key\n-----END OPENSSH PRIVATE KEY-----\n"
SNAPSHOTS = [
    {
        "id": "a" * 64,
        "short_id": "aaaaaaaa",
        "time": "2026-11-28T03:00:04.1Z",
        "size": 2_500_000,
        "paths": ["/srv/data"],
    },
    {
        "id": "b" * 64,
        "short_id": "bbbbbbbb",
        "time": "2026-11-29T03:00:02.9Z",
        "summary": {"total_bytes_processed": 3_100_000},
        "paths": ["/srv/data"],
    },
]
# Records argv, the key file's mode and the node command, then answers per $SSH_ANSWER.
FAKE_SSH = r"""#!/usr/bin/env python3
import json, os, stat, sys
args = sys.argv[1:]
key = args[args.index("-i") + 1]
record = {"argv": args, "key_mode": oct(stat.S_IMODE(os.stat(key).st_mode)),
          "key": open(key).read(), "command": args[-1]}
with open(os.environ["SSH_CALLS"], "a") as f:
    f.write(json.dumps(record) + "\n")
answer = os.environ.get("SSH_ANSWER", "ok")
if answer == "unreachable":
    print("ssh: connect to host 203.0.113.7 port 22: Connection refused", file=sys.stderr)
    sys.exit(255)
if answer == "failed":
    print("blueprints-backup: restic backup failed: Fatal: connection reset", file=sys.stderr)
    sys.exit(1)
if "snapshots --json" in args[-1]:
    print(os.environ["SSH_SNAPSHOTS"])
elif "--plan" in args[-1]:
    print("1. restore snapshot latest into /srv/data/.blueprints-restore/x/snapshot")
    print("2. stop the app (systemctl stop app-compose.service)")
else:
    print("blueprints-backup: snapshot cccccccc: 4 files, 1.2 MB added")
"""


@pytest.fixture
def fake(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ssh").write_text(FAKE_SSH)
    (bin_dir / "ssh").chmod(0o755)
    outputs = tmp_path / "outputs.json"
    outputs.write_text(
        json.dumps(
            {
                "address": "203.0.113.7",
                "deployKey": KEY,
                "backupRepository": "s3:https://fsn1.your-objectstorage.com/b/restic/x",
            }
        )
    )
    return tmp_path


def run(
    tmp_path: Path,
    *args: str,
    answer: str = "ok",
    outputs: bool = True,
    snapshots: str = json.dumps(SNAPSHOTS),
):
    env = {
        "PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin",
        "COLUMNS": "200",
        "NO_COLOR": "1",
        "SSH_CALLS": str(tmp_path / "calls"),
        "SSH_ANSWER": answer,
        "SSH_SNAPSHOTS": snapshots,
        "TMPDIR": str(tmp_path),
    }
    extra = ["--outputs", str(tmp_path / "outputs.json")] if outputs else []
    return subprocess.run(
        [sys.executable, "-m", "blueprints.cli", *args, *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def calls(tmp_path: Path) -> list[dict]:
    path = tmp_path / "calls"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_backups_lists_time_and_size_and_keeps_the_key_private(fake):
    done = run(fake, "backups", "compose-hcloud")
    assert done.returncode == 0, done.stderr
    assert "aaaaaaaa" in done.stdout and "2026-11-28 03:00:04" in done.stdout
    assert "2.5 MB" in done.stdout and "3.1 MB" in done.stdout  # size, or restic 0.17's summary
    assert "2 snapshot(s)" in done.stdout
    (call,) = calls(fake)
    assert call["argv"][-2] == "deploy@203.0.113.7"
    assert call["command"] == (
        "sudo /usr/local/lib/blueprints/app/blueprints-backup --config "
        "/etc/blueprints/backup/config.json snapshots --json"
    )
    assert call["key"] == KEY and call["key_mode"] == "0o600"
    key_file = Path(call["argv"][call["argv"].index("-i") + 1])
    assert not key_file.exists() and not key_file.parent.exists()  # removed afterwards
    assert KEY.splitlines()[1] not in done.stdout + done.stderr
    as_json = run(fake, "backups", "compose-hcloud", "--json")
    assert [s["short_id"] for s in json.loads(as_json.stdout)] == ["aaaaaaaa", "bbbbbbbb"]


def test_backup_now_streams_the_nodes_output_and_a_failure_exits_1(fake):
    done = run(fake, "backup", "compose-hcloud")
    assert done.returncode == 0, done.stderr
    assert "snapshot cccccccc" in done.stdout
    assert calls(fake)[-1]["command"].endswith(" backup")
    failed = run(fake, "backup", "compose-hcloud", answer="failed")
    assert failed.returncode == 1
    assert (
        "restic backup failed" in failed.stderr and "failed: the backup (exit 1)" in failed.stderr
    )
    assert "Traceback" not in failed.stderr


def test_restore_prints_the_steps_and_acts_only_when_confirmed(fake):
    # no terminal to ask on and no --yes: the steps, then a refusal; nothing restored
    done = run(fake, "restore", "compose-hcloud", "--snapshot", "bbbbbbbb")
    assert done.returncode == 2
    assert "1. restore snapshot latest" in done.stdout and "2. stop the app" in done.stdout
    assert "not confirmed: pass --yes" in done.stderr
    assert [c["command"].split()[-2:] for c in calls(fake)] == [["bbbbbbbb", "--plan"]]
    done = run(fake, "restore", "compose-hcloud", "--snapshot", "bbbbbbbb", "--yes")
    assert done.returncode == 0, done.stderr
    assert calls(fake)[-1]["command"].endswith("restore-app bbbbbbbb")


def test_latest_is_pinned_to_its_id_before_the_steps_are_shown(fake):
    done = run(fake, "restore", "compose-hcloud", "--yes")
    assert done.returncode == 0, done.stderr
    assert "latest is snapshot bbbbbbbb (2026-11-29T03:00:02.9Z)" in done.stdout
    commands = [c["command"].split("config.json ")[1] for c in calls(fake)]
    assert commands == [
        "snapshots --json",
        "restore-app bbbbbbbb --plan",
        "restore-app bbbbbbbb",
    ]
    # with no snapshot at all there is nothing to restore
    empty = run(fake, "restore", "compose-hcloud", "--yes", snapshots="[]")
    assert empty.returncode == 2
    assert "error: compose-hcloud: has no snapshot to restore" in empty.stderr


@pytest.mark.parametrize(
    ("args", "answer", "message"),
    [
        (
            ("restore", "compose-hcloud", "--snapshot", "x;rm -rf /"),
            "ok",
            "error: --snapshot: 'x;rm -rf /' is not a snapshot id (hex) or latest",
        ),
        (
            ("backups", "compose-hcloud"),
            "unreachable",
            "error: cannot reach 203.0.113.7 over ssh as deploy (ssh: connect to host",
        ),
        (("backups", "nomad-gcp"), "ok", "error: unknown stack 'nomad-gcp'"),
    ],
)
def test_refusals_are_one_line_and_exit_2(fake, args, answer, message):
    done = run(fake, *args, answer=answer)
    assert done.returncode == 2
    assert done.stderr.startswith(message), done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("outputs", "message"),
    [
        ("not json", "is not JSON (expected the stack's outputs)"),
        ("[1, 2]", "is not a JSON object of the stack's outputs"),
        (
            json.dumps({"address": "203.0.113.7", "deployKey": KEY}),
            "compose-hcloud: takes no backups (no backupRepository output)",
        ),
        (
            json.dumps({"address": "203.0.113.7", "backupRepository": "s3:x"}),
            "the stack has no output deployKey",
        ),
    ],
)
def test_bad_outputs_are_named(fake, outputs, message):
    (fake / "outputs.json").write_text(outputs)
    done = run(fake, "backups", "compose-hcloud")
    assert done.returncode == 2
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert calls(fake) == []


def test_without_pulumi_or_an_outputs_file_it_says_what_to_run(fake):
    done = run(fake, "backups", "compose-hcloud", outputs=False)
    assert done.returncode == 2
    assert (
        "the pulumi CLI is not installed (not on PATH); run `pulumi stack output --json "
        "--show-secrets --stack compose-hcloud > outputs.json`" in done.stderr
    )


def test_a_snapshot_list_that_is_no_list_is_refused(fake):
    done = run(fake, "backups", "compose-hcloud", snapshots='{"not": "a list"}')
    assert done.returncode == 2
    assert "the node's snapshot list is not a JSON list of snapshots" in done.stderr
