"""The nomad rung's backups: two periodic Nomad jobs on the data node running blueprints-backup.

The jobs are parsed back (python-hcl2) and compared with what the spec implies; their templates
are rendered as Nomad's template runner would (the few consul-template actions they hold,
emulated here) and the result is run for real: blueprints-backup with the real restic against
moto's S3, reaching the "containers" through a stand-in `docker` that applies docker's own name
filter to containers named as Nomad's docker driver names them. Last, the stacks: the jobs and
their Variables exist exactly when the stack has backup storage, and hold no secret.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import boto3
import pytest
import validators
import yaml
from spec_plans import plan_with_spec
from test_render_nomad import blocks, job_of

from blueprints.backup import backup_source, node_backup
from blueprints.backup.node_files import backup_calendar, check_calendar
from blueprints.backup.storage import Storage, what_to_set
from blueprints.plan import Plan, is_secret, plan_stack
from blueprints.render.unpack import server_user_data, stack_files
from blueprints.rungs.nomad import release as r
from blueprints.rungs.nomad.rules import check_nomad
from blueprints.settings import StackSettings
from blueprints.spec import AppSpec

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "app.yaml").read_text())
STORAGE = Storage(
    bucket="shop-backups",
    endpoint="https://fsn1.your-objectstorage.com",
    region="fsn1",
    access_key="AKIDEXAMPLE",
    folder="restic/shop-nomad-hcloud",
)
NAME = "shop-nomad-hcloud"
PASSWORD = "repo-Pa55word-9c2e"
SECRET_KEY = "s3-Secret-Key-77f1"
LEFT, RIGHT = "\u00ab", "\u00bb"
PYTHON = os.environ.get("NODE_READY_PYTHON", sys.executable)


def spec(change: Callable[[dict], None] | None = None) -> AppSpec:
    data = copy.deepcopy(EXAMPLE)
    if change is not None:
        change(data)
    return AppSpec.model_validate(data)


def with_files_service(data: dict) -> None:
    """A service backed up as files: a volume and no dump (paused around the snapshot)."""
    data["volumes"]["uploads"] = {"size_gb": 5}
    data["services"]["files"] = {
        "image": "ghcr.io/example/files:1",
        "volumes": [{"volume": "uploads", "path": "/srv/uploads"}],
    }


# --- consul-template, as far as these jobs use it ----------------------------------------------


def render_like_nomad(
    template: Mapping[str, Any], env: Mapping[str, str], variables: Mapping[str, Mapping[str, str]]
) -> str:
    """A template block's data as Nomad's template runner writes it: with its delimiters, the
    actions these jobs use (`env "X"`, `with nomadVar "P"` ... `.item` ... `end`); anything else
    between the delimiters is an error, as is a missing item (error_on_missing_key)."""
    left = re.escape(template.get("left_delimiter", "{{"))
    right = re.escape(template.get("right_delimiter", "}}"))
    text = template["data"]

    def with_var(m: re.Match) -> str:
        items = variables[m.group(1)]

        def item(i: re.Match) -> str:
            if i.group(1) not in items:
                raise KeyError(f"map has no entry for key {i.group(1)!r}")
            return items[i.group(1)]

        return re.sub(rf"{left} \.(\w+) {right}", item, m.group(2))

    text = re.sub(
        rf'{left} with nomadVar "([^"]+)" {right}(.*?){left} end {right}',
        with_var,
        text,
        flags=re.S,
    )
    text = re.sub(rf'{left}env "(\w+)"{right}', lambda m: env[m.group(1)], text)
    assert not re.search(left, text) and not re.search(right, text), "an action is left"
    return text


def task_of(job_text: str) -> dict[str, Any]:
    _, body = job_of(job_text)
    [(_, group)] = blocks(body["group"]).items()
    [(_, task)] = blocks(group["task"]).items()
    return task


def lay_out_task(
    task: Mapping[str, Any], task_dir: Path, variables: Mapping[str, Mapping[str, str]]
) -> None:
    """The task directory as Nomad prepares it for a raw_exec task (host paths)."""
    env = {
        "NOMAD_SECRETS_DIR": str(task_dir / "secrets"),
        "NOMAD_TASK_DIR": str(task_dir / "local"),
    }
    for t in task["template"]:
        target = task_dir / t["destination"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(render_like_nomad(t, env, variables))
        target.chmod(int(t["perms"], 8))


# --- the jobs, from the spec's side ----------------------------------------------------------


def expected_job(app: AppSpec, verb: str, cron: str) -> dict[str, Any]:
    job = f"{app.name}-backup" + ("" if verb == "backup" else "-check")
    var = f"nomad/jobs/{job}"
    config = {"left_delimiter": LEFT, "right_delimiter": RIGHT}
    templates = [
        {
            "data": backup_source(),
            "destination": "local/blueprints-backup",
            "perms": "0755",
            **config,
            "change_mode": "noop",
        },
        {
            "data": r.backup_config_template(app, STORAGE, NAME),
            "destination": "local/config.json",
            "perms": "0644",
            **config,
            "change_mode": "noop",
        },
        {
            "data": f'{{{{ with nomadVar "{var}" }}}}{{{{ .password }}}}\n{{{{ end }}}}',
            "destination": "secrets/backup-password",
            "perms": "0600",
            "error_on_missing_key": True,
            "change_mode": "noop",
        },
        {
            "data": f'{{{{ with nomadVar "{var}" }}}}{{{{ .storage }}}}{{{{ end }}}}',
            "destination": "secrets/backup-storage.env",
            "perms": "0600",
            "error_on_missing_key": True,
            "change_mode": "noop",
        },
    ]
    task = {
        "driver": "raw_exec",
        "kill_timeout": "60s",
        "config": [
            {
                "command": "/usr/bin/python3",
                "args": ["local/blueprints-backup", "--config", "local/config.json", verb],
            }
        ],
        "template": templates,
        "resources": [{"cpu": 100, "memory": 512}],
    }
    group = {
        "count": 1,
        "constraint": [{"attribute": "${meta.blueprints_data}", "value": "true"}],
        "restart": [{"attempts": 0, "mode": "fail"}],
        "reschedule": [{"attempts": 0, "unlimited": False}],
        "task": [{"backup": task}],
    }
    return {
        "type": "batch",
        "datacenters": ["dc1"],
        "meta": [{"blueprints_app": app.name, "blueprints_backup": verb}],
        "periodic": [{"crons": [cron], "time_zone": "UTC", "prohibit_overlap": True}],
        "group": [{"backup": group}],
    }


SCHEDULES = [
    # schedule, at, the backup's cron, the check's cron
    ("hourly", "03:00", "0 * * * *", "30 5 * * 0"),
    ("hourly", "07:45", "45 * * * *", "15 9 * * 0"),
    ("daily", "03:00", "0 3 * * *", "0 5 * * 0"),
    ("daily", "23:30", "30 23 * * *", "30 1 * * 0"),
    ("weekly", "00:05", "5 0 * * 0", "5 2 * * 0"),
    ("weekly", "22:59", "59 22 * * 0", "59 0 * * 0"),
]


@pytest.mark.parametrize(("schedule", "at", "cron", "check"), SCHEDULES)
def test_both_jobs_are_exactly_what_the_spec_implies(schedule, at, cron, check):
    def change(data: dict) -> None:
        data["backups"] = {"schedule": schedule, "at": at, "keep": 5}

    app = spec(change)
    jobs = r.render_backup_jobs(app, STORAGE, NAME)
    assert list(jobs) == ["shop-backup", "shop-backup-check"]
    for (job, text), verb, when in zip(
        jobs.items(), ("backup", "check"), (cron, check), strict=True
    ):
        name, body = job_of(text)
        assert name == job
        assert body == expected_job(app, verb, when), job


def _calendar_times(calendar: str) -> tuple[str, str, str]:
    """(weekday or *, hour or *, minute) of one of node_files' systemd calendars."""
    m = re.fullmatch(r"(?:(Sun) )?\*-\*-\* (\*|\d\d):(\d\d):00 UTC", calendar)
    assert m, calendar
    return (m.group(1) or "*", m.group(2), m.group(3))


