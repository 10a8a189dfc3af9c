"""The k8s rung's backups (release.backup_objects, the ConfigMap's script, the component's
wiring): every object strictly valid for the pinned Kubernetes, the spec's schedule and data
walked into the CronJobs, least privilege where it is claimed, secrets only in the Secret; the
script checked by `sh -n` and shellcheck and run for real, under busybox's shell (the one of the
restic and kubectl images), with the real restic against moto's S3 on 127.0.0.1.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import boto3
import kubernetes_validate
import pytest
import validators
import yaml
from emulators import MotoServer, free_port

from blueprints.backup import node_files
from blueprints.backup.node_backup import CHECK_SUBSET, NO_REPOSITORY, TAG
from blueprints.backup.storage import Storage, what_to_set
from blueprints.plan import is_secret, plan_stack
from blueprints.rungs.k8s import release as rel
from blueprints.rungs.k8s import rules
from blueprints.rungs.k8s.bootstrap import API_PORT
from blueprints.settings import parse_settings
from blueprints.spec import AppSpec, Backups

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "app.yaml").read_text())
SCHEMA_VERSION = ".".join(rel.KUBERNETES_VERSION.split(".")[:2]) + ".0"
STORAGE = Storage(
    bucket="shop-backups",
    endpoint="https://fsn1.your-objectstorage.com",
    region="fsn1",
    access_key="AKIDEXAMPLE",
    folder="restic/shop-k8s-hcloud",
)
PASSWORD = "restic-Pa55word-9c1e"
SECRET_KEY = "s3-Secret-Key-77ab"


def with_files(data: dict[str, Any] | None = None) -> dict[str, Any]:
    """The example app plus a service backed up as files: two volumes, no dump."""
    data = copy.deepcopy(data or EXAMPLE)
    data["services"]["files"] = {
        "image": "ghcr.io/example/files:2.0",
        "volumes": [
            {"volume": "uploads", "path": "/srv/uploads"},
            {"volume": "thumbs", "path": "/srv/thumbs"},
        ],
    }
    data["volumes"] |= {"uploads": {"size_gb": 5}, "thumbs": {"size_gb": 1}}
    return data


def spec(data: dict[str, Any] | None = None) -> AppSpec:
    return AppSpec.model_validate(copy.deepcopy(data or with_files()))


def by_name(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def pod_of(job: dict[str, Any]) -> dict[str, Any]:
    return job["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


def documents(app: AppSpec, cloud: rel.Cloud = "hcloud", **kwargs: Any) -> list[dict[str, Any]]:
    files = rel.manifests(
        app,
        cloud,
        {n: f"PLACEHOLDER-{n}" for n in app.secret_names()},
        backup=STORAGE,
        **kwargs,
    )
    return [d for text in files.values() for d in yaml.safe_load_all(text) if d]


# --- every object is valid, and what the spec asks for is there ---------------------------------


@pytest.mark.parametrize("cloud", ["hcloud", "aws"])
@pytest.mark.parametrize("data", [EXAMPLE, with_files()], ids=["example", "with-files"])
def test_every_backup_object_passes_kubernetes_validate_strict(cloud, data):
    app = spec(data)
    objects = [*rel.backup_objects(app), rel.backup_secret(app, STORAGE, "p", "k")]
    kinds = [o["kind"] for o in objects]
    for obj in objects:
        kubernetes_validate.validate(obj, SCHEMA_VERSION, strict=True)
    assert {"ConfigMap", "CronJob", "Secret", "Role", "RoleBinding", "ServiceAccount"} <= set(kinds)
    # the same objects are what manifests renders (the component sends those)
    rendered = {(d["kind"], d["metadata"]["name"]) for d in documents(app, cloud)}
    assert {(o["kind"], o["metadata"]["name"]) for o in objects} <= rendered


def test_strict_validation_rejects_a_misspelt_cronjob_field():
    job = by_name(rel.backup_objects(spec()), "CronJob")["backup-files"]
    job["spec"]["concurrencyPolcy"] = "Forbid"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, SCHEMA_VERSION, strict=True)


@pytest.mark.parametrize(
    ("schedule", "at", "cron", "check"),
    [
        ("hourly", "03:17", "17 * * * *", "47 5 * * 0"),
        ("daily", "03:00", "0 3 * * *", "0 5 * * 0"),
        ("daily", "23:45", "45 23 * * *", "45 1 * * 0"),
        ("weekly", "04:30", "30 4 * * 0", "30 6 * * 0"),
    ],
)
def test_schedule_follows_the_spec(schedule, at, cron, check):
    data = with_files()
    data["backups"] = {"schedule": schedule, "at": at, "keep": 4}
    app = spec(data)
    jobs = by_name(rel.backup_objects(app), "CronJob")
    assert sorted(jobs) == ["backup-check", "backup-files", "backup-postgres"]
    for name, job in jobs.items():
        assert job["spec"]["timeZone"] == "Etc/UTC"
        assert job["spec"]["schedule"] == (check if name == "backup-check" else cron)
    # the same moments as the VM rungs' systemd timers
    backups = Backups(schedule=schedule, at=at, keep=4)
    assert _calendar(cron) == node_files.backup_calendar(backups)
    assert _calendar(check) == node_files.check_calendar(backups)
    deadline = jobs["backup-files"]["spec"]["jobTemplate"]["spec"]["activeDeadlineSeconds"]
    assert deadline == rel.RUN_DEADLINE_SECONDS[schedule]
    # an hourly run is over (or failed) before the next one is due
    assert rel.RUN_DEADLINE_SECONDS["hourly"] < 3600


def _calendar(cron: str) -> str:
    """A cron schedule (minute hour * * day-of-week) as systemd's OnCalendar, for comparison."""
    minute, hour, _, _, dow = cron.split()
    day = "Sun " if dow == "0" else ""
    hour = "*" if hour == "*" else f"{int(hour):02d}"
    return f"{day}*-*-* {hour}:{int(minute):02d}:00 UTC"


