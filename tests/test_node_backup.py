"""blueprints-backup (blueprints/backup/node_backup.py) with the real restic against a real S3
emulator: moto's server on 127.0.0.1, started and stopped here.

The script runs as shipped (node_kit inlined), as a subprocess. The app is stood in for by files:
a volume of plain files backed up as files (its service paused around the snapshot), and a
"database" whose dump and restore commands are `cat` both ways (its volume is left out of the
file backup: the dump is its copy). Data is written, backed up, damaged, restored and compared
byte for byte.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from emulators import MotoServer, free_port

from blueprints.backup import backup_source

PYTHON = os.environ.get("NODE_READY_PYTHON", sys.executable)
PASSWORD = "repo-Pa55word-7f3a"
ACCESS_KEY = "AKIDBACKUPTEST"
SECRET_KEY = "s3-Secret-Key-4b1d"


@pytest.fixture(scope="module")
def script(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("shipped") / "blueprints-backup"
    path.write_text(backup_source())
    return path


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """One initialized repository (restic's key derivation takes seconds), copied per test."""
    repo = tmp_path_factory.mktemp("template") / "repo"
    env = {**os.environ, "RESTIC_PASSWORD": PASSWORD}
    subprocess.run(
        ["restic", "--no-cache", "-r", str(repo), "init"], env=env, check=True, capture_output=True
    )
    return repo


class Node:
    """A node's files in tmp_path, its backup configuration, and the bucket."""

    def __init__(self, tmp_path: Path, script: Path, s3: MotoServer, bucket: str):
        self.root = tmp_path
        self.script = script
        self.data = tmp_path / "srv/data"
        self.log = tmp_path / "pause.log"
        self.bucket = bucket
        self.client = boto3.client(
            "s3",
            endpoint_url=s3.url,
            region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        )
        self.client.create_bucket(Bucket=bucket)
        secrets = tmp_path / "etc"
        secrets.mkdir()
        (secrets / "password").write_text(PASSWORD + "\n")
        (secrets / "env").write_text(
            f"AWS_ACCESS_KEY_ID={ACCESS_KEY}\nAWS_SECRET_ACCESS_KEY={SECRET_KEY}\n"
        )
        self.config = {
            "name": "shop-compose-hcloud",
            "repository": f"s3:{s3.url}/{bucket}/restic",
            "password_file": str(secrets / "password"),
            "env_file": str(secrets / "env"),
            "paths": [str(self.data)],
            "exclude": [str(self.data / "lost+found")],
            "staging": str(self.data / ".blueprints/dumps"),
            "dumps": [
                {
                    "service": "postgres",
                    # The stand-in for `docker exec -i <container>`: the command runs here.
                    "exec": ["env"],
                    "dump": ["cat", str(self.data / "pgdata/db")],
                    "restore": ["sh", "-c", f"cat > {self.data / 'pgdata/db'}"],
                    "volumes": [str(self.data / "pgdata")],
                }
            ],
            "pause": ["sh", "-c", f"echo pause >> {self.log}"],
            "resume": ["sh", "-c", f"echo resume >> {self.log}"],
            "keep": 3,
            "cache_dir": str(tmp_path / "cache"),
            "timeout": 120,
        }
        self.write_config()

    def write_config(self) -> None:
        (self.root / "config.json").write_text(json.dumps(self.config))

    def seed(self, template: Path) -> None:
        """Upload an initialized repository into the bucket (as restic lays it out on S3)."""
        for path in template.rglob("*"):
            if path.is_file():
                key = f"restic/{path.relative_to(template).as_posix()}"
                self.client.put_object(Bucket=self.bucket, Key=key, Body=path.read_bytes())

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [PYTHON, str(self.script), "--config", str(self.root / "config.json"), *args],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    def snapshots(self) -> list[dict]:
        done = self.run("snapshots", "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


def assert_no_secret(done: subprocess.CompletedProcess) -> None:
    """Neither the repository password nor the storage keys ever reach the output."""
    for secret in (PASSWORD, SECRET_KEY, ACCESS_KEY):
        assert secret not in done.stdout + done.stderr


def write_app_data(data: Path, version: int = 1) -> dict[str, bytes]:
    """Files of the plain volume and the database's content; returns relative path -> bytes."""
    files = {
        "uploads/report one.pdf": os.urandom(200_000),
        "uploads/nested/deep/notes.txt": f"version {version}\n".encode(),
        "uploads/empty": b"",
        "pgdata/db": f"-- database v{version}\nINSERT INTO orders VALUES (1, 'é✓');\n".encode(),
    }
    for rel, body in files.items():
        path = data / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
    (data / "lost+found").mkdir(exist_ok=True)
    return files


@pytest.fixture
def node(tmp_path, script, s3, template, request) -> Node:
    bucket = "bk-" + request.node.name.lower().replace("_", "-")[:40].strip("-")
    n = Node(tmp_path, script, s3, bucket)
    n.seed(template)
    return n


def test_backup_damage_restore_gives_the_same_bytes(tmp_path, script, s3):
    # an empty bucket: the first backup creates the repository
    node = Node(tmp_path, script, s3, "bk-round-trip")
    original = write_app_data(node.data)
    done = node.run("backup")
    assert done.returncode == 0, done.stderr
    assert "created the repository at" in done.stdout
    assert_no_secret(done)
    line = done.stdout.strip().splitlines()[-1]
    assert line.startswith("blueprints-backup: snapshot ")
    assert "postgres dumped" in line and "services paused for" in line
    assert node.log.read_text() == "pause\nresume\n"  # paused once, around the snapshot only

    # damage: a file deleted, one changed, the database overwritten
    (node.data / "uploads/report one.pdf").unlink()
    (node.data / "uploads/nested/deep/notes.txt").write_text("corrupted")
    (node.data / "pgdata/db").write_text("DROP TABLE orders;")

    # a restore never writes over data, and takes only a snapshot id
    done = node.run("restore", "latest", str(node.data))
    assert done.returncode == 1
    assert "exists and is not empty; a restore never writes over data" in done.stderr
    done = node.run("restore", "'; rm -rf /", str(node.root / "x"))
    assert done.returncode == 2 and "is not a snapshot id" in done.stderr

    target = node.root / "restored"
    done = node.run("restore", "latest", str(target))
    assert done.returncode == 0, done.stderr
    restored = target / str(node.data).lstrip("/")
    for rel, body in original.items():
        if rel.startswith("pgdata/"):
            # the database's volume is not in the snapshot: its dump is
            assert not (restored / rel).exists()
        else:
            assert (restored / rel).read_bytes() == body, rel
    assert not (restored / "lost+found").exists()
    dump = restored / ".blueprints/dumps/postgres.dump"
    assert dump.read_bytes() == original["pgdata/db"]

    done = node.run("load-dumps", str(target))
    assert done.returncode == 0, done.stderr
    assert (node.data / "pgdata/db").read_bytes() == original["pgdata/db"]
    assert "loaded the dump of postgres" in done.stdout
    assert_no_secret(done)


def test_retention_keeps_the_newest_keep_and_check_reads_them(node: Node):
    node.config["keep"] = 1
    node.write_config()
    ids = []
    for version in range(node.config["keep"] + 2):
        write_app_data(node.data, version)
        done = node.run("backup")
        assert done.returncode == 0, done.stderr
        ids.append(done.stdout.split("snapshot ", 1)[1].split(":", 1)[0])
    kept = node.snapshots()
    assert [s["short_id"] for s in kept] == ids[-node.config["keep"] :]
    assert all(s["hostname"] == "shop-compose-hcloud" and "blueprints" in s["tags"] for s in kept)

    # the weekly check: the repository's structure and data, and the newest dumps restored
    done = node.run("check")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith(
        "repository checked (10% of the data read), 1 dump(s) restored and present"
    )
    # a service whose dump the newest snapshot lacks fails the check
    node.config["dumps"][0]["service"] = "mysql"
    node.write_config()
    done = node.run("check")
    assert done.returncode == 1
    assert "the newest snapshot holds no usable dump of mysql" in done.stderr


def test_a_wrong_password_fails_and_leaves_the_snapshots(node: Node):
    write_app_data(node.data)
    assert node.run("backup").returncode == 0
    before = node.snapshots()
    Path(node.config["password_file"]).write_text("not-the-password\n")
    done = node.run("backup")
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"blueprints-backup: the repository at {node.config['repository']} does not open with "
        "this password (wrong password or no key found); nothing was changed, its snapshots "
        "are untouched"
    )
    assert not node.log.read_text().count("pause") > 1  # never paused for the failed run
    assert_no_secret(done)
    Path(node.config["password_file"]).write_text(PASSWORD + "\n")
    assert node.snapshots() == before


def test_unreachable_storage_fails_visibly_and_changes_nothing(node: Node):
    write_app_data(node.data)
    node.config["repository"] = f"s3:http://127.0.0.1:{free_port()}/{node.bucket}/restic"
    node.write_config()
    done = node.run("backup")
    assert done.returncode == 1
    assert done.stderr.startswith(
        f"blueprints-backup: cannot reach the repository at {node.config['repository']}: "
    )
    assert "connection refused" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not node.log.exists()  # nothing paused
    assert not (node.data / ".blueprints").exists()  # no dump taken


def test_a_failed_dump_takes_no_snapshot(node: Node):
    write_app_data(node.data)
    node.config["dumps"][0]["dump"] = ["sh", "-c", "echo 'pg_dump: connection refused' >&2; exit 3"]
    node.write_config()
    done = node.run("backup")
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "blueprints-backup: the dump of postgres failed (exit 3): pg_dump: connection refused; "
        "no snapshot was taken"
    )
    assert node.snapshots() == []
    assert list((node.data / ".blueprints/dumps").iterdir()) == []  # no partial dump left
    assert not node.log.exists()