def _cron_times(cron: str) -> tuple[str, str, str]:
    minute, hour, day, month, weekday = cron.split()
    assert (day, month) == ("*", "*")
    return (
        {"0": "Sun", "*": "*"}[weekday],
        hour if hour == "*" else f"{int(hour):02d}",
        f"{int(minute):02d}",
    )


@pytest.mark.parametrize(("schedule", "at", "cron", "check"), SCHEDULES)
def test_each_schedule_is_the_cron_of_the_systemd_rungs_calendar(schedule, at, cron, check):
    """The same times as the single-vm and compose timers (node_files), in Nomad's cron."""
    app = spec(lambda d: d.update(backups={"schedule": schedule, "at": at}))
    assert r.backup_cron(app.backups) == cron
    assert r.check_cron(app.backups) == check
    assert _cron_times(cron) == _calendar_times(backup_calendar(app.backups))
    assert _cron_times(check) == _calendar_times(check_calendar(app.backups))


def test_the_configuration_is_node_files_with_the_task_s_secrets_and_nomad_s_containers(tmp_path):
    app = spec(with_files_service)
    text = r.backup_config_template(app, STORAGE, NAME)
    # the only actions: the two secret files in the task's secrets directory (host path)
    assert text.count(LEFT) == text.count(RIGHT) == 2
    assert {ch for ch in text if not ch.isascii()} == {LEFT, RIGHT}
    secrets = "/opt/nomad/data/alloc/0b5c1e0c-2c1b-4f1e-9d7a-3f6b2a1c9e8d/backup/secrets"
    rendered = render_like_nomad(
        {"data": text, "left_delimiter": LEFT, "right_delimiter": RIGHT},
        {"NOMAD_SECRETS_DIR": secrets},
        {},
    )
    path = tmp_path / "config.json"
    path.write_text(rendered)
    config = node_backup.load_config(
        str(path), "blueprints-backup", node_backup.CONFIG_FIELDS, node_backup.check_config
    )
    assert config["password_file"] == f"{secrets}/backup-password"
    assert config["env_file"] == f"{secrets}/backup-storage.env"
    assert config["name"] == NAME and config["repository"] == STORAGE.repository
    assert config["paths"] == ["/srv/data"] and config["keep"] == app.backups.keep
    assert config["volumes"] == ["/srv/data/pgdata", "/srv/data/uploads"]
    [dump] = config["dumps"]
    assert dump["exec"] == ["sh", "-c", r.EXEC_SCRIPT, "sh", "postgres"]
    assert dump["dump"] == EXAMPLE["services"]["postgres"]["backup"]["dump"]
    assert config["pause"] == ["sh", "-c", r.PAUSE_SCRIPT, "sh", "files"]
    assert config["resume"] == ["sh", "-c", r.RESUME_SCRIPT, "sh", "files"]
    # the scheduler owns the app: a restore is the runbook's, not a node command
    assert config["stop"] is None and config["start"] is None