def test_every_run_stays_failed_and_visible():
    for job in by_name(rel.backup_objects(spec()), "CronJob").values():
        s = job["spec"]
        assert s["concurrencyPolicy"] == "Forbid"
        assert 1 <= s["successfulJobsHistoryLimit"] <= 5 and 1 <= s["failedJobsHistoryLimit"] <= 5
        assert s["startingDeadlineSeconds"] > 0
        assert s["jobTemplate"]["spec"]["backoffLimit"] == 0
        pod = s["jobTemplate"]["spec"]["template"]["spec"]
        assert pod["restartPolicy"] == "Never"
        assert pod["automountServiceAccountToken"] is False and pod["enableServiceLinks"] is False
        assert pod["securityContext"] == {"seccompProfile": {"type": "RuntimeDefault"}}
        for container in pod["containers"] + pod.get("initContainers", []):
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert container["resources"]["limits"]["memory"]
            shell = "bash" if container["name"] == "dump" else "sh"
            assert container["command"][:2] == [
                shell,
                "/etc/blueprints-backup/blueprints-backup.sh",
            ]
        [restic] = pod["containers"]
        assert restic["image"] == rel.RESTIC_IMAGE == "restic/restic:0.17.3"
        assert restic["envFrom"] == [{"secretRef": {"name": "backup-storage"}}]


def test_a_file_backed_service_mounts_its_claims_read_only_beside_its_pod():
    app = spec()
    objects = rel.backup_objects(app)
    job = by_name(objects, "CronJob")["backup-files"]
    pod = pod_of(job)
    # its claims, as the StatefulSet names them: <template>-<statefulset>-0
    sts = by_name(rel.app_objects(app, "hcloud"), "StatefulSet")["files"]
    templates = [t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]]
    claims = {
        v["name"]: v["persistentVolumeClaim"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert sorted(c["claimName"] for c in claims.values()) == sorted(
        f"{t}-files-0" for t in templates
    )
    assert all(c["readOnly"] is True for c in claims.values())
    [restic] = pod["containers"]
    mounts = {m["name"]: m for m in restic["volumeMounts"]}
    for name, claim in claims.items():
        volume = claim["claimName"].removesuffix("-files-0")
        assert mounts[name] == {"name": name, "mountPath": f"/data/{volume}", "readOnly": True}
    assert restic["command"][2:] == ["backup", "/data/uploads", "/data/thumbs"]
    assert env_of(restic)["BACKUP_HOST"] == "shop-files"
    assert env_of(restic)["BACKUP_KEEP"] == "7"
    # a ReadWriteOnce claim is mounted on its node only: the pod goes where the service's is
    assert pod["affinity"] == {
        "podAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {
                    "labelSelector": {"matchLabels": sts["spec"]["selector"]["matchLabels"]},
                    "topologyKey": "kubernetes.io/hostname",
                }
            ]
        }
    }
    # root, to read files of any owner, with no capability but reading and searching
    assert restic["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"], "add": ["DAC_READ_SEARCH"]},
        "runAsUser": 0,
        "runAsNonRoot": False,
    }
    # no way into the API: no init container, no account, no token
    assert "initContainers" not in pod and "serviceAccountName" not in pod
    assert not any("projected" in v for v in pod["volumes"])
    assert "ServiceAccount" not in {o["kind"] for o in objects if "files" in o["metadata"]["name"]}