def test_an_empty_dump_takes_no_snapshot(node: Node):
    write_app_data(node.data)
    node.config["dumps"][0]["dump"] = ["true"]
    node.write_config()
    done = node.run("backup")
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "blueprints-backup: the dump of postgres is empty (its command wrote nothing); no "
        "snapshot was taken"
    )
    assert node.snapshots() == []


def test_services_are_resumed_when_restic_fails(node: Node):
    write_app_data(node.data)
    # restic itself, except that its backup dies (the storage going away mid-upload, say)
    wrapper = node.root / "restic-failing-backup"
    wrapper.write_text(
        "#!/bin/sh\n"
        'for a in "$@"; do [ "$a" = backup ] || continue\n'
        '  echo "Fatal: connection reset" >&2; exit 1\n'
        "done\n"
        'exec restic "$@"\n'
    )
    wrapper.chmod(0o755)
    node.config["restic"] = [str(wrapper)]
    node.write_config()
    done = node.run("backup")
    assert done.returncode == 1
    assert done.stderr.strip() == "blueprints-backup: restic backup failed: Fatal: connection reset"
    assert node.log.read_text() == "pause\nresume\n"
    assert node.snapshots() == []


def test_a_missing_volume_is_no_backup(node: Node):
    write_app_data(node.data)
    node.config["paths"].append(str(node.root / "srv/other-volume"))
    node.write_config()
    done = node.run("backup")
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"blueprints-backup: {node.root / 'srv/other-volume'} is missing (is the data volume "
        "mounted?); nothing was backed up"
    )
    assert node.snapshots() == [] and not node.log.exists()