HOSTILE = [
    '{{ env "NOMAD_TOKEN" }}',
    f'{LEFT}env "HOME"{RIGHT}',
    "${HOME} %{ if true }x%{ endif }",
    'quote " back \\ slash',
    "line\nbreak\ttab",
    "unicode \u00e9 \u2713 \u2028",
]


def test_no_spec_value_is_an_action_of_the_templates(tmp_path):
    """Whatever a dump command holds reaches blueprints-backup as written: the configuration is
    ASCII-only JSON, so it cannot hold the delimiters, and `{{` is no action there."""

    def change(data: dict) -> None:
        data["services"]["postgres"]["backup"] = {"dump": HOSTILE, "restore": HOSTILE[::-1]}

    app = spec(change)
    assert check_nomad(app) == []
    [backup, _] = r.render_backup_jobs(app, STORAGE, NAME).values()
    config_template = task_of(backup)["template"][1]
    assert config_template["destination"] == "local/config.json"
    config = json.loads(render_like_nomad(config_template, {"NOMAD_SECRETS_DIR": "/s"}, {}))
    assert config["dumps"][0]["dump"] == HOSTILE
    assert config["dumps"][0]["restore"] == HOSTILE[::-1]


def test_the_script_template_cannot_hold_its_delimiters(monkeypatch):
    source = backup_source()
    assert LEFT not in source and RIGHT not in source
    [backup, _] = r.render_backup_jobs(spec(), STORAGE, NAME).values()
    script = task_of(backup)["template"][0]
    assert (script["left_delimiter"], script["right_delimiter"]) == (LEFT, RIGHT)
    assert render_like_nomad(script, {}, {}) == source
    # a script that ever held one would be refused, not rendered wrong
    monkeypatch.setattr(r, "backup_source", lambda: source + f"# {LEFT}\n")
    with pytest.raises(ValueError, match="the delimiters of the template"):
        r.render_backup_jobs(spec(), STORAGE, NAME)