def test_a_dumped_service_execs_with_an_account_that_may_only_exec_into_its_pod():
    app = spec()
    postgres = app.services["postgres"]
    assert postgres.backup is not None  # the example's database declares a dump
    objects = rel.backup_objects(app)
    job = by_name(objects, "CronJob")["backup-postgres"]
    pod = pod_of(job)
    [dump] = pod["initContainers"]
    assert dump["image"] == rel.KUBECTL_IMAGE == "rancher/kuberlr-kubectl:v7.1.1"
    assert dump["command"][2:] == [
        "dump",
        "/dumps/postgres.dump",
        "kubectl",
        "--cache-dir=/tmp/kube-cache",
        "exec",
        "--namespace=shop",
        "postgres-0",
        "--container=postgres",
        "--",
        *postgres.backup.dump,
    ]
    assert env_of(dump) == {"KUBERLR_ALLOWDOWNLOAD": "false"}
    # the dump is backed up, not the claim, which this pod does not mount at all
    assert not any("persistentVolumeClaim" in v for v in pod["volumes"])
    assert "affinity" not in pod
    [restic] = pod["containers"]
    assert restic["command"][2:] == ["backup", "/dumps"]
    assert env_of(restic)["BACKUP_HOST"] == "shop-postgres"
    assert {"name": "dumps", "mountPath": "/dumps", "readOnly": True} in restic["volumeMounts"]
    # both containers unprivileged: the dump's reader needs no root
    for container in (dump, restic):
        assert container["securityContext"]["runAsNonRoot"] is True
        assert container["securityContext"]["runAsUser"] == 1000
        assert "add" not in container["securityContext"]["capabilities"]
    # an API token in the dumping container only, for its own account
    assert pod["serviceAccountName"] == "backup-postgres"
    token = {m["name"]: m for m in dump["volumeMounts"]}["kubernetes-api"]
    assert token["mountPath"] == "/var/run/secrets/kubernetes.io/serviceaccount"
    assert token["readOnly"] is True
    assert "kubernetes-api" not in {m["name"] for m in restic["volumeMounts"]}
    account = by_name(objects, "ServiceAccount")["backup-postgres"]
    assert account["automountServiceAccountToken"] is False
    role = by_name(objects, "Role")["backup-postgres"]
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["pods"],
            "resourceNames": ["postgres-0"],
            "verbs": ["get"],
        },
        {
            "apiGroups": [""],
            "resources": ["pods/exec"],
            "resourceNames": ["postgres-0"],
            "verbs": ["create", "get"],
        },
    ]
    binding = by_name(objects, "RoleBinding")["backup-postgres"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "backup-postgres",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "backup-postgres", "namespace": "shop"}
    ]
    # the file-backed service has no account; nothing else grants anything
    assert set(by_name(objects, "Role")) == {"backup-postgres"}
    assert not [o for o in objects if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]


def test_only_the_dumping_pods_reach_the_kubernetes_api():
    app = spec()
    objects = rel.backup_objects(app)
    policy = by_name(objects, "NetworkPolicy")["backup-kubernetes-api"]
    selector = policy["spec"]["podSelector"]
    jobs = by_name(objects, "CronJob")

    def selected(labels: dict[str, str]) -> bool:
        if any(labels.get(k) != v for k, v in selector["matchLabels"].items()):
            return False
        return all(labels.get(e["key"]) in e["values"] for e in selector["matchExpressions"])

    pods = {
        n: j["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
        for n, j in jobs.items()
    }
    assert {n for n, labels in pods.items() if selected(labels)} == {"backup-postgres"}
    assert policy["spec"]["policyTypes"] == ["Egress"]
    assert API_PORT == rel.KUBE_API_PORT
    ports = [
        (r["ports"][0]["port"], [p["ipBlock"]["cidr"] for p in r["to"]])
        for r in policy["spec"]["egress"]
    ]
    assert ports == [
        (6443, ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]),
        (443, ["10.43.0.1/32"]),
    ]
    # no Service, budget or policy of the app selects a backup pod (they have no name label)
    app_selectors = [
        o["spec"]["selector"]
        for o in rel.app_objects(app, "hcloud")
        if o["kind"] == "Service" and "selector" in o["spec"]
    ]
    for labels in pods.values():
        assert rel.LABEL_NAME not in labels
        assert not any(all(labels.get(k) == v for k, v in s.items()) for s in app_selectors)


def test_the_weekly_check_covers_every_service_and_restores_the_dumps():
    app = spec()
    check = by_name(rel.backup_objects(app), "CronJob")["backup-check"]
    pod = pod_of(check)
    [restic] = pod["containers"]
    assert restic["command"][2:] == ["check", "shop-files", "shop-postgres:/dumps/postgres.dump"]
    assert env_of(restic)["BACKUP_SCRATCH"] == "/scratch"
    assert restic["securityContext"]["runAsNonRoot"] is True
    assert not any("persistentVolumeClaim" in v for v in pod["volumes"])
    assert "serviceAccountName" not in pod and "affinity" not in pod


def test_the_secret_holds_the_storage_and_no_other_object_a_secret():
    app = spec()
    docs = documents(app, backup_password=PASSWORD, backup_secret_key=SECRET_KEY)
    secret = next(d for d in docs if d["metadata"]["name"] == "backup-storage")
    assert secret["kind"] == "Secret" and secret["metadata"]["namespace"] == "shop"
    assert secret["stringData"] == {
        "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": "fsn1",
        "RESTIC_PASSWORD": PASSWORD,
        "RESTIC_REPOSITORY": "s3:https://fsn1.your-objectstorage.com/shop-backups/restic/shop-k8s-hcloud",
    }
    for doc in docs:
        if doc is not secret:
            text = json.dumps(doc)
            assert PASSWORD not in text and SECRET_KEY not in text, doc["metadata"]["name"]
            # nothing of the storage either: it changes in one place
            assert "your-objectstorage" not in text and "AKIDEXAMPLE" not in text


