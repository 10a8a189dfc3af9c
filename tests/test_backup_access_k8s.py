"""`blueprints backup | backups | restore` on a k8s stack (blueprints/rungs/k8s/backup_access.py).

k3s cannot run here, so the generated command lines are run for real with `sh -c` (as SSH hands
them to the node's shell) against stand-ins on PATH: `sudo` (runs its arguments), `k3s` (answers
`k3s kubectl ...` as kubectl would for the commands used, from a scenario, and records each
call's argv and what it read on stdin), and `date`/`sleep` (a clock that sleeping moves, so time
limits are reached at once). A restore Job "created" through the stand-in runs its real script
under busybox's shell (the restic image's) with busybox's mv/stat/chown/..., a stand-in restic
and a claim directory under tmp_path; only the claim's mount root is moved there.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import validators
import yaml
from test_backup_k8s import with_files
from typer.testing import CliRunner

from blueprints.backup.remote import Access, RemoteError
from blueprints.rungs.k8s import backup_access as ba
from blueprints.rungs.k8s import release as rel
from blueprints.rungs.k8s.component import K8s
from blueprints.rungs.k8s.rules import CRON_JOB_NAME_MAX
from blueprints.spec import AppSpec

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "app.yaml").read_text())
CLOCK = 1_700_000_000
OUTPUTS = {
    "controlPlaneIps": {
        "shop-k8s-cp-10": "203.0.113.10",
        "shop-k8s-cp-2": "203.0.113.2",
        "shop-k8s-cp-1": "203.0.113.1",
    },
    "workerIps": {"shop-k8s-worker-1": "203.0.113.21"},
    "sshCommand": "ssh deploy@203.0.113.1",
    "deployKey": "-----BEGIN OPENSSH PRIVATE KEY-----\nkey\n-----END OPENSSH PRIVATE KEY-----\n",
}
PYTHON = sys.executable

FAKE_K3S = textwrap.dedent(
    '''\
    #!PYTHON
    """k3s kubectl, as far as backup_access uses it, answering from a scenario."""
    import json, os, subprocess, sys

    fake = os.environ["FAKE_DIR"]
    scenario = json.load(open(os.path.join(fake, "scenario.json")))
    state_file = os.path.join(fake, "state.json")
    state = json.load(open(state_file)) if os.path.exists(state_file) else {"polls": {}, "jobs": {}}
    assert sys.argv[1] == "kubectl", sys.argv
    argv = sys.argv[2:]
    joined = " ".join(argv)
    reads = ("-i" in argv and argv[argv.index("-i") - 1] != "--") or argv[-2:] == ["-f", "-"]
    data = sys.stdin.buffer.read() if reads else None
    with open(os.path.join(fake, "calls.jsonl"), "a") as f:
        stdin = None if data is None else data.decode("latin-1")
        f.write(json.dumps({"argv": argv, "stdin": stdin}) + "\\n")


    def save():
        json.dump(state, open(state_file, "w"))


    def out(text):
        sys.stdout.write(text)
        sys.stdout.flush()


    for needle, code, message in scenario.get("fail", []):
        if needle in joined:
            sys.stderr.write(message + "\\n")
            sys.exit(code)

    assert argv[0] == "-n" and argv[1] == scenario["namespace"], argv
    verb, rest = argv[2], argv[3:]
    if verb == "run":
        assert data == b"go\\n", data
        flag = next(a for a in rest if a.startswith("--overrides="))
        overrides = json.loads(flag[len("--overrides="):])
        args = overrides["spec"]["containers"][0]["args"]
        if "snapshots" in args:
            out(scenario["snapshots"])
            sys.exit(scenario.get("snapshots_exit", 0))
        if "dump" in args:
            dump = scenario["dumps"][args[args.index("dump") + 2]]
            sys.stdout.buffer.write(dump["data"].encode())
            sys.exit(dump.get("exit", 0))
        sys.exit(f"unexpected run {args}")
    if verb == "create" and rest[0] == "job":
        print("job.batch/" + rest[-1] + " created")
    elif verb == "create" and rest == ["-f", "-"]:
        manifest = json.loads(data)
        name = manifest["metadata"]["name"]
        command = list(manifest["spec"]["template"]["spec"]["containers"][0]["command"])
        command = [c.replace("$$", "$") for c in command]
        assert command[8] == "/data", command
        command[8] = scenario["data_root"]
        run = subprocess.run(
            [scenario["busybox"], *command],
            env={**os.environ, "PATH": scenario["job_path"]},
            capture_output=True,
            text=True,
        )
        state["jobs"][name] = {"code": run.returncode, "log": run.stdout + run.stderr}
        save()
        print("job.batch/" + name + " created")
    elif verb == "get" and rest[0] == "job":
        name = rest[1]
        if name in state["jobs"]:
            out("1//" if state["jobs"][name]["code"] == 0 else "/1/True")
        else:
            prefix = [p for p in scenario["jobs"] if name.startswith(p)][0]
            answers = scenario["jobs"][prefix]
            polls = state["polls"].get(name, 0)
            state["polls"][name] = polls + 1
            save()
            out(answers[min(polls, len(answers) - 1)])
    elif verb == "logs":
        name = rest[0].split("/", 1)[1]
        out(state["jobs"][name]["log"] if name in state["jobs"] else f"[log of {name}]\\n")
    elif verb == "get" and rest[0] == "deployments":
        out(scenario["deployments"])
    elif verb == "get" and rest[0] == "pods" and "job-name=" in rest[2]:
        out(str(state["jobs"][rest[2].split("=", 1)[1]]["code"]))
    elif verb == "get" and rest[0] == "pods":
        out("")
    elif verb == "get" and rest[0].startswith("statefulset/"):
        out("1")
    elif verb == "exec" and "-i" in rest:
        sys.exit(scenario.get("load_exit", 0))
    elif verb == "exec":
        out(scenario["before_dump"])
    elif verb in ("annotate", "scale", "wait", "rollout"):
        pass
    else:
        sys.exit(f"unexpected kubectl {argv}")
    '''
).replace("PYTHON", PYTHON)

FAKE_RESTIC = textwrap.dedent(
    '''\
    #!PYTHON
    """restic restore SNAPSHOT ... --target T --include /data/V: copies the stand-in snapshot's
    /data/V (FAKE_SNAPSHOT) to T, keeping owners and modes."""
    import os, shutil, sys

    args = sys.argv[1:]
    with open(os.path.join(os.environ["FAKE_DIR"], "restic.log"), "a") as f:
        f.write(" ".join(args) + "\\n")
    target = args[args.index("--target") + 1]
    include = args[args.index("--include") + 1]
    if os.environ.get("FAKE_RESTIC_FAIL"):
        os.makedirs(target + include, exist_ok=True)
        open(os.path.join(target + include, "half"), "w").write("partial")
        sys.exit("Fatal: unable to open repository")
    source = os.environ["FAKE_SNAPSHOT"] + include
    if os.path.isdir(source):
        os.makedirs(os.path.dirname(target + include), exist_ok=True)
        shutil.copytree(source, target + include, symlinks=True)
        for base, dirs, files in os.walk(source):
            for entry in [base, *(os.path.join(base, n) for n in dirs + files)]:
                st = os.lstat(entry)
                os.lchown(target + include + entry[len(source):], st.st_uid, st.st_gid)
        shutil.copystat(source, target + include)
    print("restoring <Snapshot> to " + target)
    '''
).replace("PYTHON", PYTHON)

FAKE_DATE = textwrap.dedent(
    """\
    #!/bin/sh
    if [ "$*" = +%s ]; then cat "$FAKE_DIR/clock"; else exec /bin/date "$@"; fi
    """
)
FAKE_SLEEP = textwrap.dedent(
    """\
    #!/bin/sh
    echo $(($(cat "$FAKE_DIR/clock") + ${1%.*} * ${FAKE_SLEEP_SCALE:-1})) >"$FAKE_DIR/clock"
    """
)


def spec(data: dict[str, Any] | None = None) -> AppSpec:
    return AppSpec.model_validate(copy.deepcopy(data or EXAMPLE))


def snapshot_json(*hosts: str) -> str:
    """What restic 0.17 prints for `snapshots --json`: one line, compact."""
    rows = [
        {
            "time": "2025-05-04T03:00:12.5+00:00",
            "tree": "ab" * 32,
            "paths": ["/dumps"] if host.endswith("postgres") else ["/data/thumbs", "/data/uploads"],
            "hostname": host,
            "username": "root",
            "tags": ["blueprints"],
            "program_version": "restic 0.17.3",
            "summary": {"total_bytes_processed": 1_500_000 + i, "files_new": 1},
            "id": f"{i:02x}" * 32,
            "short_id": f"{i:02x}" * 4,
        }
        for i, host in enumerate(hosts, 1)
    ]
    return json.dumps(rows, separators=(",", ":")) + "\n"


class Node:
    """The first control plane, as far as the scripts see it: PATH with the stand-ins, HOME, a
    scenario for kubectl, the calls it recorded."""

    def __init__(self, tmp: Path, **scenario: Any):
        self.dir = tmp / "fake"
        self.bin = tmp / "bin"
        self.home = tmp / "home"
        self.dir.mkdir()
        self.bin.mkdir()
        self.home.mkdir()
        (self.dir / "clock").write_text(f"{CLOCK}\n")
        tools = {
            "sudo": '#!/bin/sh\nexec "$@"\n',
            "k3s": FAKE_K3S,
            "date": FAKE_DATE,
            "sleep": FAKE_SLEEP,
        }
        for name, text in tools.items():
            (self.bin / name).write_text(text)
            (self.bin / name).chmod(0o755)
        # The restore Job's container: busybox's applets and restic.
        job_bin = tmp / "job-bin"
        job_bin.mkdir()
        busybox = shutil.which("busybox")
        if busybox is None:
            pytest.skip("busybox is not installed")
        for applet in ("sh", "mv", "mkdir", "rm", "stat", "chown", "chmod", "cat", "printf"):
            (job_bin / applet).symlink_to(busybox)
        (job_bin / "restic").write_text(FAKE_RESTIC)
        (job_bin / "restic").chmod(0o755)
        self.data = tmp / "data"
        self.data.mkdir()
        self.scenario = {
            "namespace": "shop",
            "snapshots": snapshot_json("shop-postgres"),
            "dumps": {"/dumps/postgres.dump": {"data": "PGDMP snapshot's dump\n"}},
            "deployments": "web 2 \nworker 1 \n",
            "jobs": {},
            "before_dump": "PGDMP as it is now\n",
            "busybox": busybox,
            "job_path": str(job_bin),
            "data_root": str(self.data),
            **scenario,
        }
        self.env = {
            "PATH": f"{self.bin}:{os.environ['PATH']}",
            "HOME": str(self.home),
            "FAKE_DIR": str(self.dir),
            "FAKE_SNAPSHOT": str(tmp / "snapshot"),
            "LC_ALL": "C",
        }

    def run(self, command: str, **env: str) -> subprocess.CompletedProcess:
        (self.dir / "scenario.json").write_text(json.dumps(self.scenario))
        (self.dir / "calls.jsonl").unlink(missing_ok=True)
        (self.dir / "state.json").unlink(missing_ok=True)
        return subprocess.run(
            command,
            shell=True,
            env={**self.env, **env},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def calls(self) -> list[dict[str, Any]]:
        path = self.dir / "calls.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    def argvs(self) -> list[list[str]]:
        return [c["argv"] for c in self.calls()]

    @property
    def keep(self) -> Path:
        return self.home / "blueprints-restore" / f"shop-{CLOCK}"


def access(app: AppSpec | None = None, outputs: dict[str, Any] | None = None) -> Access:
    return K8s.backup_access(app or spec(), outputs or OUTPUTS)


def script_of(command: str) -> str:
    words = shlex.split(command)
    assert words[:2] == ["sh", "-c"] and len(words) == 3, words[:2]
    return words[2]


def verbs(argvs: list[list[str]]) -> list[str]:
    """Each call as `verb object` (the namespace dropped)."""
    return [" ".join(a[2:4]) for a in argvs]


def index(argvs: list[list[str]], *words: str) -> int:
    for i, argv in enumerate(argvs):
        if all(w in argv for w in words):
            return i
    raise AssertionError(f"no call with {words} in {argvs}")


def overrides(argv: list[str]) -> dict[str, Any]:
    flag = next(a for a in argv if a.startswith("--overrides="))
    return json.loads(flag[len("--overrides=") :])


# --- where, and with what ------------------------------------------------------------------------


def test_reaches_the_first_control_plane_with_the_deploy_key():
    got = access()
    assert got.host == "203.0.113.1"  # cp-1, not cp-10 (which sorts first as text)
    assert got.key == OUTPUTS["deployKey"]


def test_falls_back_to_the_ssh_command_for_the_address():
    outputs = {k: v for k, v in OUTPUTS.items() if k != "controlPlaneIps"}
    assert access(outputs=outputs).host == "203.0.113.1"


@pytest.mark.parametrize(
    ("drop", "named"),
    [(("controlPlaneIps", "sshCommand"), "controlPlaneIps"), (("deployKey",), "deployKey")],
)
def test_missing_outputs_are_one_sentence(drop, named):
    outputs = {k: v for k, v in OUTPUTS.items() if k not in drop}
    with pytest.raises(RemoteError) as err:
        access(outputs=outputs)
    message = str(err.value)
    assert named in message and "pulumi up" in message
    assert "\n" not in message and message.count(". ") == 0


def test_a_snapshot_that_is_no_id_is_refused():
    with pytest.raises(RemoteError, match="not a snapshot id"):
        access().restore("latest; reboot")


def test_every_command_is_one_sh_script_driving_k3s_kubectl_as_root():
    got = access(spec(with_files()))
    for command in (got.now, got.snapshots, got.restore_plan("latest"), got.restore("4f2a9c1e")):
        script = script_of(command)
        assert 'k() { sudo k3s kubectl "$@" </dev/null; }' in script
        assert 'ki() { sudo k3s kubectl "$@"; }' in script
        # kubectl is reached through those two only (elsewhere it is in messages)
        lines = [line.strip() for line in script.splitlines()]
        assert not [line for line in lines if re.match(r"(\S+=\S*\s+)*(sudo|kubectl|k3s)\b", line)]


# --- shellcheck ----------------------------------------------------------------------------------


@pytest.mark.parametrize("app", ["example", "files"])
@pytest.mark.parametrize("which", ["now", "snapshots", "plan", "restore", "plan-id", "restore-id"])
def test_the_generated_scripts_pass_shellcheck(tmp_path, app, which):
    got = access(spec(with_files() if app == "files" else None))
    command = {
        "now": got.now,
        "snapshots": got.snapshots,
        "plan": got.restore_plan("latest"),
        "restore": got.restore("latest"),
        "plan-id": got.restore_plan("4f2a9c1e"),
        "restore-id": got.restore("4f2a9c1e"),
    }[which]
    path = tmp_path / f"{which}.sh"
    path.write_text(script_of(command))
    validators.shellcheck(path, "sh")


def test_the_restore_jobs_script_passes_shellcheck(tmp_path):
    path = tmp_path / "restore-job.sh"
    path.write_text(ba.JOB_SCRIPT)
    validators.shellcheck(path, "sh")


# --- backup now ----------------------------------------------------------------------------------


def test_backup_now_runs_each_backup_cronjob_and_prints_its_logs(tmp_path):
    node = Node(tmp_path, jobs={"backup-": ["//", "//", "1//"]})
    done = node.run(access(spec(with_files())).now)
    assert done.returncode == 0, done.stderr
    argvs = node.argvs()
    assert argvs[0] == [
        "-n",
        "shop",
        "create",
        "job",
        "--from=cronjob/backup-files",
        f"backup-files-now-{CLOCK}",
    ]
    created = [a[-1] for a in argvs if a[2:4] == ["create", "job"]]
    # every backed-up service's CronJob, not backup-check, one after the other
    assert created == [f"backup-files-now-{CLOCK}", f"backup-postgres-now-{CLOCK}"]
    first_logs = index(argvs, "logs", f"job/backup-files-now-{CLOCK}")
    assert first_logs < index(argvs, "--from=cronjob/backup-postgres")
    assert argvs[first_logs][-2:] == ["--all-containers=true", "--prefix=true"]
    assert f"[log of backup-files-now-{CLOCK}]" in done.stdout
    assert "2 backup(s) done" in done.stdout


def test_backup_now_fails_when_a_job_fails_but_runs_the_others(tmp_path):
    node = Node(tmp_path, jobs={"backup-files": ["/1/True"], "backup-postgres": ["1//"]})
    done = node.run(access(spec(with_files())).now)
    assert done.returncode == 1
    assert f"the Job backup-files-now-{CLOCK} failed" in done.stderr
    assert f"[log of backup-files-now-{CLOCK}]" in done.stdout
    assert any(a[-1].startswith("backup-postgres-now-") for a in node.argvs())
    assert "1 of 2 backup(s) failed" in done.stderr


def test_backup_now_gives_up_after_the_cronjobs_run_deadline(tmp_path):
    node = Node(tmp_path, jobs={"backup-": ["//"]})
    # each sleep of the poll takes 10 minutes of the clock
    done = node.run(access().now, FAKE_SLEEP_SCALE="120")
    assert done.returncode == 1
    limit = rel.RUN_DEADLINE_SECONDS["daily"] + ba.DEADLINE_MARGIN_SECONDS
    assert f"has not finished after {limit} s" in done.stderr
    assert "running for 600 s" in done.stdout and "running for 21600 s" in done.stdout
    polls = [a for a in node.argvs() if a[2:4] == ["get", "job"]]
    assert len(polls) == -(-limit // 600) + 1  # the last one after the limit


def test_backup_now_says_when_the_cronjob_is_missing(tmp_path):
    node = Node(tmp_path, fail=[["create job", 1, 'cronjobs.batch "backup-postgres" not found']])
    done = node.run(access().now)
    assert done.returncode == 1
    assert "could not start a Job from the CronJob backup-postgres" in done.stderr


def test_backup_now_without_backed_up_data_says_so(tmp_path):
    data = copy.deepcopy(EXAMPLE)
    data["backups"]["enabled"] = False
    done = Node(tmp_path).run(access(spec(data)).now)
    assert done.returncode == 1 and "no data to back up" in done.stderr


def test_a_now_job_name_fits_a_label():
    data = with_files()
    name = "f" * (CRON_JOB_NAME_MAX - len("backup-"))
    data["services"][name] = data["services"].pop("files")
    script = script_of(access(spec(data)).now)
    assert f"backup_now backup-{name} backup-{name}-" in script
    assert f"backup-{name}-now" not in script  # 52 + len("-now-") + 10 > 63


# --- snapshots -----------------------------------------------------------------------------------


def test_snapshots_come_from_a_one_off_restic_pod(tmp_path):
    node = Node(tmp_path, snapshots=snapshot_json("shop-postgres", "shop-files"))
    done = node.run(access().snapshots)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)[1]["summary"]["total_bytes_processed"] == 1_500_002
    [call] = node.calls()
    argv = call["argv"]
    assert argv[:5] == ["-n", "shop", "run", argv[3], "--rm"]
    assert argv[3].startswith(f"restic-snapshots-{CLOCK}-")
    assert {"-i", "--restart=Never", "--quiet", f"--image={rel.RESTIC_IMAGE}"} <= set(argv)
    spec_ = overrides(argv)["spec"]
    [container] = spec_["containers"]
    assert container["args"] == ["--no-lock", "snapshots", "--json", "--tag", "blueprints"]
    assert container["envFrom"] == [{"secretRef": {"name": "backup-storage"}}]
    assert container["securityContext"] == rel._security(False)
    assert container["securityContext"]["runAsNonRoot"] is True
    assert {"name": "RESTIC_CACHE_DIR", "value": "/cache"} in container["env"]
    assert {"name": "cache", "mountPath": "/cache"} in container["volumeMounts"]
    assert {"name": "cache", "emptyDir": {}} in spec_["volumes"]
    assert container["stdin"] is True and container["stdinOnce"] is True
    assert spec_["automountServiceAccountToken"] is False


def test_the_one_off_pods_restic_starts_once_kubectl_is_attached(tmp_path):
    """The container waits for kubectl's line on stdin, then runs restic with its arguments."""
    busybox = shutil.which("busybox") or pytest.skip("busybox is not installed")
    container = overrides([f"--overrides={ba.restic_overrides(['snapshots', '--json'])}"])
    command = [c.replace("$$", "$") for c in container["spec"]["containers"][0]["command"]]
    args = container["spec"]["containers"][0]["args"]
    (tmp_path / "restic").write_text('#!/bin/sh\nprintf "<%s>" "$@"\n')
    (tmp_path / "restic").chmod(0o755)
    done = subprocess.run(
        [busybox, *command[:2], command[2], *command[3:], *args],
        input="go\n",
        capture_output=True,
        text=True,
        env={"PATH": f"{tmp_path}:/usr/bin:/bin"},
    )
    assert done.stdout == "<snapshots><--json>"