@pytest.mark.parametrize(
    ("args", "config", "message"),
    [
        ((), {}, "usage: blueprints-backup"),
        (("backup", "extra"), {}, "usage: blueprints-backup"),
        (("backup",), {"keep": 0}, "keep must be a whole number from 1 to 1000"),
        (("backup",), {"staging": "/elsewhere"}, "staging must lie inside one of paths"),
        (("backup",), {"resume": None}, "pause and resume are set together or not at all"),
        (("backup",), {"dumps": [{"service": "x"}]}, "dumps must be a list of objects"),
    ],
)
def test_bad_usage_or_configuration_is_one_line_exit_2(node: Node, args, config, message):
    node.config.update(config)
    node.write_config()
    done = node.run(*args)
    assert done.returncode == 2
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert "Traceback" not in done.stderr


def test_restore_app_stops_swaps_starts_and_loads_in_that_order(node: Node):
    original = write_app_data(node.data)
    events = node.root / "events.log"
    node.config.update(
        {
            "scratch": str(node.data / ".restore"),
            "exclude": [str(node.data / "lost+found"), str(node.data / ".restore")],
            "volumes": [str(node.data / "pgdata"), str(node.data / "uploads")],
            "stop": ["sh", "-c", f"echo stop >> {events}"],
            "start": ["sh", "-c", f"echo start >> {events}"],
        }
    )
    # the load logs itself, so the order of stop, start and load is visible
    node.config["dumps"][0]["restore"] = [
        "sh",
        "-c",
        f"echo load >> {events}; cat > {node.data / 'pgdata/db'}",
    ]
    node.write_config()
    assert node.run("backup").returncode == 0
    snapshot = node.snapshots()[-1]
    assert snapshot["size"] and snapshot["size"] > 200_000  # listed with its size

    (node.data / "uploads/report one.pdf").unlink()
    (node.data / "uploads/new since").write_text("written after the backup")
    (node.data / "pgdata/db").write_text("DROP TABLE orders;")

    # --plan: the steps, and nothing done
    done = node.run("restore-app", snapshot["short_id"], "--plan")
    assert done.returncode == 0, done.stderr
    steps = done.stdout.strip().splitlines()
    assert steps[0].startswith(f"1. restore snapshot {snapshot['short_id']} into ")
    assert steps[1].startswith("2. stop the app")
    assert "an empty directory (its service's dump is loaded later)" in steps[2]
    assert "the snapshot's copy" in steps[3]
    assert steps[4].startswith("5. start the app") and steps[5].startswith("6. load the dump")
    assert not events.exists() and not (node.data / ".restore").exists()

    done = node.run("restore-app", snapshot["short_id"])
    assert done.returncode == 0, done.stderr
    assert events.read_text() == "stop\nstart\nload\n"
    for rel, body in original.items():
        assert (node.data / rel).read_bytes() == body, rel
    assert not (node.data / "uploads/new since").exists()
    # what was there before is kept, not deleted
    (before,) = (node.data / ".restore").glob("*/before")
    assert (before / "uploads/new since").read_text() == "written after the backup"
    assert (before / "pgdata/db").read_text() == "DROP TABLE orders;"
    assert "of app downtime; the data as it was before is in" in done.stdout
    assert_no_secret(done)