def test_no_backup_object_when_the_spec_turns_backups_off_or_keeps_no_data():
    data = with_files()
    data["backups"] = {"enabled": False}
    assert rel.backup_objects(spec(data)) == []
    assert "backup.yaml" not in rel.manifests(
        spec(data), "hcloud", {n: "x" for n in spec(data).secret_names()}, backup=STORAGE
    )
    tiny = {
        "name": "tiny",
        "domain": "tiny.example.com",
        "acme_email": "ops@example.com",
        "services": {"job": {"image": "busybox:1.36"}},
    }
    assert rel.backup_objects(spec(tiny)) == []
    # no storage, no object
    app = spec()
    assert "backup.yaml" not in rel.manifests(app, "hcloud", {n: "x" for n in app.secret_names()})


def test_hostile_dump_commands_reach_kubectl_exactly():
    from test_render_k8s import NASTY, k8s_expand

    data = with_files()
    data["services"]["postgres"]["backup"]["dump"] = list(NASTY)
    app = spec(data)
    job = by_name(rel.backup_objects(app), "CronJob")["backup-postgres"]
    kubernetes_validate.validate(job, SCHEMA_VERSION, strict=True)
    [dump] = pod_of(job)["initContainers"]
    args = dump["command"]
    assert [k8s_expand(a, {"HOME": "/root"}) for a in args[args.index("--") + 1 :]] == NASTY


def test_k8s_rules_name_the_backup_jobs_that_cannot_exist():
    data = with_files()
    data["services"]["check"] = data["services"].pop("files")
    long = "s" * 46
    data["services"][long] = {
        "image": "busybox:1.36",
        "volumes": [{"volume": "extra", "path": "/x"}],
    }
    data["volumes"]["extra"] = {}
    problems = rules.check_app(spec(data))
    assert problems == [
        (
            ("services", "check"),
            "its data is backed up by a CronJob named backup-check, which is also the name of the "
            "weekly check of the backups; rename the service",
        ),
        (
            ("services", long),
            f"its data is backed up by a CronJob named backup-{long}, and Kubernetes limits "
            "CronJob names to 52 characters; shorten the service name to 45 characters or fewer",
        ),
    ]
    data["services"]["s" * 45] = data["services"].pop(long)
    data["services"]["files"] = data["services"].pop("check")
    assert rules.check_app(spec(data)) == []
    # without backups the names are free
    data["services"]["check"] = data["services"].pop("files")
    data["backups"] = {"enabled": False}
    assert rules.check_app(spec(data)) == []


# --- the script -----------------------------------------------------------------------------------


def script_file(tmp_path: Path) -> Path:
    configmap = by_name(rel.backup_objects(spec()), "ConfigMap")["backup-script"]
    assert list(configmap["data"]) == ["blueprints-backup.sh"]
    path = tmp_path / "blueprints-backup.sh"
    path.write_text(configmap["data"]["blueprints-backup.sh"])
    return path