def test_the_jobs_hold_no_secret_and_each_variable_holds_both():
    app = spec()
    texts = "".join(r.render_backup_jobs(app, STORAGE, NAME).values())
    stored = r.backup_variables(app, STORAGE, PASSWORD, SECRET_KEY)
    assert PASSWORD not in texts and SECRET_KEY not in texts
    items = {
        "password": PASSWORD,
        "storage": (
            f"AWS_ACCESS_KEY_ID=AKIDEXAMPLE\nAWS_SECRET_ACCESS_KEY={SECRET_KEY}\n"
            "AWS_DEFAULT_REGION=fsn1\n"
        ),
    }
    # one Variable per job: a job's task reads its own only (a periodic run's identity is
    # its parent job's)
    assert stored == {"nomad/jobs/shop-backup": items, "nomad/jobs/shop-backup-check": items}
    for bad in ("", "two\nlines"):
        with pytest.raises(ValueError, match="password is empty or holds a line break"):
            r.backup_variables(app, STORAGE, bad, SECRET_KEY)


@pytest.mark.parametrize("name", ["backup", "backup-check"])
def test_a_service_cannot_take_a_backup_job_s_name(name):
    def change(data: dict) -> None:
        data["services"][name] = {"image": "busybox:1.36", "command": ["sleep", "1d"]}

    problems = check_nomad(spec(change))
    assert (
        ("services", name),
        f"is reserved by the nomad blueprint while backups are on: the backup job is named "
        f"shop-{name}, as this service's job would be; rename the service",
    ) in problems

    def off(data: dict) -> None:
        change(data)
        data["backups"] = {"enabled": False}

    assert check_nomad(spec(off)) == []


# --- the container commands, against a docker that filters names as docker does ----------------

FAKE_DOCKER = textwrap.dedent(
    '''\
    #!/usr/bin/env python3
    """docker ps/exec/pause/unpause over a JSON file of containers. `ps` applies its filters
    as dockerd does: status by state, name as an unanchored regular expression tried on the
    name with and without its leading slash."""
    import json, os, re, subprocess, sys

    state_file, log = os.environ["FAKE_DOCKER_STATE"], os.environ["FAKE_DOCKER_LOG"]
    containers = json.load(open(state_file))
    args = sys.argv[1:]
    with open(log, "a") as f:
        f.write(" ".join(args[:1] + [a for a in args[1:] if not a.startswith("--")][:2]) + "\\n")
    if args[0] == "ps":
        filters = [args[i + 1] for i, a in enumerate(args) if a == "--filter"]
        status = [f.split("=", 1)[1] for f in filters if f.startswith("status=")]
        names = [f.split("=", 1)[1] for f in filters if f.startswith("name=")]
        for cid, c in sorted(containers.items()):
            if c["status"] == "exited" and not status:
                continue
            if status and c["status"] not in status:
                continue
            full = "/" + c["name"]
            if names and not any(re.search(n, full) or re.search(n, c["name"]) for n in names):
                continue
            print(cid)
    elif args[0] == "exec":
        assert args[1] == "-i", args
        c = containers[args[2]]
        if c["status"] != "running":
            sys.exit(f"Error response from daemon: container {args[2]} is not running")
        sys.exit(subprocess.run(args[3:], cwd=c["root"]).returncode)
    elif args[0] in ("pause", "unpause"):
        want = "running" if args[0] == "pause" else "paused"
        for cid in args[1:]:
            if containers[cid]["status"] != want:
                sys.exit(f"Error response from daemon: container {cid} is not {want}")
            containers[cid]["status"] = "paused" if args[0] == "pause" else "running"
            print(cid)
        json.dump(containers, open(state_file, "w"))
    else:
        sys.exit(f"fake docker: {args[0]} is not emulated")
    '''
)
UUIDS = [
    "0b5c1e0c-2c1b-4f1e-9d7a-3f6b2a1c9e8d",
    "5d0f3b7e-8a41-4c62-b1e9-0c7d2f4a6b13",
    "9e2a6c41-7f03-4d8b-a5c2-1b9e0d3f7a64",
    "c4f1a8e2-3b6d-4e90-8f17-2a5c9d0b6e31",
    "e7b3d2a9-6c15-4f48-9a0e-5d1c8b7f2a46",
]