def test_restore_app_touches_nothing_when_the_snapshot_lacks_a_volume(node: Node):
    write_app_data(node.data)
    events = node.root / "events.log"
    node.config.update(
        {
            "scratch": str(node.data / ".restore"),
            "exclude": [str(node.data / ".restore")],
            "volumes": [str(node.data / "uploads"), str(node.data / "media")],
            "stop": ["sh", "-c", f"echo stop >> {events}"],
            "start": ["sh", "-c", f"echo start >> {events}"],
        }
    )
    node.write_config()
    assert node.run("backup").returncode == 0
    done = node.run("restore-app", "latest")
    assert done.returncode == 1
    assert f"holds no {node.data / 'media'}; nothing was stopped or moved" in done.stderr
    assert not events.exists()
    assert (node.data / "uploads/empty").exists()


def test_restore_app_refuses_where_the_node_does_not_run_the_app(node: Node):
    done = node.run("restore-app", "latest")
    assert done.returncode == 2
    assert "restore-app needs scratch, stop, start in the configuration" in done.stderr


def test_no_backup_runs_while_a_restore_holds_the_lock(node: Node):
    import fcntl

    write_app_data(node.data)
    cache = Path(node.config["cache_dir"])
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / "lock", "a") as held:  # what restore-app holds from start to end
        fcntl.flock(held, fcntl.LOCK_EX)
        done = node.run("backup")
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "blueprints-backup: another run holds the backup lock (a restore in progress?); this "
        "backup did nothing"
    )
    assert node.snapshots() == [] and not node.log.exists()
    assert node.run("backup").returncode == 0  # released: the next run goes ahead


def test_a_service_between_stop_and_start_is_waited_for_not_a_failed_backup(node: Node):
    """`compose pause` fails while a container restarts (a health-driven restart): the tool
    resumes, waits and pauses again, instead of failing the backup."""
    write_app_data(node.data)
    marker = node.root / "restarting"
    marker.write_text("")
    node.config["pause"] = [
        "sh",
        "-c",
        f"if [ -e {marker} ]; then rm {marker}; echo 'container x is not running' >&2; exit 1; "
        f"fi; echo pause >> {node.log}",
    ]
    node.write_config()
    done = node.run("backup")
    assert done.returncode == 0, done.stderr
    assert node.log.read_text() == "resume\npause\nresume\n"
    assert "services paused for" in done.stdout
