"""`blueprints backup | backups | restore` on a nomad stack (rungs/nomad/backup_access.py).

Nomad cannot run here, so the command lines are run for real with `sh -c` (as SSH would hand
them to the node's shell) against stand-ins on PATH: `sudo` (runs its arguments), `nomad`
(answers as Nomad 1.10's CLI does for the few commands used, from a JSON state, and records each
call: its arguments, the token and address in its environment, whether it had a terminal stdin)
and the `docker` of test_backup_nomad (containers named as Nomad's docker driver names them,
stopped and started with their jobs). blueprints-backup, restic and the S3 bucket (moto) are
real. The node's /srv/data and restic cache are directories under tmp_path: the command lines
are the generated ones with those two paths moved, nothing else changed.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import boto3
import pytest
import validators
from emulators import MotoServer
from test_backup_nomad import FAKE_DOCKER, PYTHON, UUIDS, spec, with_files_service

from blueprints.backup import backup_source, node_files
from blueprints.backup.remote import Access, RemoteError, Session
from blueprints.rungs.nomad import backup_access as ba
from blueprints.rungs.nomad.component import Nomad

TOKEN = "3f1c9a2e-7b4d-4e6f-9a01-token-secret"
PASSWORD = "repo-Pa55word-5e1d"
ACCESS_KEY = "AKIDNOMADACCESS"
SECRET_KEY = "s3-Secret-Key-93ab"
NAME = "shop-nomad-test"
CHILD = "shop-backup/periodic-1760000000"
EVAL = "8d4e7a10-2f3b-4c5d-9e6f-0a1b2c3d4e5f"
ALLOC = "a1b2c3d4-0000-4111-8222-933344445555"
FAST = ba.Timing(poll=0, progress=0, place=5, run=5, stop=5)

FAKE_NOMAD = textwrap.dedent(
    '''\
    #!/usr/bin/env python3
    """nomad, as far as backup_access uses it, over a JSON state file."""
    import json, os, sys

    state_file = os.environ["FAKE_NOMAD_STATE"]
    state = json.load(open(state_file))
    args = sys.argv[1:]
    record = {
        "argv": args,
        "token": os.environ.get("NOMAD_TOKEN"),
        "addr": os.environ.get("NOMAD_ADDR"),
        "cacert": os.environ.get("NOMAD_CACERT"),
    }
    # what a job's start or stop finds in the volumes (the order of stop, swap, start)
    watch = state.get("watch")
    if watch and args[:2] in (["job", "stop"], ["job", "revert"]):
        path = os.path.join(watch, "marker")
        record["marker"] = open(path).read() if os.path.exists(path) else None
    with open(os.environ["FAKE_NOMAD_LOG"], "a") as f:
        f.write(json.dumps(record) + "\\n")


    def save():
        json.dump(state, open(state_file, "w"))


    def containers(job, status):
        docker = os.environ.get("FAKE_DOCKER_STATE")
        service = job.split("-", 1)[1]
        if not docker:
            return
        cs = json.load(open(docker))
        for c in cs.values():
            if c["name"].rsplit("-", 5)[0] == service:
                c["status"] = status
        json.dump(cs, open(docker, "w"))


    def flag(name):
        return [a.split("=", 1)[1] for a in args if a.startswith("-" + name + "=")]


    words = [a for a in args if not a.startswith("-")]
    if words[:2] == ["var", "get"]:
        [item] = flag("item")
        items = state["vars"].get(words[2])
        if items is None:
            sys.exit("Error retrieving variable: variable not found")
        sys.stdout.write(items[item])
    elif words[:3] == ["job", "periodic", "force"]:
        assert "-detach" in args, args
        if words[3] not in state["jobs"]:
            sys.exit(f'No periodic job(s) with prefix or ID "{words[3]}" found')
        print("Force periodic successful")
        print("Evaluation ID: " + state["eval"])
    elif words[:2] == ["eval", "status"]:
        assert args[2:4] == ["-t", "{{.JobID}}"], args
        print(state["child"])
    elif words[:2] == ["job", "allocs"]:
        assert args[2] == "-t" and args[3] == os.environ["ALLOCS_TEMPLATE"], args
        job = args[4]
        if job == state["child"]:
            runs = state["runs"]
            status = runs.pop(0) if len(runs) > 1 else runs[0]
            save()
            if status:
                print(state["alloc"] + " " + status)
        else:
            j = state["jobs"][job]
            if j["stop"]:
                # one look still finds it shutting down
                print("0000 " + ("running" if j.pop("stopping", False) else "complete"))
                save()
            else:
                print("0000 running")
    elif words[:2] == ["alloc", "logs"]:
        if "-stderr" in args:
            sys.stdout.write(state["logs"]["stderr"])
        else:
            sys.stdout.write(state["logs"]["stdout"])
    elif words[:2] == ["job", "inspect"]:
        assert args[2:4] == ["-t", "{{.ID}} {{.Stop}} {{.Version}}"], args
        # prefix matching, as Nomad's CLI does
        found = sorted(j for j in state["jobs"] if j.startswith(args[4]))
        if not found:
            sys.exit(f'No job(s) with prefix or ID "{args[4]}" found')
        j = state["jobs"][found[0]]
        print(f"{found[0]} {str(j['stop']).lower()} {j['version']}")
    elif words[:2] == ["job", "stop"]:
        assert "-yes" in args, args
        job = words[2]
        if job in state.get("fail_stop", []):
            sys.exit(f"Error deregistering job with id {job} err: Unexpected response code: 500")
        j = state["jobs"][job]
        j["stop"], j["version"], j["stopping"] = True, j["version"] + 1, True
        save()
        containers(job, "exited")
        print(f'==> Monitoring evaluation "{job[:8]}"')
    elif words[:2] == ["job", "revert"]:
        job, version = words[2], int(words[3])
        j = state["jobs"][job]
        assert version == j["version"] - 1, (job, version, j)
        j["stop"], j["version"] = False, j["version"] + 1
        save()
        containers(job, "running")
        print(f'==> Monitoring evaluation "{job[:8]}"')
    else:
        sys.exit("fake nomad: " + " ".join(args) + " is not emulated")
    '''
)


class World:
    """The data node: fake sudo, nomad and docker on PATH, the data volume, a TMPDIR."""

    def __init__(self, tmp_path: Path, jobs: list[str], storage_env: str = ""):
        self.root = tmp_path
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        for name, text in (
            ("sudo", '#!/bin/sh\necho "$*" >>"$FAKE_SUDO_LOG"\nexec "$@"\n'),
            ("nomad", FAKE_NOMAD),
            ("docker", FAKE_DOCKER),
        ):
            (self.bin / name).write_text(text)
            (self.bin / name).chmod(0o755)
        (self.bin / "python3").symlink_to(PYTHON)
        self.data = tmp_path / "srv/data"
        self.data.mkdir(parents=True)
        self.tmpdir = tmp_path / "tmp"
        self.tmpdir.mkdir()
        self.state_file = tmp_path / "nomad.json"
        self.log = tmp_path / "nomad.log"
        self.sudo_log = tmp_path / "sudo.log"
        self.docker_state = tmp_path / "containers.json"
        self.docker_log = tmp_path / "docker.log"
        self.docker_log.write_text("")
        self.state: dict[str, Any] = {
            "jobs": {j: {"stop": False, "version": 3} for j in jobs},
            "vars": {
                "nomad/jobs/shop-backup": {
                    "password": PASSWORD,
                    "storage": (
                        storage_env
                        or f"AWS_ACCESS_KEY_ID={ACCESS_KEY}\nAWS_SECRET_ACCESS_KEY={SECRET_KEY}\n"
                    ),
                }
            },
            "eval": EVAL,
            "child": CHILD,
            "alloc": ALLOC,
            "runs": ["complete"],
            "logs": {"stdout": "", "stderr": ""},
        }
        self.save()
        self.containers: dict[str, dict[str, str]] = {}
        self.save_containers()

    def save(self) -> None:
        self.state_file.write_text(json.dumps(self.state))

    def save_containers(self) -> None:
        self.docker_state.write_text(json.dumps(self.containers))

    def add_container(self, cid: str, name: str) -> Path:
        root = self.root / "containers" / cid
        root.mkdir(parents=True)
        self.containers[cid] = {"name": name, "status": "running", "root": str(root)}
        self.save_containers()
        return root

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "PATH": f"{self.bin}:{os.environ['PATH']}",
            "TMPDIR": str(self.tmpdir),
            "FAKE_NOMAD_STATE": str(self.state_file),
            "FAKE_NOMAD_LOG": str(self.log),
            "FAKE_SUDO_LOG": str(self.sudo_log),
            "FAKE_DOCKER_STATE": str(self.docker_state),
            "FAKE_DOCKER_LOG": str(self.docker_log),
            "ALLOCS_TEMPLATE": ba.ALLOCS_TEMPLATE,
        }

    def on_node(self, command: str) -> str:
        """The command line as it runs here: the node's data volume and cache moved."""
        return command.replace("/srv/data", str(self.data)).replace(
            node_files.CACHE_DIR, str(self.root / "cache")
        )

    def run(self, command: str, stdin: str | None) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["sh", "-c", self.on_node(command)],
            input=stdin if stdin is not None else "",
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    def calls(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def verbs(self) -> list[str]:
        """`stop JOB` / `revert JOB` of each job stop and revert, in order."""
        out = []
        for call in self.calls():
            words = [a for a in call["argv"] if not a.startswith("-")]
            if words[:2] in (["job", "stop"], ["job", "revert"]):
                out.append(f"{words[1]} {words[2]}")
        return out


def outputs(repository: str = f"s3:https://fsn1.example.com/b/restic/{NAME}") -> dict[str, object]:
    return {
        "serverIps": {"node-1": "203.0.113.10", "node-2": "203.0.113.11", "node-3": "x"},
        "dataNode": "node-1",
        "deployKey": "-----BEGIN OPENSSH PRIVATE KEY-----\nkey\n",
        "nomadToken": TOKEN,
        "nomadAddress": "https://203.0.113.10:4646",
        "backupRepository": repository,
        "backupPassword": PASSWORD,
    }


def assert_token_only_in_env(world: World, access: Access, *commands: str) -> None:
    for command in commands:
        assert TOKEN not in command
    calls = world.calls()
    assert calls, "nomad was never called"
    for call in calls:
        assert TOKEN not in " ".join(call["argv"])
        assert call["token"] == TOKEN
        assert call["addr"] == "https://127.0.0.1:4646"
        assert call["cacert"] == "/etc/nomad.d/tls/ca.pem"
    assert TOKEN not in world.sudo_log.read_text()
    assert access.stdin is not None and access.stdin.startswith(TOKEN + "\n")


# --- what reaches the node ---------------------------------------------------------------------


def test_the_access_is_the_data_node_with_the_deploy_key_and_the_token_on_stdin():
    app = spec()
    access = Nomad.backup_access(app, outputs())
    assert access.host == "203.0.113.10"
    assert access.key == outputs()["deployKey"]
    assert access.stdin == f"{TOKEN}\n{backup_source()}"
    for command in (access.now, access.snapshots, access.restore_plan("latest")):
        assert command.startswith("sudo sh -c '")
        assert TOKEN not in command and PASSWORD not in command


@pytest.mark.parametrize(
    ("drop", "message"),
    [
        ("serverIps", "the stack has no output serverIps with the data node node-1"),
        ("deployKey", "the stack has no output deployKey"),
        ("nomadToken", "the stack has no output nomadToken"),
        ("backupRepository", "the stack has no output backupRepository"),
    ],
)
def test_a_missing_output_is_one_sentence(drop, message):
    given = outputs()
    del given[drop]
    with pytest.raises(RemoteError) as caught:
        Nomad.backup_access(spec(), given)
    text = str(caught.value)
    assert text.startswith(message) and "\n" not in text and text.count(". ") == 0


def test_a_repository_not_of_this_shape_is_refused():
    with pytest.raises(RemoteError, match="is not an s3: repository ending in"):
        Nomad.backup_access(spec(), outputs("/local/path/Bad Name"))


def test_the_session_hands_stdin_to_ssh(tmp_path):
    """remote.Session: a command with stdin gets it (text); one without gets /dev/null."""
    ssh = tmp_path / "ssh"
    ssh.write_text('#!/bin/sh\nfor last; do :; done\nexec sh -c "$last"\n')
    ssh.chmod(0o755)
    base = Access(host="h", key="k", now="cat", snapshots="cat", restore_plan=str, restore=str)
    with Session(base, ssh=str(ssh)) as session:
        assert session.run("cat", capture=True).stdout == ""
    with Session(Access(**{**base.__dict__, "stdin": "line one\nrest"}), ssh=str(ssh)) as s:
        assert s.run("cat", capture=True).stdout == "line one\nrest"


@pytest.mark.parametrize("which", ["now", "snapshots", "restore", "helper"])
def test_the_generated_scripts_pass_shellcheck(tmp_path, which):
    app = spec(with_files_service)
    config = ba.restore_config(app, outputs()["backupRepository"], NAME)
    script = {
        "now": lambda: ba.now_script(app, ba.Timing()),
        "snapshots": lambda: ba.tool_script(app, config, "x", ["snapshots", "--json"]),
        "restore": lambda: ba.tool_script(app, config, "x", ["restore-app", "4f2a9c1e"]),
        "helper": lambda: ba.jobs_helper(ba.Timing()),
    }[which]()
    path = tmp_path / f"{which}.sh"
    path.write_text(script if script.startswith("#!") else "#!/bin/sh\n" + script)
    validators.shellcheck(path, "sh")


def test_a_restore_stops_every_app_job_but_the_ingress_and_starts_them_back():
    app = spec(with_files_service)
    assert ba.stopped_jobs(app) == [
        "shop-backup",
        "shop-backup-check",
        # dependents first
        "shop-worker",
        "shop-web",
        "shop-redis",
        "shop-postgres",
        "shop-files",
    ]
    config = json.loads(ba.restore_config(app, "s3:x/restic/shop-s", "shop-s"))
    assert config["stop"] == ["blueprints-nomad-jobs", "stop", *ba.stopped_jobs(app)]
    assert config["start"] == [
        "blueprints-nomad-jobs",
        "start",
        *reversed(ba.stopped_jobs(app)),
    ]
    assert config["scratch"] == node_files.SCRATCH
    assert config["password_file"] == f"{ba.DIR}/backup-password"
    assert config["env_file"] == f"{ba.DIR}/backup-storage.env"
    assert config["name"] == "shop-s" and config["repository"] == "s3:x/restic/shop-s"


# --- backup now ---------------------------------------------------------------------------------


def _now(tmp_path: Path, runs: list[str], timing: ba.Timing = FAST):
    world = World(tmp_path, ["shop-backup"])
    world.state["runs"] = runs
    world.state["logs"] = {
        "stdout": "blueprints-backup: snapshot 4f2a9c1e: 12 files\n",
        "stderr": "blueprints-backup: the dump of postgres failed (exit 1): boom\n",
    }
    world.save()
    access = ba.backup_access(spec(), outputs(), timing)
    return world, access, world.run(access.now, access.stdin)


def test_backup_now_forces_a_run_follows_it_and_prints_its_logs(tmp_path):
    world, access, done = _now(tmp_path, ["", "pending", "running", "running", "complete"])
    assert done.returncode == 0, done.stderr
    assert done.stdout == "blueprints-backup: snapshot 4f2a9c1e: 12 files\n"
    assert f"blueprints: backing up: {CHILD} (on the data node)" in done.stderr
    assert f"{CHILD}: not placed yet" in done.stderr
    assert f"{CHILD}: pending" in done.stderr and f"{CHILD}: running" in done.stderr
    assert done.stderr.rstrip().endswith(f"blueprints: {CHILD} complete")
    argvs = [c["argv"] for c in world.calls()]
    assert argvs[0] == ["job", "periodic", "force", "-detach", "shop-backup"]
    assert argvs[1] == ["eval", "status", "-t", "{{.JobID}}", EVAL]
    assert ["alloc", "logs", "-stdout", ALLOC, "backup"] in argvs
    assert ["alloc", "logs", "-stderr", ALLOC, "backup"] in argvs
    assert_token_only_in_env(world, access, access.now)


def test_backup_now_fails_when_the_run_fails(tmp_path):
    _, _, done = _now(tmp_path, ["running", "failed"])
    assert done.returncode == 1
    assert "the dump of postgres failed (exit 1): boom" in done.stderr
    assert f"blueprints: the backup run {CHILD} failed: its logs are above" in done.stderr
    assert f"nomad alloc status {ALLOC}" in done.stderr


def test_backup_now_gives_up_on_a_run_never_placed(tmp_path):
    timing = ba.Timing(poll=1, progress=30, place=1, run=60, stop=5)
    _, _, done = _now(tmp_path, [""], timing)
    assert done.returncode == 1
    assert f"{CHILD} was not placed on the data node within 1 s" in done.stderr


def test_backup_now_stops_following_a_run_past_its_time_limit(tmp_path):
    timing = ba.Timing(poll=1, progress=30, place=60, run=1, stop=5)
    _, _, done = _now(tmp_path, ["running"], timing)
    assert done.returncode == 1
    assert f"{CHILD} is still running after 1 s; it goes on" in done.stderr


def test_backup_now_without_the_job_says_so(tmp_path):
    world = World(tmp_path, [])
    access = ba.backup_access(spec(), outputs(), FAST)
    done = world.run(access.now, access.stdin)
    assert done.returncode == 1
    assert "could not start a run of shop-backup (is it registered?" in done.stderr


def test_no_token_on_stdin_does_nothing(tmp_path):
    world = World(tmp_path, ["shop-backup"])
    access = ba.backup_access(spec(), outputs(), FAST)
    for command in (access.now, access.snapshots):
        done = world.run(command, "")
        assert done.returncode == 2 and "no Nomad token on standard input" in done.stderr
    assert world.calls() == []


# --- snapshots and restore, with blueprints-backup, restic and S3 for real ----------------------


class Stack:
    """A world whose app has one dumped service (postgres) and one backed up as files, with a
    bucket and one snapshot taken by the backup job's own configuration."""

    def __init__(self, tmp_path: Path, s3: MotoServer, bucket: str):
        def change(data: dict) -> None:
            with_files_service(data)
            data["services"]["postgres"]["backup"] = {
                "dump": ["cat", "db"],
                "restore": ["sh", "-c", "cat > db && echo load >> ../../events.log"],
            }

        self.app = spec(change)
        boto3.client(
            "s3",
            endpoint_url=s3.url,
            region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        ).create_bucket(Bucket=bucket)
        self.outputs = outputs(f"s3:{s3.url}/{bucket}/restic/{NAME}")
        self.world = World(
            tmp_path,
            ["shop-backup", "shop-backup-check", *(f"shop-{s}" for s in self.app.services)],
        )
        self.events = tmp_path / "events.log"
        self.pg = self.world.add_container("c1", f"postgres-{UUIDS[0]}")
        self.world.add_container("c6", f"files-{UUIDS[4]}")
        (self.pg / "db").write_text("-- the database v1\n")
        uploads = self.world.data / "uploads"
        uploads.mkdir()
        (uploads / "marker").write_text("v1")
        (self.world.data / "pgdata").mkdir()
        self.world.state["watch"] = str(uploads)
        self.world.save()
        self.access = ba.backup_access(self.app, self.outputs, FAST)

    def backup(self) -> None:
        """A backup, as the job's task would take it: blueprints-backup with the same
        configuration (the temporary directory's, secrets from the same Variable)."""
        config = json.loads(
            self.world.on_node(ba.restore_config(self.app, self.outputs["backupRepository"], NAME))
        )
        secrets = self.world.root / "job-secrets"
        secrets.mkdir(exist_ok=True)
        (secrets / "backup-password").write_text(PASSWORD + "\n")
        (secrets / "backup-storage.env").write_text(
            self.world.state["vars"]["nomad/jobs/shop-backup"]["storage"]
        )
        config["password_file"] = str(secrets / "backup-password")
        config["env_file"] = str(secrets / "backup-storage.env")
        (secrets / "config.json").write_text(json.dumps(config))
        script = secrets / "blueprints-backup"
        script.write_text(backup_source())
        done = subprocess.run(
            [PYTHON, str(script), "--config", str(secrets / "config.json"), "backup"],
            env=self.world.env(),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stderr

    def run(self, command: str) -> subprocess.CompletedProcess:
        return self.world.run(command, self.access.stdin)


@pytest.fixture
def stack(tmp_path, s3, request) -> Stack:
    bucket = "na-" + request.node.name.lower().replace("_", "-")[:40].strip("-")
    return Stack(tmp_path, s3, bucket)


def assert_no_secret(done: subprocess.CompletedProcess) -> None:
    for secret in (TOKEN, PASSWORD, SECRET_KEY):
        assert secret not in done.stdout + done.stderr


def test_backups_lists_the_snapshots_as_json(stack: Stack):
    stack.backup()
    done = stack.run(stack.access.snapshots)
    assert done.returncode == 0, done.stderr
    [row] = json.loads(done.stdout)
    assert row["hostname"] == NAME and row["size"] > 0
    assert_no_secret(done)
    # the Variable read on the node, nothing stopped, the temporary directory gone
    argvs = [c["argv"] for c in stack.world.calls()]
    assert argvs == [
        ["var", "get", "-item=password", "nomad/jobs/shop-backup"],
        ["var", "get", "-item=storage", "nomad/jobs/shop-backup"],
    ]
    assert list(stack.world.tmpdir.iterdir()) == []
    assert_token_only_in_env(stack.world, stack.access, stack.access.snapshots)


def test_restore_stops_swaps_starts_and_loads_in_that_order(stack: Stack):
    stack.backup()
    (stack.world.data / "uploads/marker").write_text("v2 since the backup")
    (stack.pg / "db").write_text("DROP TABLE orders;")
    jobs = ba.stopped_jobs(stack.app)

    plan = stack.run(stack.access.restore_plan("latest"))
    assert plan.returncode == 0, plan.stderr
    steps = plan.stdout.splitlines()
    assert steps[1] == f"2. stop the app (blueprints-nomad-jobs stop {' '.join(jobs)})"
    assert stack.world.verbs() == [] and not stack.events.exists()
    assert list(stack.world.tmpdir.iterdir()) == []

    done = stack.run(stack.access.restore("latest"))
    assert done.returncode == 0, done.stderr
    assert stack.world.verbs() == [
        *(f"stop {j}" for j in jobs),
        *(f"revert {j}" for j in reversed(jobs)),
    ]
    markers = [c["marker"] for c in stack.world.calls() if "marker" in c]
    # stopped with the data as it was, started with the snapshot's
    assert set(markers[: len(jobs)]) == {"v2 since the backup"}
    assert set(markers[len(jobs) :]) == {"v1"}
    # each job back at the version it ran (a revert is a new version)
    reverts = [c["argv"] for c in stack.world.calls() if c["argv"][:2] == ["job", "revert"]]
    assert {tuple(a[2:]) for a in reverts} == {(j, "3") for j in jobs}
    assert stack.events.read_text() == "load\n"
    assert (stack.pg / "db").read_text() == "-- the database v1\n"
    assert (stack.world.data / "uploads/marker").read_text() == "v1"
    assert set(
        json.loads(stack.world.docker_state.read_text())[c]["status"] for c in ("c1", "c6")
    ) == {"running"}
    assert "of app downtime" in done.stdout
    assert list(stack.world.tmpdir.iterdir()) == []
    assert_no_secret(done)
    assert_token_only_in_env(stack.world, stack.access, stack.access.restore("latest"))


def test_a_failed_download_stops_nothing(stack: Stack):
    stack.backup()
    done = stack.run(stack.access.restore("deadbeef"))
    assert done.returncode == 1
    assert "restoring snapshot deadbeef failed" in done.stderr
    assert stack.world.verbs() == []
    assert (stack.world.data / "uploads/marker").read_text() == "v1"
    assert list(stack.world.tmpdir.iterdir()) == []


def test_a_failed_stop_starts_again_what_it_stopped_and_moves_nothing(stack: Stack):
    stack.backup()
    (stack.world.data / "uploads/marker").write_text("v2")
    stack.world.state = json.loads(stack.world.state_file.read_text())
    stack.world.state["fail_stop"] = ["shop-redis"]
    stack.world.save()
    done = stack.run(stack.access.restore("latest"))
    assert done.returncode == 1
    assert done.stderr.endswith(
        "blueprints-backup: stopping the app failed: blueprints: nomad job stop shop-redis "
        "failed; started again what had been stopped; nothing was moved\n"
    )
    assert stack.world.verbs() == [
        "stop shop-backup",
        "stop shop-backup-check",
        "stop shop-worker",
        "stop shop-web",
        "stop shop-redis",
        "revert shop-web",
        "revert shop-worker",
        "revert shop-backup-check",
        "revert shop-backup",
    ]
    assert (stack.world.data / "uploads/marker").read_text() == "v2"
    assert list(stack.world.tmpdir.iterdir()) == []


def test_a_job_already_stopped_is_left_stopped(stack: Stack):
    stack.backup()
    stack.world.state = json.loads(stack.world.state_file.read_text())
    stack.world.state["jobs"]["shop-backup-check"]["stop"] = True
    stack.world.save()
    done = stack.run(stack.access.restore("latest"))
    assert done.returncode == 0, done.stderr
    assert "stop shop-backup-check" not in stack.world.verbs()
    assert "revert shop-backup-check" not in stack.world.verbs()


def test_a_job_the_cluster_lacks_is_not_taken_for_a_longer_name(stack: Stack):
    """`nomad job inspect` matches prefixes: shop-web must not stand for shop-web-admin."""
    stack.world.state = json.loads(stack.world.state_file.read_text())
    stack.world.state["jobs"]["shop-web-admin"] = stack.world.state["jobs"].pop("shop-web")
    stack.world.save()
    stack.backup()
    done = stack.run(stack.access.restore("latest"))
    assert done.returncode == 1
    assert "the cluster has no job shop-web (is the app released?)" in done.stderr
    assert "stop shop-web-admin" not in stack.world.verbs()
    assert stack.world.verbs()[-1].startswith("revert")


def test_a_missing_variable_does_nothing(stack: Stack):
    stack.world.state["vars"] = {}
    stack.world.save()
    done = stack.run(stack.access.restore("latest"))
    assert done.returncode == 1
    assert (
        "cannot read the backup's password from the Nomad Variable nomad/jobs/shop-backup"
        in done.stderr
    )
    assert stack.world.verbs() == [] and list(stack.world.tmpdir.iterdir()) == []


def test_a_truncated_script_is_refused(stack: Stack):
    done = stack.world.run(stack.access.snapshots, stack.access.stdin[:-100])
    assert done.returncode == 1
    assert "blueprints-backup arrived incomplete on standard input" in done.stderr
    assert stack.world.calls() == [] and list(stack.world.tmpdir.iterdir()) == []