class Node:
    """A data node's docker, as far as the backup reaches it: containers named `<task>-<alloc
    id>` as Nomad's docker driver names them, each with a root directory to run commands in."""

    def __init__(self, tmp_path: Path, containers: Mapping[str, tuple[str, str]]):
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        (self.bin / "docker").write_text(FAKE_DOCKER)
        (self.bin / "docker").chmod(0o755)
        self.state = tmp_path / "containers.json"
        self.log = tmp_path / "docker.log"
        self.log.write_text("")
        state = {}
        for cid, (name, status) in containers.items():
            root = tmp_path / "containers" / cid
            root.mkdir(parents=True)
            (root / "whoami").write_text(name + "\n")
            state[cid] = {"name": name, "status": status, "root": str(root)}
        self.state.write_text(json.dumps(state))
        self.env = {
            **os.environ,
            "PATH": f"{self.bin}:{os.environ['PATH']}",
            "FAKE_DOCKER_STATE": str(self.state),
            "FAKE_DOCKER_LOG": str(self.log),
        }

    def run(self, argv: list[str], stdin: str = "") -> subprocess.CompletedProcess:
        return subprocess.run(
            argv, input=stdin, env=self.env, capture_output=True, text=True, timeout=60, check=False
        )

    def status(self) -> dict[str, str]:
        return {c["name"]: c["status"] for c in json.loads(self.state.read_text()).values()}


def containers_of_a_node() -> dict[str, tuple[str, str]]:
    return {
        "c1": (f"postgres-{UUIDS[0]}", "running"),
        # not postgres's: another service whose name starts alike, an old stopped instance,
        # a name without an allocation id, a prestart task
        # (listed first, so a filter that let one through would pick it)
        "a2": (f"postgres-admin-{UUIDS[1]}", "running"),
        "a3": (f"postgres-{UUIDS[2]}", "exited"),
        "a4": ("postgres-1", "running"),
        "a5": (f"wait-for-dependencies-{UUIDS[3]}", "exited"),
        "a6": (f"old-postgres-{UUIDS[3]}", "running"),
        # (a service may be named like that: [a-z0-9-])
        "a7": (f"postgres-{UUIDS[1]}-{UUIDS[2]}", "running"),
        "c6": (f"files-{UUIDS[4]}", "running"),
    }


@pytest.mark.parametrize("script", ["EXEC_SCRIPT", "PAUSE_SCRIPT", "RESUME_SCRIPT"])
def test_the_container_commands_pass_shellcheck(tmp_path, script):
    path = tmp_path / f"{script.lower()}.sh"
    path.write_text("#!/bin/sh\n" + getattr(r, script) + "\n")
    validators.shellcheck(path, "sh")


def test_exec_runs_in_the_service_s_running_container_with_stdin(tmp_path):
    node = Node(tmp_path, containers_of_a_node())
    runtime = r.backup_runtime()
    done = node.run([*runtime.exec("postgres"), "sh", "-c", "cat whoami; cat"], stdin="from stdin")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"postgres-{UUIDS[0]}\nfrom stdin"
    done = node.run([*runtime.exec("files"), "cat", "whoami"])
    assert done.stdout == f"files-{UUIDS[4]}\n"
    # the command's own exit status comes back
    assert node.run([*runtime.exec("postgres"), "sh", "-c", "exit 7"]).returncode == 7


def test_exec_without_a_running_container_says_so(tmp_path):
    containers = containers_of_a_node()
    containers["c1"] = (f"postgres-{UUIDS[0]}", "exited")
    node = Node(tmp_path, containers)
    done = node.run([*r.backup_runtime().exec("postgres"), "cat", "whoami"])
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == (
        "no running container of postgres on this node (Nomad names it postgres-<allocation "
        "id>); is its job running?\n"
    )