@pytest.mark.parametrize("shell", [("sh",), ("busybox", "sh"), ("bash",)], ids=lambda s: s[0])
def test_script_parses_and_passes_shellcheck(tmp_path, shell):
    path = script_file(tmp_path)
    assert path.read_text().startswith("#!/bin/sh\n")
    validators.require(shell[0])
    done = subprocess.run([*shell, "-n", str(path)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    validators.shellcheck(path, "sh")
    # the constants it shares with the VM rungs' tool
    text = path.read_text()
    assert f"tag={TAG}\n" in text and f"subset={CHECK_SUBSET}\n" in text
    for marker in NO_REPOSITORY:
        assert f"*'{marker}'*) ;;" in text


# --- the script, run for real: busybox sh, restic, moto's S3 ------------------------------------


def restic_version() -> tuple[int, int]:
    out = subprocess.run(["restic", "version"], capture_output=True, text=True, check=True).stdout
    found = re.search(r"restic (\d+)\.(\d+)", out)
    assert found, out
    return int(found[1]), int(found[2])


@pytest.fixture(scope="module")
def s3(s3):
    """conftest's S3; the script also runs under busybox's sh, the restic image's shell."""
    validators.require("busybox")
    return s3


class Pod:
    """What a backup pod's containers see: the script, the Secret's environment, directories
    standing in for the claims, the dumps emptyDir and the scratch space."""

    def __init__(self, tmp_path: Path, s3: MotoServer, bucket: str):
        self.root = tmp_path
        self.script = script_file(tmp_path)
        boto3.client(
            "s3",
            endpoint_url=s3.url,
            region_name="us-east-1",
            aws_access_key_id="AKIDEXAMPLE",
            aws_secret_access_key=SECRET_KEY,
        ).create_bucket(Bucket=bucket)
        for d in ("cache", "tmp", "scratch", "dumps", "data/uploads"):
            (tmp_path / d).mkdir(parents=True)
        self.env = {
            "PATH": os.environ["PATH"],
            # the Secret backup-storage
            "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
            "RESTIC_PASSWORD": PASSWORD,
            "RESTIC_REPOSITORY": f"s3:{s3.url}/{bucket}/restic/shop-k8s",
            # the container's own
            "RESTIC_CACHE_DIR": str(tmp_path / "cache"),
            "TMPDIR": str(tmp_path / "tmp"),
            "BACKUP_SCRATCH": str(tmp_path / "scratch"),
            "BACKUP_KEEP": "2",
        }
        # --retry-lock is restic 0.16's; the restic here may be older (Debian's 0.14)
        if restic_version() >= (0, 16):
            self.env["BACKUP_RETRY_LOCK"] = "1m"

    def run(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        prefix: tuple[str, ...] = (),
        shell: tuple[str, ...] = ("busybox", "sh"),
    ):
        """The script as a container runs it: the restic image's shell is busybox's, the
        kubectl image's bash."""
        done = subprocess.run(
            [*prefix, *shell, str(self.script), *args],
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        for secret in (PASSWORD, SECRET_KEY):
            assert secret not in done.stdout + done.stderr
        return done

    def snapshots(self, host: str) -> list[dict[str, Any]]:
        done = subprocess.run(
            ["restic", "snapshots", "--json", "--host", host, "--tag", TAG],
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
        )
        return json.loads(done.stdout)

    def restore(self, snapshot: str, target: Path) -> None:
        subprocess.run(
            ["restic", "restore", snapshot, "--target", str(target)],
            env=self.env,
            capture_output=True,
            check=True,
        )


def write_files(data: Path, version: int) -> dict[str, bytes]:
    files = {
        "report one.pdf": os.urandom(50_000),
        "nested/deep/notes.txt": f"version {version}\n".encode(),
        "empty": b"",
    }
    for rel_path, body in files.items():
        path = data / rel_path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
    (data / "lost+found").mkdir(exist_ok=True)
    (data / "lost+found" / "#123").write_bytes(b"fsck leftovers")
    return files


def test_backup_creates_the_repository_keeps_the_newest_and_restores_the_same_bytes(tmp_path, s3):
    pod = Pod(tmp_path, s3, "k8s-files")
    data = tmp_path / "data/uploads"
    env = {"BACKUP_HOST": "shop-files"}
    ids, versions = [], []
    for version in range(3):
        versions.append(write_files(data, version))
        done = pod.run("backup", str(data), env=env)
        assert done.returncode == 0, done.stderr
        created = "created the repository at" in done.stdout
        assert created == (version == 0)  # once, into the empty bucket
        assert done.stdout.strip().endswith(
            f"blueprints-backup: backed up {data} as shop-files; its newest 2 snapshot(s) kept"
        )
        ids.append(pod.snapshots("shop-files")[-1]["id"])
    kept = pod.snapshots("shop-files")
    assert [s["id"] for s in kept] == ids[-2:]  # --keep-last 2, the oldest pruned
    assert all(s["hostname"] == "shop-files" and s["tags"] == [TAG] for s in kept)
    target = tmp_path / "restored"
    pod.restore(ids[-1], target)
    restored = target / str(data).lstrip("/")
    for rel_path, body in versions[-1].items():
        assert (restored / rel_path).read_bytes() == body
    assert not (restored / "lost+found").exists()
    # another service's snapshots are its own: its retention leaves these alone
    other = tmp_path / "data/other"
    other.mkdir()
    (other / "x").write_text("x")
    for _ in range(3):
        assert pod.run("backup", str(other), env={"BACKUP_HOST": "shop-other"}).returncode == 0
    assert [s["id"] for s in pod.snapshots("shop-files")] == ids[-2:]
    assert len(pod.snapshots("shop-other")) == 2


def test_dump_then_backup_then_check(tmp_path, s3):
    pod = Pod(tmp_path, s3, "k8s-dumps")
    db = tmp_path / "db.sql"
    db.write_bytes(b"-- database\nINSERT INTO orders VALUES (1, '\xc3\xa9');\n")
    dump = tmp_path / "dumps/postgres.dump"
    # the dumping container: `kubectl exec ... -- pg_dump ...`, here `cat`, under bash
    done = pod.run("dump", str(dump), "cat", str(db), shell=("bash",))
    assert done.returncode == 0, done.stderr
    assert dump.read_bytes() == db.read_bytes()
    assert re.fullmatch(r"blueprints-backup: postgres dumped \(\d+ bytes in \d+ s\)\n", done.stdout)
    assert oct(dump.stat().st_mode & 0o777) == "0o600"
    assert not (tmp_path / "dumps/postgres.dump.partial").exists()
    done = pod.run("backup", str(tmp_path / "dumps"), env={"BACKUP_HOST": "shop-postgres"})
    assert done.returncode == 0, done.stderr
    files = tmp_path / "data/uploads"
    write_files(files, 1)
    assert pod.run("backup", str(files), env={"BACKUP_HOST": "shop-files"}).returncode == 0

    entry = f"shop-postgres:{dump}"
    done = pod.run("check", "shop-files", entry)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith(
        f"blueprints-backup: repository checked ({CHECK_SUBSET} of the data read): 2 host(s) "
        "with snapshots, 1 dump(s) restored and present"
    )
    assert list((tmp_path / "scratch").iterdir()) == []  # the restored dump is cleaned up
    # a service without a snapshot, a dump the newest snapshot lacks: the check fails
    done = pod.run("check", "shop-files", "shop-redis")
    assert done.returncode == 1
    assert done.stderr.strip().endswith("the repository holds no snapshot of shop-redis")
    done = pod.run("check", f"shop-files:{tmp_path}/dumps/mysql.dump")
    assert done.returncode == 1
    assert done.stderr.strip().endswith(
        f"the newest snapshot of shop-files holds no usable dump ({tmp_path}/dumps/mysql.dump is "
        "missing or empty)"
    )


@pytest.mark.parametrize("shell", [("bash",), ("busybox", "sh")], ids=["bash", "busybox"])
def test_a_failed_or_empty_dump_leaves_nothing_behind(tmp_path, s3, shell):
    pod = Pod(tmp_path, s3, f"k8s-bad-dump-{shell[0]}")
    dump = tmp_path / "dumps/postgres.dump"
    failing = ["sh", "-c", "echo partial; echo 'pg_dump: connection refused' >&2; exit 3"]
    done = pod.run("dump", str(dump), *failing, shell=shell)
    assert done.returncode == 1
    assert "pg_dump: connection refused" in done.stderr  # its own message, in the pod's log
    assert done.stderr.strip().endswith(
        "blueprints-backup: the dump of postgres failed (exit 3, its own message above); no "
        "snapshot was taken"
    )
    assert list((tmp_path / "dumps").iterdir()) == []
    done = pod.run("dump", str(dump), "true", shell=shell)
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "blueprints-backup: the dump of postgres is empty; no snapshot was taken"
    )
    assert list((tmp_path / "dumps").iterdir()) == []


def test_a_wrong_password_fails_and_changes_nothing(tmp_path, s3):
    pod = Pod(tmp_path, s3, "k8s-password")
    data = tmp_path / "data/uploads"
    write_files(data, 1)
    env = {"BACKUP_HOST": "shop-files"}
    assert pod.run("backup", str(data), env=env).returncode == 0
    before = pod.snapshots("shop-files")
    write_files(data, 2)
    done = pod.run("backup", str(data), env={**env, "RESTIC_PASSWORD": "not-the-password"})
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"blueprints-backup: the repository at {pod.env['RESTIC_REPOSITORY']} does not open "
        "with this password (wrong password or no key found); nothing was changed, its "
        "snapshots are untouched"
    )
    assert "created the repository" not in done.stdout
    assert pod.snapshots("shop-files") == before


def test_restic_017_exit_statuses_decide_alone(tmp_path, s3):
    """The image's restic (0.17.3) says "no repository" with exit status 10 and "wrong
    password" with 12, in words the script does not look at: a wrapper gives the real restic
    here those statuses and messages, so these branches run against a real repository too."""
    real = shutil.which("restic")
    assert real is not None
    stub = tmp_path / "restic-0.17" / "restic"
    stub.parent.mkdir()
    stub.write_text(
        "#!/bin/sh\n"
        'if [ "$1 $2" = "cat config" ]; then\n'
        f"  err=$({real} cat config 2>&1 >/dev/null) && exit 0\n"
        "  case $err in\n"
        '  *"wrong password"*) echo "Fatal: the password does not fit" >&2; exit 12 ;;\n'
        '  *"does not exist"*) echo "Fatal: no repo here" >&2; exit 10 ;;\n'
        "  esac\n"
        '  printf "%s\\n" "$err" >&2; exit 1\n'
        "fi\n"
        f'exec {real} "$@"\n'
    )
    stub.chmod(0o755)
    pod = Pod(tmp_path, s3, "k8s-exit-statuses")
    pod.env["PATH"] = f"{stub.parent}:{pod.env['PATH']}"
    data = tmp_path / "data/uploads"
    write_files(data, 1)
    env = {"BACKUP_HOST": "shop-files"}
    done = pod.run("backup", str(data), env=env)
    assert done.returncode == 0, done.stderr
    assert "created the repository at" in done.stdout  # exit status 10: none yet, created
    before = pod.snapshots("shop-files")
    done = pod.run("backup", str(data), env={**env, "RESTIC_PASSWORD": "not-the-password"})
    assert done.returncode == 1  # exit status 12: refused, nothing created or changed
    assert "does not open with this password" in done.stderr
    assert pod.snapshots("shop-files") == before


def test_unreachable_storage_or_a_missing_volume_fails_and_creates_nothing(tmp_path, s3):
    pod = Pod(tmp_path, s3, "k8s-unreachable")
    data = tmp_path / "data/uploads"
    write_files(data, 1)
    repository = f"s3:http://127.0.0.1:{free_port()}/k8s-unreachable/restic"
    env = {"BACKUP_HOST": "shop-files", "RESTIC_REPOSITORY": repository}
    done = pod.run("backup", str(data), env=env)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"blueprints-backup: cannot reach the repository at {repository}: ")
    assert "connection refused" in last
    missing = tmp_path / "data/not-mounted"
    done = pod.run("backup", str(data), str(missing), env={"BACKUP_HOST": "shop-files"})
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"blueprints-backup: {missing} is missing (is the volume mounted?); nothing was backed up"
    )
    # neither run created a repository
    listed = boto3.client(
        "s3",
        endpoint_url=s3.url,
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="x",
    ).list_objects_v2(Bucket="k8s-unreachable")
    assert listed.get("KeyCount", 0) == 0


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        ((), {}, "usage: blueprints-backup.sh dump FILE COMMAND..."),
        (("restore",), {}, "usage: blueprints-backup.sh"),
        (("backup", "/data"), {"BACKUP_HOST": ""}, "BACKUP_HOST is not set"),
        (("backup", "/data"), {"BACKUP_HOST": "h", "BACKUP_KEEP": "7;"}, "BACKUP_KEEP must be"),
        (("check", "h"), {"RESTIC_PASSWORD": ""}, "RESTIC_PASSWORD is not set"),
    ],
    ids=["no-command", "unknown-command", "no-host", "bad-keep", "no-password"],
)
def test_bad_usage_is_one_line_exit_2(tmp_path, s3, request, args, env, message):
    pod = Pod(tmp_path, s3, f"k8s-usage-{request.node.callspec.id}")
    done = pod.run(*args, env=env)
    assert done.returncode == 2
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="changing file owners and capabilities needs root")
def test_dac_read_search_is_the_one_capability_the_file_backup_needs(tmp_path, s3):
    """The file-backed restic container's securityContext, for real: root with every
    capability dropped but DAC_READ_SEARCH reads a database's 0700 files owned by another
    user; without it, it cannot, and the backup fails saying so."""
    validators.require("setpriv")
    pod = Pod(tmp_path, s3, "k8s-capabilities")
    data = tmp_path / "data/uploads"
    files = write_files(data, 1)
    for path in [data, *data.rglob("*")]:
        os.chown(path, 999, 999)
        path.chmod(0o700 if path.is_dir() else 0o600)
    env = {"BACKUP_HOST": "shop-files"}
    # as the container: uid 0, no new privileges, the bounding set (so every capability root
    # gets) only what the securityContext adds
    only = ("setpriv", "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all,+dac_read_search")
    done = pod.run("backup", str(data), env=env, prefix=only)
    assert done.returncode == 0, done.stderr
    target = tmp_path / "restored"
    pod.restore("latest", target)
    restored = target / str(data).lstrip("/")
    for rel_path, body in files.items():
        assert (restored / rel_path).read_bytes() == body
    none = ("setpriv", "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all")
    done = pod.run("backup", str(data), env=env, prefix=none)
    assert done.returncode == 1
    assert "permission denied" in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"blueprints-backup: restic could not read some files (listed above); the snapshot of "
        f"{data} is incomplete: fix it and back up again"
    )