def test_the_backups_table_falls_back_to_restics_own_size(monkeypatch):
    from blueprints import cli

    rows = json.loads(snapshot_json("shop-postgres"))

    class Session:
        access = access()

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

    monkeypatch.setattr(cli, "_backup_session", lambda *a: Session())
    monkeypatch.setattr(
        cli,
        "_remote",
        lambda *a, **k: subprocess.CompletedProcess([], 0, json.dumps(rows), ""),
    )
    result = CliRunner().invoke(cli.app, ["backups", "k8s-hcloud"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "1.5 MB" in result.output


# --- restore: plan -------------------------------------------------------------------------------


def test_the_plan_of_the_example_app(tmp_path):
    node = Node(tmp_path)
    done = node.run(access().restore_plan("latest"))
    assert done.returncode == 0, done.stderr
    keep = f"{node.home}/blueprints-restore/shop-<T>"
    assert done.stdout.splitlines() == [
        "1. download the dump /dumps/postgres.dump of the newest snapshot of shop-postgres from "
        f"the repository (a one-off restic pod) to {keep}/postgres.dump on this node; the app "
        "keeps running, and nothing is stopped if this fails",
        "2. scale the Deployments web (2 replicas), worker (1 replica) to 0 (their replica "
        "counts kept in the annotation blueprints.dev/replicas-before-restore) and wait until "
        "their pods are gone",
        "3. wait until postgres-0 is ready and keep its data as it is now: kubectl exec "
        "postgres-0 -c postgres -- pg_dump --username=shop --format=custom shop > "
        f"{keep}/postgres.before-restore.dump (never deleted)",
        "4. load the snapshot's dump into postgres: kubectl exec -i postgres-0 -c postgres -- "
        "pg_restore --username=shop --dbname=shop --no-owner --clean --if-exists < "
        f"{keep}/postgres.dump (then delete that download)",
        "5. scale the Deployments back: web to 2, worker to 1",
        f"6. the data as it was before stays in: {keep}/postgres.before-restore.dump; delete it "
        "once the app is right",
    ]
    # it only looked: the snapshots (a one-off pod) and the Deployments
    argvs = node.argvs()
    assert verbs(argvs) == [
        f"run restic-find-{CLOCK}-{argvs[0][3].rsplit('-', 1)[1]}",
        "get deployments",
    ]
    assert overrides(argvs[0])["spec"]["containers"][0]["args"][-2:] == ["--latest", "1"]
    assert not node.keep.parent.exists()


def test_the_plan_takes_the_replicas_an_earlier_failed_restore_kept(tmp_path):
    node = Node(tmp_path, deployments="web 0 2\nworker 0 1\n")
    done = node.run(access().restore_plan("latest"))
    assert "scale the Deployments web (2 replicas), worker (1 replica) to 0" in done.stdout
    assert "5. scale the Deployments back: web to 2, worker to 1" in done.stdout


def test_the_plan_of_a_snapshot_id_names_only_its_service(tmp_path):
    node = Node(tmp_path, snapshots=snapshot_json("shop-files"))
    done = node.run(access(spec(with_files())).restore_plan("01010101"))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 4
    assert lines[0] == "1. scale the StatefulSet files to 0 and wait until its pod files-0 is gone"
    assert lines[1].startswith(
        "2. run the Job restore-files-<T> (restic as root with only CHOWN, DAC_OVERRIDE, FOWNER, "
        "FSETID, on the node where the claim(s) uploads-files-0, thumbs-files-0 can be "
        "mounted): restore /data/uploads, /data/thumbs of snapshot 01010101 into "
        ".blueprints-restore-<T> on each claim"
    )
    assert "/srv/uploads/.blueprints-before-restore-<T>" in lines[1]
    assert lines[2] == "3. scale the StatefulSet files back up and wait until it is ready"
    assert "postgres" not in done.stdout
    argvs = node.argvs()
    assert len(argvs) == 1  # no Deployment is touched for files
    assert overrides(argvs[0])["spec"]["containers"][0]["args"][-1] == "01010101"


def test_a_snapshot_of_another_host_is_refused(tmp_path):
    node = Node(tmp_path, snapshots=snapshot_json("other-app-postgres"))
    done = node.run(access().restore("0a0b0c0d"))
    assert done.returncode == 1
    assert "snapshot 0a0b0c0d is a backup of none of shop's services" in done.stderr
    assert len(node.calls()) == 1


def test_latest_needs_a_snapshot_of_every_service(tmp_path):
    node = Node(tmp_path, snapshots=snapshot_json("shop-postgres"))
    done = node.run(access(spec(with_files())).restore("latest"))
    assert done.returncode == 1
    assert "holds no snapshot of files (shop-files); nothing was changed" in done.stderr
    assert len(node.calls()) == 1


# --- restore: a dump -----------------------------------------------------------------------------


def test_restoring_a_dump_stops_the_writers_keeps_the_data_and_starts_them_again(tmp_path):
    node = Node(tmp_path)
    done = node.run(access().restore("latest"))
    assert done.returncode == 0, done.stderr
    argvs = node.argvs()
    calls = node.calls()
    # the second pod: the first looked the snapshots up
    download = [i for i, a in enumerate(argvs) if a[2] == "run"][1]
    args = overrides(argvs[download])["spec"]["containers"][0]["args"]
    assert args == [
        "--retry-lock",
        ba.RETRY_LOCK,
        "dump",
        "latest",
        rel.dump_file("postgres"),
        "--host",
        "shop-postgres",
        "--tag",
        "blueprints",
    ]
    annotate_web = index(argvs, "annotate", "deployment/web")
    assert argvs[annotate_web][-2:] == ["blueprints.dev/replicas-before-restore=2", "--overwrite"]
    down = [index(argvs, "scale", f"deployment/{d}", "--replicas=0") for d in ("web", "worker")]
    keep_now = index(argvs, "exec", "pg_dump")
    load = index(argvs, "exec", "-i")
    up = [
        index(argvs, "scale", "deployment/web", "--replicas=2"),
        index(argvs, "scale", "deployment/worker", "--replicas=1"),
    ]
    # read first (app running), then stop, keep what is there, load, start again
    assert download < min(down) and max(down) < keep_now < load < min(up)
    assert index(argvs, "wait", "pod/postgres-0") < keep_now
    assert argvs[load][2:] == [
        "exec",
        "-i",
        "postgres-0",
        "-c",
        "postgres",
        "--",
        *EXAMPLE["services"]["postgres"]["backup"]["restore"],
    ]
    assert calls[load]["stdin"] == "PGDMP snapshot's dump\n"
    # the annotation goes once the Deployments are back
    assert index(
        argvs, "annotate", "deployment/web", "blueprints.dev/replicas-before-restore-"
    ) > max(up)
    # the database as it was is kept; the download is gone
    assert (node.keep / "postgres.before-restore.dump").read_text() == "PGDMP as it is now\n"
    assert not (node.keep / "postgres.dump").exists()
    assert oct(node.keep.stat().st_mode & 0o777) == "0o700"
    assert "restored latest; the data as it was before: " in done.stdout


def test_a_failed_dump_download_stops_before_anything_is_touched(tmp_path):
    node = Node(
        tmp_path,
        dumps={"/dumps/postgres.dump": {"data": "PGDMP half a dum", "exit": 1}},
    )
    done = node.run(access().restore("latest"))
    assert done.returncode == 1
    assert "nothing was stopped or changed" in done.stderr
    # looked up, listed, downloaded: nothing else
    assert [a[2:4] for a in node.argvs()][:2] == [
        ["run", node.argvs()[0][3]],
        ["get", "deployments"],
    ]
    assert [a[2] for a in node.argvs()] == ["run", "get", "run"]
    assert not (node.keep / "postgres.dump").exists()


def test_an_empty_dump_stops_before_anything_is_touched(tmp_path):
    node = Node(tmp_path, dumps={"/dumps/postgres.dump": {"data": ""}})
    done = node.run(access().restore("latest"))
    assert done.returncode == 1 and "is empty" in done.stderr
    assert all(a[2] in ("run", "get") for a in node.argvs())


def test_when_the_data_cannot_be_kept_nothing_is_loaded_and_the_app_starts_again(tmp_path):
    node = Node(tmp_path, fail=[["pg_dump", 1, "pg_dump: error: connection failed"]])
    done = node.run(access().restore("latest"))
    assert done.returncode == 1
    argvs = node.argvs()
    assert not any("-i" in a and a[2] == "exec" for a in argvs)
    assert index(argvs, "scale", "deployment/web", "--replicas=2") > index(argvs, "pg_dump")
    assert "nothing was restored; the Deployments are scaled back: web to 2, worker to 1" in (
        done.stderr
    )


def test_a_failed_load_leaves_the_writers_stopped_and_says_how_to_start_them(tmp_path):
    node = Node(tmp_path, load_exit=1)
    done = node.run(access().restore("latest"))
    assert done.returncode == 1
    argvs = node.argvs()
    assert not any(a[2] == "scale" and a[-1] != "--replicas=0" for a in argvs)
    assert "sudo k3s kubectl -n shop scale deployment/web --replicas=2" in done.stderr
    assert "postgres.before-restore.dump" in done.stderr
    assert (node.keep / "postgres.before-restore.dump").exists()
    assert (node.keep / "postgres.dump").exists()  # for another try


def test_hostile_commands_reach_kubectl_as_the_exact_argv(tmp_path):
    pwned = tmp_path / "pwned"
    hostile = [
        "pg_restore",
        f"$(touch {pwned})",
        f"`touch {pwned}`",
        "it's",
        'say "hi"',
        "back\\slash",
        "new\nline",
        "*",
        "",
        "; rm -rf /",
        "--",
        "${HOME}",
        "$$",
        "%s%n",
    ]
    data = copy.deepcopy(EXAMPLE)
    data["services"]["postgres"]["backup"] = {"dump": ["pg_dump", *hostile[1:]], "restore": hostile}
    node = Node(tmp_path)
    got = access(spec(data))
    done = node.run(got.restore("latest"))
    assert done.returncode == 0, done.stderr
    argvs = node.argvs()
    assert argvs[index(argvs, "exec", "-i")][8:] == hostile
    assert argvs[index(argvs, "exec", "pg_dump")][7:] == ["pg_dump", *hostile[1:]]
    assert not pwned.exists()
    plan = node.run(got.restore_plan("latest"))
    assert shlex.join(hostile) in plan.stdout
    for command in (got.restore_plan("latest"), got.restore("latest")):
        path = tmp_path / "hostile.sh"
        path.write_text(script_of(command))
        # SC2016: `$` in single quotes is exactly what quoting these values means
        proc = subprocess.run(
            ["shellcheck", "-s", "sh", "-S", "style", "-e", "SC2016", str(path)],
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stdout


# --- restore: files ------------------------------------------------------------------------------


def claim(root: Path, files: dict[str, str], uid: int = 0, mode: int = 0o755) -> None:
    for rel_path, text in files.items():
        path = root / rel_path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    root.mkdir(parents=True, exist_ok=True)
    os.chown(root, uid, uid)
    root.chmod(mode)


@pytest.fixture
def files_node(tmp_path) -> Node:
    """Live claims with data, and a snapshot with other data (owned by 999, mode 0700)."""
    node = Node(tmp_path, snapshots=snapshot_json("shop-files"))
    claim(node.data / "uploads", {"a.txt": "live a", ".hidden": "live hidden", "dir/b": "live b"})
    (node.data / "uploads" / "lost+found").mkdir()
    (node.data / "uploads" / ".blueprints-before-restore-1600000000").mkdir()
    claim(node.data / "thumbs", {"t.png": "live thumb"})
    snapshot = tmp_path / "snapshot" / "data"
    claim(
        snapshot / "uploads",
        {"a.txt": "snap a", "..odd": "snap odd", ".blueprints-before-restore-1500000000/x": "old"},
        uid=999,
        mode=0o700,
    )
    claim(snapshot / "thumbs", {"t.png": "snap thumb"})
    return node


def test_restoring_files_stops_the_service_moves_its_data_aside_and_starts_it(files_node):
    node = files_node
    done = node.run(access(spec(with_files())).restore("01010101"))
    assert done.returncode == 0, done.stderr + done.stdout
    argvs = node.argvs()
    down = index(argvs, "scale", "statefulset/files", "--replicas=0")
    gone = index(
        argvs, "get", "pods", "app.kubernetes.io/instance=shop,app.kubernetes.io/name=files"
    )
    create = index(argvs, "create", "-f")
    up = index(argvs, "scale", "statefulset/files", "--replicas=1")
    ready = index(argvs, "rollout", "statefulset/files")
    assert down < gone < create < up < ready
    assert not any("deployment" in " ".join(a) for a in argvs)  # a files restore stops no app
    # the Job
    manifest = json.loads(node.calls()[create]["stdin"])
    assert manifest["metadata"]["name"] == f"restore-files-{CLOCK}"
    pod = manifest["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"], "add": ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID"]},
        "runAsUser": 0,
        "runAsNonRoot": False,
    }
    assert {v["name"]: v.get("persistentVolumeClaim") for v in pod["volumes"]} == {
        "cache": None,
        "tmp": None,
        "data-0": {"claimName": "uploads-files-0"},
        "data-1": {"claimName": "thumbs-files-0"},
    }
    assert {"name": "data-0", "mountPath": "/data/uploads"} in container["volumeMounts"]
    assert "__BLUEPRINTS_STAMP__" not in json.dumps(manifest)
    restic = (node.dir / "restic.log").read_text().splitlines()
    assert restic[0] == (
        f"--retry-lock 10m restore 01010101 --host shop-files --tag blueprints --target "
        f"{node.data}/uploads/.blueprints-restore-{CLOCK} --include /data/uploads"
    )
    # the claims: the snapshot's files in place, the live ones aside, nothing deleted
    uploads = node.data / "uploads"
    aside = uploads / f".blueprints-before-restore-{CLOCK}"
    assert (uploads / "a.txt").read_text() == "snap a"
    assert (uploads / "..odd").read_text() == "snap odd"
    assert not (uploads / ".hidden").exists() and not (uploads / "dir").exists()
    assert (aside / "a.txt").read_text() == "live a"
    assert (aside / ".hidden").read_text() == "live hidden"
    assert (aside / "dir" / "b").read_text() == "live b"
    assert (uploads / "lost+found").is_dir() and not (aside / "lost+found").exists()
    assert (uploads / ".blueprints-before-restore-1600000000").is_dir()  # an earlier restore's
    assert not (uploads / ".blueprints-before-restore-1500000000").exists()  # the snapshot's
    assert not (uploads / f".blueprints-restore-{CLOCK}").exists()
    assert (uploads.stat().st_uid, oct(uploads.stat().st_mode & 0o777)) == (999, "0o700")
    assert (node.data / "thumbs" / "t.png").read_text() == "snap thumb"
    assert (node.data / "thumbs" / f".blueprints-before-restore-{CLOCK}" / "t.png").exists()
    assert f"blueprints-restore: {uploads} holds snapshot 01010101" in done.stdout


def test_a_restore_job_that_fails_before_the_swap_changes_nothing(files_node):
    node = files_node
    done = node.run(access(spec(with_files())).restore("01010101"), FAKE_RESTIC_FAIL="1")
    assert done.returncode == 1
    assert "failed before it changed anything" in done.stderr
    uploads = node.data / "uploads"
    assert (uploads / "a.txt").read_text() == "live a"
    assert sorted(p.name for p in uploads.iterdir()) == [
        ".blueprints-before-restore-1600000000",
        ".hidden",
        "a.txt",
        "dir",
        "lost+found",
    ]
    argvs = node.argvs()
    # started again as it was, since nothing changed
    assert index(argvs, "scale", "statefulset/files", "--replicas=1") > index(argvs, "create")


def test_a_restore_job_that_fails_part_way_leaves_the_service_stopped(files_node):
    node = files_node
    # uploads is swapped, then the thumbs claim has no room for its aside directory
    (node.data / "thumbs" / f".blueprints-before-restore-{CLOCK}").write_text("in the way")
    done = node.run(access(spec(with_files())).restore("01010101"))
    assert done.returncode == 1
    assert "failed part-way" in done.stderr and "files stays stopped" in done.stderr
    assert f"/srv/uploads/.blueprints-before-restore-{CLOCK}" in done.stderr
    assert not any(a[2] == "scale" and a[-1] == "--replicas=1" for a in node.argvs())
    aside = node.data / "uploads" / f".blueprints-before-restore-{CLOCK}"
    assert (aside / "a.txt").read_text() == "live a"  # kept


def test_a_failed_scale_down_starts_nothing_it_did_not_stop(tmp_path):
    node = Node(
        tmp_path,
        snapshots=snapshot_json("shop-postgres", "shop-files"),
        fail=[["statefulset/files --replicas=0", 1, "error: forbidden"]],
    )
    done = node.run(access(spec(with_files())).restore("latest"))
    assert done.returncode == 1
    argvs = node.argvs()
    assert not any(a[2:4] == ["create", "-f"] for a in argvs)
    # nothing was written: the StatefulSet and the Deployments are scaled back
    assert index(argvs, "scale", "statefulset/files", "--replicas=1") > index(
        argvs, "statefulset/files", "--replicas=0"
    )
    assert index(argvs, "scale", "deployment/web", "--replicas=2")


# --- restore: a volume several services mount ----------------------------------------------------


def with_shared() -> dict[str, Any]:
    """with_files, and a service `viewer` mounting files' uploads volume too."""
    data = with_files()
    data["services"]["viewer"] = {
        "image": "ghcr.io/example/viewer:1.0",
        "volumes": [{"volume": "uploads", "path": "/srv/uploads", "read_only": True}],
    }
    return data


def test_restoring_a_shared_volume_stops_every_service_mounting_it(files_node, tmp_path):
    node = files_node
    got = access(spec(with_shared()))
    done = node.run(got.restore("01010101"))
    assert done.returncode == 0, done.stderr + done.stdout
    argvs = node.argvs()
    downs = [index(argvs, "scale", f"statefulset/{s}", "--replicas=0") for s in ("files", "viewer")]
    gone = index(
        argvs, "get", "pods", "app.kubernetes.io/instance=shop,app.kubernetes.io/name=viewer"
    )
    create = index(argvs, "create", "-f")
    ups = [index(argvs, "scale", f"statefulset/{s}", "--replicas=1") for s in ("files", "viewer")]
    ready = index(argvs, "rollout", "statefulset/viewer")
    assert max(downs) < gone < create < min(ups) and max(ups) < ready
    manifest = json.loads(node.calls()[create]["stdin"])
    claims = [
        v["persistentVolumeClaim"]["claimName"]
        for v in manifest["spec"]["template"]["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    ]
    assert claims == ["uploads-shared", "thumbs-files-0"]
    assert (node.data / "uploads" / "a.txt").read_text() == "snap a"
    # the plan says so
    plan = node.run(got.restore_plan("01010101"))
    assert "scale the StatefulSet viewer to 0 too (it mounts uploads)" in plan.stdout
    assert "scale the StatefulSet viewer back up and wait until it is ready" in plan.stdout
    for command in (got.restore_plan("latest"), got.restore("latest")):
        path = tmp_path / "shared.sh"
        path.write_text(script_of(command))
        validators.shellcheck(path, "sh")


def test_a_shared_volumes_restore_failing_before_the_swap_starts_them_all_again(files_node):
    node = files_node
    done = node.run(access(spec(with_shared())).restore("01010101"), FAKE_RESTIC_FAIL="1")
    assert done.returncode == 1
    assert "failed before it changed anything" in done.stderr
    argvs = node.argvs()
    create = index(argvs, "create")
    for name in ("files", "viewer"):
        assert index(argvs, "scale", f"statefulset/{name}", "--replicas=1") > create


def test_a_failed_scale_down_of_another_user_starts_what_was_stopped(tmp_path):
    node = Node(
        tmp_path,
        snapshots=snapshot_json("shop-files"),
        fail=[["statefulset/viewer --replicas=0", 1, "error: forbidden"]],
    )
    done = node.run(access(spec(with_shared())).restore("01010101"))
    assert done.returncode == 1
    argvs = node.argvs()
    assert not any(a[2:4] == ["create", "-f"] for a in argvs)
    for name in ("files", "viewer"):
        assert index(argvs, "scale", f"statefulset/{name}", "--replicas=1") > index(
            argvs, "statefulset/viewer", "--replicas=0"
        )