def test_pause_and_resume_touch_the_listed_services_only(tmp_path):
    node = Node(tmp_path, containers_of_a_node())
    runtime = r.backup_runtime()
    before = node.status()
    done = node.run(runtime.pause(["files", "postgres"]))
    assert done.returncode == 0, done.stderr
    paused = {n for n, s in node.status().items() if s != before[n]}
    assert paused == {f"files-{UUIDS[4]}", f"postgres-{UUIDS[0]}"}
    assert set(node.status()[n] for n in paused) == {"paused"}
    # exec finds no running container while it is paused
    assert node.run([*runtime.exec("postgres"), "true"]).returncode == 1
    done = node.run(runtime.resume(["files", "postgres"]))
    assert done.returncode == 0, done.stderr
    assert node.status() == before
    # resuming what is not paused does nothing and fails nothing
    assert node.run(runtime.resume(["files", "postgres"])).returncode == 0
    assert node.status() == before


def test_pause_fails_when_a_service_has_no_running_container(tmp_path):
    containers = containers_of_a_node()
    del containers["c6"]
    node = Node(tmp_path, containers)
    runtime = r.backup_runtime()
    done = node.run(runtime.pause(["postgres", "files"]))
    assert done.returncode == 1 and "no running container of files on this node" in done.stderr
    # blueprints-backup then resumes: what was paused runs again
    assert node.run(runtime.resume(["postgres", "files"])).returncode == 0
    assert node.status()[f"postgres-{UUIDS[0]}"] == "running"


# --- a whole run, for real: the job's task directory, restic, an S3 bucket ---------------------