# --- the stacks, planned -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plans():
    overrides = {"blueprints:backupSecretKey": SECRET_KEY}
    return {s: plan_stack(s, ROOT, overrides) for s in ("k8s-localstack", "k8s-hcloud")}


def kube(plan) -> dict[tuple[str, str], Any]:
    return {
        (r.inputs["kind"], r.inputs["metadata"]["name"]): r
        for r in plan.resources
        if r.type.startswith("kubernetes:") and "metadata" in r.inputs
    }


def test_with_a_bucket_the_cluster_runs_the_backup_jobs(plans):
    plan = plans["k8s-localstack"]
    objects = kube(plan)
    jobs = sorted(n for k, n in objects if k == "CronJob")
    assert jobs == ["backup-check", "backup-postgres"]
    p = "shop-k8s-localstack"
    # after what its pods read, the account it execs with, and the cluster's readiness
    job = objects[("CronJob", "backup-postgres")]
    for needed in (
        f"{p}-secret-shop-backup-storage",
        f"{p}-configmap-shop-backup-script",
        f"{p}-rolebinding-shop-backup-postgres",
        f"{p}-namespace-shop",
        f"{p}-worker-3-ready",
    ):
        assert needed in job.depends_on
    secret = objects[("Secret", "backup-storage")]
    assert is_secret(secret.inputs["stringData"])
    values = secret.plain_inputs()["stringData"]
    password = f"offline-{p}-backup-password"
    assert values == {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": "eu-central-1",
        "RESTIC_PASSWORD": password,
        "RESTIC_REPOSITORY": f"s3:http://localhost:4566/shop-backups/restic/{p}",
    }
    # no secret value in any other resource's inputs, nor in the public outputs
    for r in plan.resources:
        if r is secret or r.type == "random:index/randomPassword:RandomPassword":
            continue
        for key, value in r.inputs.items():
            if is_secret(value):
                continue
            text = json.dumps(r.plain_inputs()[key])
            assert SECRET_KEY not in text and password not in text, (r.name, key)
    out = plan.public_outputs()
    assert out["backupRepository"] == values["RESTIC_REPOSITORY"]
    assert out["backupPassword"] == "[secret]" and is_secret(plan.outputs["backupPassword"])
    assert not any("no backup storage" in n for n in plan.notes)
    # the etcd snapshots still go to the same bucket, which the stack still creates itself
    [bucket] = plan.of_type("aws:s3/bucket:Bucket")
    assert bucket.inputs["bucket"] == "shop-backups"
    assert plan.public_outputs()["etcdSnapshots"] == "s3://shop-backups/etcd-snapshots"