def test_a_backup_job_s_task_backs_up_and_checks_for_real(tmp_path, s3):
    """The backup and check jobs' tasks as Nomad would run them on the data node: templates
    rendered into a task directory from the Variables, then the task's command in it. The data
    volume is a directory here: the configuration's /srv/data and cache are moved under
    tmp_path, nothing else of it changes."""

    def change(data: dict) -> None:
        with_files_service(data)
        # the database's dump and restore, as commands in its container (its root directory)
        data["services"]["postgres"]["backup"] = {
            "dump": ["cat", "db"],
            "restore": ["sh", "-c", "cat > db"],
        }

    app = spec(change)
    bucket = "nomad-backup-run"
    boto3.client(
        "s3",
        endpoint_url=s3.url,
        region_name="us-east-1",
        aws_access_key_id="AKIDTEST",
        aws_secret_access_key=SECRET_KEY,
    ).create_bucket(Bucket=bucket)
    storage = Storage(bucket, s3.url, "us-east-1", "AKIDTEST", "restic/shop-nomad-test")
    node = Node(tmp_path, containers_of_a_node())
    pg_root = Path(json.loads(node.state.read_text())["c1"]["root"])
    (pg_root / "db").write_text("-- the database\nINSERT INTO orders VALUES (1);\n")
    data = tmp_path / "srv/data"
    (data / "uploads/nested").mkdir(parents=True)
    (data / "uploads/nested/report.txt").write_text("an upload\n")
    (data / "pgdata").mkdir()
    (data / "pgdata/base").write_text("database files: never read, the dump is their copy\n")

    variables = r.backup_variables(app, storage, PASSWORD, SECRET_KEY)
    for job, text in r.render_backup_jobs(app, storage, "shop-nomad-test").items():
        task = task_of(text)
        task_dir = tmp_path / "alloc" / job / "backup"
        lay_out_task(task, task_dir, variables)
        secrets = task_dir / "secrets"
        assert oct((secrets / "backup-password").stat().st_mode & 0o777) == "0o600"
        assert (secrets / "backup-password").read_text() == PASSWORD + "\n"
        config = task_dir / "local/config.json"
        config.write_text(
            config.read_text()
            .replace('"/srv/data', f'"{data}')
            .replace('"/var/cache/blueprints-backup"', f'"{tmp_path / "cache"}"')
        )
        [args] = [c["args"] for c in task["config"]]
        done = subprocess.run(
            [PYTHON, *args],
            cwd=task_dir,
            env={**node.env, "TMPDIR": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert PASSWORD not in done.stdout + done.stderr
        assert SECRET_KEY not in done.stdout + done.stderr
        if args[-1] == "backup":
            assert "postgres dumped" in done.stdout and "services paused for" in done.stdout
            # files paused around the snapshot only, and running again
            calls = node.log.read_text().splitlines()
            assert calls.count("pause c6") == calls.count("unpause c6") == 1
            assert calls.index("pause c6") < calls.index("unpause c6")
            assert node.status()[f"files-{UUIDS[4]}"] == "running"
        else:
            assert "repository checked" in done.stdout and "1 dump(s) restored" in done.stdout
    # what the snapshot holds: the upload and the dump, not the database's files
    task_dir = tmp_path / "alloc/shop-backup/backup"
    target = tmp_path / "restored"
    done = subprocess.run(
        [
            PYTHON,
            "local/blueprints-backup",
            "--config",
            "local/config.json",
            "restore",
            "latest",
            str(target),
        ],
        cwd=task_dir,
        env=node.env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    restored = target / str(data).lstrip("/")
    assert (restored / "uploads/nested/report.txt").read_text() == "an upload\n"
    assert (restored / ".blueprints-dumps/postgres.dump").read_text() == (
        pg_root / "db"
    ).read_text()
    assert not (restored / "pgdata/base").exists()


# --- the stacks ------------------------------------------------------------------------------

JOB = "nomad:index/job:Job"
VARIABLE = "nomad:index/variable:Variable"
BUCKET = "aws:s3/bucket:Bucket"
SERVER = ("hcloud:index/server:Server", "aws:ec2/instance:Instance")
HCLOUD_BUCKET = {
    "blueprints:backupBucket": "shop-backups",
    "blueprints:backupEndpoint": "https://fsn1.your-objectstorage.com",
    "blueprints:backupAccessKey": "AKIDEXAMPLE",
    "blueprints:backupSecretKey": SECRET_KEY,
}


@pytest.fixture(scope="module")
def plans() -> dict[str, Plan]:
    return {
        # the localstack stack sets a bucket (the stack creates it)
        "nomad-localstack": plan_stack("nomad-localstack", ROOT),
        # the hcloud stack sets none
        "nomad-hcloud": plan_stack("nomad-hcloud", ROOT),
        # Hetzner Object Storage: the user's bucket
        "nomad-hcloud+bucket": plan_stack("nomad-hcloud", ROOT, HCLOUD_BUCKET),
    }


def backup_resources(plan: Plan) -> tuple[dict, dict]:
    prefix = f"shop-{plan.stack}-"
    jobs = {x.name.removeprefix(prefix): x for x in plan.of_type(JOB) if "-job-backup" in x.name}
    variables = {
        x.name.removeprefix(prefix): x
        for x in plan.of_type(VARIABLE)
        if "-secrets-backup" in x.name
    }
    return jobs, variables


@pytest.mark.parametrize("which", ["nomad-localstack", "nomad-hcloud+bucket"])
def test_with_storage_the_jobs_and_their_variables_go_through_nomad_s_api(plans, which):
    plan = plans[which]
    prefix = f"shop-{plan.stack}-"
    jobs, variables = backup_resources(plan)
    assert sorted(jobs) == ["job-backup", "job-backup-check"]
    assert sorted(variables) == ["secrets-backup", "secrets-backup-check"]
    buckets = plan.of_type(BUCKET)
    if plan.stack == "nomad-localstack":
        [bucket] = buckets
        assert bucket.inputs["bucket"] == "shop-nomad-backups" and bucket.protect
        repository = "s3:http://localhost:4566/shop-nomad-backups/restic/shop-nomad-localstack"
    else:
        assert buckets == []  # Hetzner's bucket is the user's
        repository = "s3:https://fsn1.your-objectstorage.com/shop-backups/restic/shop-nomad-hcloud"
    readies = {f"{prefix}node-{i}-ready" for i in (1, 2, 3)}
    for short in ("backup", "backup-check"):
        job, variable = jobs[f"job-{short}"], variables[f"secrets-{short}"]
        inputs = job.plain_inputs()
        assert job.provider is not None and "nomad" in job.provider
        assert inputs["detach"] is True  # a periodic job: nothing to wait for
        assert not is_secret(job.inputs["jobspec"])  # readable in a preview
        name, body = job_of(inputs["jobspec"])
        assert name == f"shop-{short}"
        assert body["type"] == "batch" and body["periodic"][0]["crons"] == [
            "0 3 * * *" if short == "backup" else "0 5 * * 0"
        ]
        assert f'\\"repository\\": \\"{repository}\\"' in inputs["jobspec"]
        # after the nodes, its Variable and the bucket the stack creates
        assert readies | {variable.name} | {b.name for b in buckets} <= set(job.depends_on)
        assert variable.plain_inputs()["path"] == f"nomad/jobs/shop-{short}"
        assert is_secret(variable.inputs["items"])
        assert sorted(variable.plain_inputs()["items"]) == ["password", "storage"]
    outputs = plan.public_outputs()
    assert outputs["backupRepository"] == repository
    assert outputs["backupPassword"] == "[secret]" and is_secret(plan.outputs["backupPassword"])


@pytest.mark.parametrize("which", ["nomad-localstack", "nomad-hcloud+bucket"])
def test_the_backup_secrets_are_in_the_variables_only(plans, which):
    """The repository password and the bucket's secret key: in no user data, no job, no public
    input or output; in each backup Variable's items (secret)."""
    plan = plans[which]
    password = f"offline-shop-{plan.stack}-backup-password"
    key = SECRET_KEY if which.endswith("+bucket") else "<secret:backupSecretKey>"
    for server in [x for x in plan.resources if x.type in SERVER]:
        text = server_user_data(server)
        assert password not in text and key not in text, server.name
    for job in plan.of_type(JOB):
        spec_text = job.plain_inputs()["jobspec"]
        assert password not in spec_text and key not in spec_text, job.name
    public = yaml.safe_dump([x.public_inputs() for x in plan.resources])
    public += yaml.safe_dump(plan.public_outputs())
    assert password not in public and key not in public
    _, variables = backup_resources(plan)
    for variable in variables.values():
        items = variable.plain_inputs()["items"]
        assert items["password"] == password
        assert f"AWS_SECRET_ACCESS_KEY={key}\n" in items["storage"]
    # on disk (`blueprints render`), the Variables are written with their items: placeholders
    files = stack_files(plan)
    assert "release/variables/nomad/jobs/shop-backup.json" in files
    assert "release/jobs/shop-backup.nomad.hcl" in files


def test_without_storage_the_plan_says_what_to_set_and_backs_up_nothing(plans):
    plan = plans["nomad-hcloud"]
    jobs, variables = backup_resources(plan)
    assert jobs == {} and variables == {} and plan.of_type(BUCKET) == []
    sentence = what_to_set(StackSettings(blueprint="nomad", target="hcloud", location="fsn1"))
    assert sentence.startswith("the spec asks for backups but the stack has no backup storage")
    assert "blueprints:backupEndpoint (like https://fsn1.your-objectstorage.com)" in sentence
    assert sentence in plan.notes
    assert "backupRepository" not in plan.outputs and "backupPassword" not in plan.outputs
    assert not any("takes none yet" in n for n in plan.notes)


def test_with_backups_off_in_the_spec_nothing_is_backed_up(tmp_path):
    def off(data: dict) -> None:
        data["backups"]["enabled"] = False

    plan = plan_with_spec("nomad-localstack", tmp_path, off)
    jobs, variables = backup_resources(plan)
    assert jobs == {} and variables == {} and plan.of_type(BUCKET) == []
    assert "the spec turns backups off: nothing backs up the app's data" in plan.notes


def test_a_file_backed_service_is_paused_by_its_job(tmp_path):
    plan = plan_with_spec("nomad-localstack", tmp_path, with_files_service)
    jobs, _ = backup_resources(plan)
    task = task_of(jobs["job-backup"].plain_inputs()["jobspec"])
    config = json.loads(render_like_nomad(task["template"][1], {"NOMAD_SECRETS_DIR": "/s"}, {}))
    assert config["pause"] == ["sh", "-c", r.PAUSE_SCRIPT, "sh", "files"]
    assert [d["service"] for d in config["dumps"]] == ["postgres"]