def test_without_a_bucket_the_plan_says_what_to_set_and_runs_no_job(plans):
    plan = plans["k8s-hcloud"]
    objects = kube(plan)
    assert not [n for k, n in objects if k == "CronJob" or "backup" in n]
    stack = yaml.safe_load((ROOT / "stacks/Pulumi.k8s-hcloud.yaml").read_text())["config"]
    settings = parse_settings(
        {k.removeprefix("blueprints:"): v for k, v in stack.items() if k.startswith("blueprints:")},
        "stacks/Pulumi.k8s-hcloud.yaml",
    )
    sentence = what_to_set(settings)
    assert "create an Object Storage bucket" in sentence
    assert [n for n in plan.notes if sentence in n]
    assert "backupRepository" not in plan.outputs


def test_an_hcloud_stack_with_a_bucket_backs_up_to_it():
    plan = plan_stack(
        "k8s-hcloud",
        ROOT,
        {
            "blueprints:backupBucket": "shop-backups",
            "blueprints:backupEndpoint": "https://fsn1.your-objectstorage.com",
            "blueprints:backupAccessKey": "AKIDEXAMPLE",
            "blueprints:backupSecretKey": SECRET_KEY,
        },
    )
    objects = kube(plan)
    assert ("CronJob", "backup-postgres") in objects
    values = objects[("Secret", "backup-storage")].plain_inputs()["stringData"]
    assert values["RESTIC_REPOSITORY"] == (
        "s3:https://fsn1.your-objectstorage.com/shop-backups/restic/shop-k8s-hcloud"
    )
    assert values["AWS_DEFAULT_REGION"] == "fsn1"
    # the user's bucket: the stack creates none
    assert not [r for r in plan.resources if "bucket" in r.type.lower()]


def test_a_shared_volume_is_backed_up_once_with_its_first_user():
    data = with_files()
    data["services"]["viewer"] = {
        "image": "ghcr.io/example/viewer:1.0",
        "volumes": [{"volume": "uploads", "path": "/srv/uploads", "read_only": True}],
    }
    data["services"]["zeta"] = {
        "image": "ghcr.io/example/zeta:1.0",
        "volumes": [
            {"volume": "thumbs", "path": "/srv/thumbs"},
            {"volume": "own", "path": "/srv/own"},
        ],
    }
    data["volumes"]["own"] = {"size_gb": 1}
    app = spec(data)
    assert [name for name, _ in rel.backed_up(app)] == ["files", "postgres", "zeta"]
    jobs = by_name(rel.backup_objects(app), "CronJob")
    assert "backup-viewer" not in jobs
    files = pod_of(jobs["backup-files"])
    assert files["containers"][0]["command"][2:] == ["backup", "/data/uploads", "/data/thumbs"]
    zeta = pod_of(jobs["backup-zeta"])
    # thumbs is files'; zeta backs up its own volume only
    assert zeta["containers"][0]["command"][2:] == ["backup", "/data/own"]
    assert [
        v["persistentVolumeClaim"]["claimName"]
        for v in zeta["volumes"]
        if "persistentVolumeClaim" in v
    ] == ["own-zeta-0"]
    # files backs the shared volumes up from their claims of their own
    assert [
        v["persistentVolumeClaim"]["claimName"]
        for v in files["volumes"]
        if "persistentVolumeClaim" in v
    ] == ["uploads-shared", "thumbs-shared"]
    # the shared volumes are claims of their own; the others their StatefulSet's templates
    objects = rel.app_objects(app, "hcloud")
    claims = by_name(objects, "PersistentVolumeClaim")
    assert sorted(claims) == ["thumbs-shared", "uploads-shared"]
    sts = by_name(objects, "StatefulSet")
    assert [t["metadata"]["name"] for t in sts["zeta"]["spec"]["volumeClaimTemplates"]] == ["own"]
    assert "volumeClaimTemplates" not in sts["viewer"]["spec"]
