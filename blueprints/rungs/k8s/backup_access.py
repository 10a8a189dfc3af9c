"""`blueprints backup | backups | restore` on the k8s rung: what runs on the first control plane.

The CLI reaches the node over SSH as `deploy` (blueprints.backup.remote); every command here is
one POSIX sh script (`sh -c SCRIPT`, every value in it shell-quoted) that drives the cluster with
k3s's bundled kubectl as root (`sudo k3s kubectl`, root's kubeconfig). Nothing runs restic on
the node: restic runs in the cluster, in the image and with the Secret the backup CronJobs use
(release.py), so the repository's keys never leave the cluster.

- now: a Job from each service's backup CronJob (`kubectl create job --from=cronjob/...`), one
  after the other, each polled until it succeeded or failed (then its logs are printed) or its
  CronJob's run deadline passed.
- snapshots: `restic snapshots --json` in a one-off pod (`kubectl run --rm -i`), non-root, as the
  CronJobs' restic containers.
- restore SNAPSHOT (`latest`: every backed-up service from its own newest snapshot; an id: the
  one service whose snapshot it is, found with `restic snapshots --json ID`): prints the steps,
  then takes them. What is read from the repository is read first, while the app runs, so a
  failed download stops before anything is stopped; nothing is overwritten before what writes it
  is stopped; what is replaced is kept (a dump of the database as it was, on this node; a
  claim's files, moved aside on the claim).

One-off restic pods wait for a line on their standard input before restic starts: `kubectl run
-i` attaches only once the pod runs, and output written before that (the start of a dump) would
be lost, so restic starts only once kubectl is attached and forwards that line.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from blueprints.backup.node_backup import TAG
from blueprints.backup.remote import Access, RemoteError, required_output
from blueprints.rungs.k8s import release as rel
from blueprints.spec import AppSpec, Service

# A Deployment's replica count from before a restore scaled it to 0 (a restore that fails after
# data changed leaves the app stopped; a later restore scales it back to this count).
REPLICAS_ANNOTATION = "blueprints.dev/replicas-before-restore"
ADMIN_COMPONENT = "backup-admin"
RESTORE_COMPONENT = "restore"
# Prefixes of what a restore leaves at a claim's root: the data as it was (kept) and the
# snapshot's copy while it is restored (removed once in place).
BEFORE_PREFIX = ".blueprints-before-restore-"
STAGE_PREFIX = ".blueprints-restore-"
# How long restic waits for another job's lock (a backup's prune) before it gives up.
RETRY_LOCK = "10m"
RESTORE_DEADLINE_SECONDS = 6 * 3600
# After a Job's activeDeadlineSeconds the controller fails it; this long is left for that.
DEADLINE_MARGIN_SECONDS = 120
POLL_SECONDS = 5
PROGRESS_SECONDS = 60
POD_GONE_SECONDS = rel.STOP_TIMEOUT_SECONDS + 270
READY_TIMEOUT = "600s"
POD_RUNNING_TIMEOUT = "10m"
# A Job's name ends up in a label (63 characters at most): NAME-<unix time> needs 11 of them.
NAME_MAX = 63 - 11
# A Job's exit status that says nothing was changed (restore-job script).
UNCHANGED = 3
# The one-off pods' restic, started once kubectl is attached (see the module's docstring).
GATED_RESTIC = 'read -r _ || :; exec restic "$@"'
SNAPSHOT = re.compile(r"latest|[0-9a-f]{8,64}")
SSH_COMMAND = re.compile(r"\s*ssh\s+(?:\S+\s+)*?(?:[^@\s]+@)?([^@\s]+)\s*")


def backup_access(app: AppSpec, outputs: Mapping[str, object]) -> Access:
    """The k8s rung's Access: the first control plane, the deploy key, kubectl scripts."""
    return Access(
        host=_control_plane(outputs),
        key=required_output(outputs, "deployKey"),
        now=now_command(app),
        snapshots=snapshots_command(app),
        restore_plan=lambda snapshot: restore_command(app, snapshot, plan=True),
        restore=lambda snapshot: restore_command(app, snapshot, plan=False),
        # `latest`: each service's own newest snapshot (one id belongs to one service)
        pin_latest=False,
    )


def _control_plane(outputs: Mapping[str, object]) -> str:
    """The public address of the first control plane (the lowest name, `<prefix>-cp-1`)."""
    ips = outputs.get("controlPlaneIps")
    if isinstance(ips, Mapping):
        found = {n: ip for n, ip in ips.items() if isinstance(ip, str) and ip}
        if found:
            return found[min(found, key=_natural)]
    command = outputs.get("sshCommand")
    if isinstance(command, str):
        match = SSH_COMMAND.fullmatch(command)
        if match:
            return match.group(1)
    raise RemoteError(
        "the stack has no output controlPlaneIps (nor sshCommand) to reach its first control "
        "plane; has `pulumi up` run?"
    )


def _natural(name: str) -> list[tuple[int, int | str]]:
    """cp-2 before cp-10."""
    return [(0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"(\d+)", name) if p]


# --- shell -------------------------------------------------------------------------------------

q = shlex.quote


@dataclass(frozen=True)
class Var:
    """A shell variable in a text built with `_cat`."""

    name: str


def _cat(*parts: str | Var) -> str:
    """One shell word: literal parts quoted, variables expanded (double-quoted)."""
    return "".join(f'"${{{p.name}}}"' if isinstance(p, Var) else q(p) for p in parts if p != "")


def _command(script: str) -> str:
    return f"sh -c {q(script)}"


def _fit(base: str) -> str:
    """BASE, short enough that BASE-<unix time> fits a Job's name."""
    return base if len(base) <= NAME_MAX else base[:NAME_MAX].rstrip("-")


# Every node script: kubectl as root, the namespace, messages; what it writes (dumps) is for
# deploy and root only. `k` never reads the script's input; `ki` is for what streams stdin.
PRELUDE = r"""set -uf
umask 077
k() { sudo k3s kubectl "$@" </dev/null; }
ki() { sudo k3s kubectl "$@"; }
say() { printf '%s\n' "$*"; }
warn() { printf '%s: %s\n' "$prog" "$*" >&2; }
fail() {
  warn "$@"
  exit 1
}
"""

# wait_job JOB LIMIT: polls the Job until it succeeded (0), failed (1) or LIMIT seconds passed
# (2), saying how long it has been running every PROGRESS seconds.
WAIT_JOB = r"""wait_job() {
  w_job=$1
  w_limit=$2
  w_started=$(date +%s)
  w_told=$w_started
  w_misses=0
  w_path='{.status.succeeded}/{.status.failed}/{.status.conditions[?(@.type=="Failed")].status}'
  while :; do
    if w_status=$(k -n "$ns" get job "$w_job" -o "jsonpath=$w_path"); then
      w_misses=0
    else
      w_misses=$((w_misses + 1))
      [ "$w_misses" -lt 12 ] || return 1
      w_status=//
    fi
    w_succeeded=${w_status%%/*}
    w_rest=${w_status#*/}
    w_failed=${w_rest%%/*}
    w_condition=${w_rest#*/}
    case $w_succeeded in '' | *[!0-9]*) w_succeeded=0 ;; esac
    case $w_failed in '' | *[!0-9]*) w_failed=0 ;; esac
    [ "$w_succeeded" -lt 1 ] || return 0
    [ "$w_failed" -lt 1 ] && [ "$w_condition" != True ] || return 1
    w_at=$(date +%s)
    [ $((w_at - w_started)) -lt "$w_limit" ] || return 2
    if [ $((w_at - w_told)) -ge __PROGRESS__ ]; then
      say "  $w_job: running for $((w_at - w_started)) s"
      w_told=$w_at
    fi
    sleep __POLL__
  done
}
job_logs() {
  k -n "$ns" logs "job/$1" --all-containers=true --prefix=true ||
    warn "could not read the logs of the Job $1"
}
""".replace("__PROGRESS__", str(PROGRESS_SECONDS)).replace("__POLL__", str(POLL_SECONDS))


def _script(prog: str, app: AppSpec, *sections: str) -> str:
    head = f"prog={q(prog)}\nns={q(app.name)}\n"
    return head + PRELUDE + "".join(sections)


# --- now -----------------------------------------------------------------------------------------

BACKUP_NOW = r"""backup_now() {
  cronjob=$1
  job=$2
  limit=$3
  say "$cronjob: starting the Job $job"
  if ! k -n "$ns" create job "--from=cronjob/$cronjob" "$job" >/dev/null; then
    warn "could not start a Job from the CronJob $cronjob (kubectl's message above); is the" \
      "app released with backups (pulumi up)?"
    return 1
  fi
  status=0
  wait_job "$job" "$limit" || status=$?
  case $status in
  0)
    job_logs "$job"
    say "$cronjob: done"
    ;;
  1)
    job_logs "$job"
    warn "the Job $job failed: see its logs above"
    return 1
    ;;
  *)
    warn "the Job $job has not finished after $limit s; it goes on in the cluster:" \
      "sudo k3s kubectl -n $ns get job $job"
    return 1
    ;;
  esac
}
"""


def now_command(app: AppSpec) -> str:
    """Each backup CronJob of the app run now, one after the other (exit 1 if any failed)."""
    services = rel.backed_up(app)
    body = ["t=$(date +%s)\n", "failures=0\n"]
    if not services:
        body.append(
            'fail "the app has no data to back up (no service with volumes, or backups are off '
            'in the spec)"\n'
        )
    for name, _ in services:
        cronjob = rel.backup_job(name)
        prefix = _fit(f"{cronjob}-now")
        limit = rel.RUN_DEADLINE_SECONDS[app.backups.schedule] + DEADLINE_MARGIN_SECONDS
        body.append(
            f"backup_now {q(cronjob)} {_cat(prefix + '-', Var('t'))} {limit} ||"
            " failures=$((failures + 1))\n"
        )
    count = len(services)
    body.append(
        f'[ "$failures" -eq 0 ] || fail "$failures of {count} backup(s) failed"\n'
        f'say "{count} backup(s) done"\n'
    )
    return _command(_script("blueprints backup", app, WAIT_JOB, BACKUP_NOW, *body))


# --- one-off restic pods -------------------------------------------------------------------------


def _admin_labels(app: AppSpec, component: str, of: str | None = None) -> dict[str, str]:
    labels = {
        rel.LABEL_INSTANCE: app.name,
        rel.LABEL_MANAGED: "blueprints",
        rel.LABEL_COMPONENT: component,
    }
    if of is not None:
        labels[rel.BACKUP_OF] = of
    return labels


def _scratch() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """restic's cache and temporary directory (the root filesystem is read-only)."""
    volumes = [{"name": "cache", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}]
    mounts = [{"name": "cache", "mountPath": rel.CACHE_DIR}, {"name": "tmp", "mountPath": "/tmp"}]
    return volumes, mounts


def _restic_env() -> list[dict[str, str]]:
    return [
        {"name": "RESTIC_CACHE_DIR", "value": rel.CACHE_DIR},
        {"name": "TMPDIR", "value": rel.TMP_DIR},
    ]


def _pod_spec(containers: list[dict[str, Any]], volumes: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": rel.STOP_TIMEOUT_SECONDS,
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        "containers": containers,
        "volumes": volumes,
    }


def restic_overrides(args: Sequence[str]) -> str:
    """`kubectl run --overrides` (a JSON merge patch, so the container list is replaced whole):
    restic with ARGS, the repository's Secret, non-root as the CronJobs' restic containers, its
    standard input attached (and waited for, see the module's docstring)."""
    volumes, mounts = _scratch()
    container = {
        "name": "restic",
        "image": rel.RESTIC_IMAGE,
        # Kubernetes expands $(VAR) in command and args; doubled, every $ reaches sh as written.
        "command": [rel.escape_dollars(a) for a in ("sh", "-c", GATED_RESTIC, "restic")],
        "args": [rel.escape_dollars(a) for a in args],
        "stdin": True,
        "stdinOnce": True,
        "envFrom": [{"secretRef": {"name": rel.BACKUP_SECRET}}],
        "env": _restic_env(),
        "resources": json.loads(json.dumps(rel.RESTIC_RESOURCES)),
        "securityContext": rel._security(False),
        "volumeMounts": mounts,
    }
    return json.dumps({"spec": _pod_spec([container], volumes)}, sort_keys=True)


def _restic_pod_function(app: AppSpec) -> str:
    labels = ",".join(f"{k}={v}" for k, v in _admin_labels(app, ADMIN_COMPONENT).items())
    return (
        "restic_pod() {\n"
        '  printf \'go\\n\' | ki -n "$ns" run "$1" --rm -i --restart=Never --quiet \\\n'
        f"    --image={q(rel.RESTIC_IMAGE)} --pod-running-timeout={POD_RUNNING_TIMEOUT} \\\n"
        f'    --labels={q(labels)} --override-type=merge "--overrides=$2"\n'
        "}\n"
    )


def snapshots_command(app: AppSpec) -> str:
    """restic's JSON array of the repository's snapshots (tag blueprints), from a one-off pod."""
    overrides = restic_overrides(["--no-lock", "snapshots", "--json", "--tag", TAG])
    return _command(
        _script(
            "blueprints backups",
            app,
            _restic_pod_function(app),
            f'restic_pod {_cat("restic-snapshots-")}"$(date +%s)-$$" {q(overrides)}\n',
        )
    )


# --- restore -------------------------------------------------------------------------------------

# The restore Job's script, run by the restic image's busybox sh as root with CHOWN,
# DAC_OVERRIDE, FOWNER and FSETID:
#   sh -c SCRIPT blueprints-restore SNAPSHOT HOST TAG STAMP ROOT VOLUME...
# 1. restores /data/VOLUME of SNAPSHOT (host HOST, tag TAG) into ROOT/VOLUME/.blueprints-restore-
#    STAMP, on the claim itself (so moving it into place is a rename); any failure here removes
#    those copies and exits 3: nothing was changed;
# 2. per volume: moves the claim's entries (but lost+found and earlier restores' directories)
#    into ROOT/VOLUME/.blueprints-before-restore-STAMP, kept; moves the snapshot's entries into
#    place (old .blueprints-* directories inside the snapshot are left out); gives the claim's
#    root the snapshot's owner and mode; removes the staging directory. A failure here exits 1
#    and removes nothing.
JOB_SCRIPT = (
    r"""set -u
snapshot=$1
host=$2
tag=$3
stamp=$4
root=$5
shift 5
say() { printf 'blueprints-restore: %s\n' "$*"; }
unchanged() {
  printf 'blueprints-restore: %s; nothing was changed\n' "$*" >&2
  for vol in $volumes; do
    rm -rf "$root/$vol/__STAGE__$stamp"
  done
  exit __UNCHANGED__
}
partly() {
  printf 'blueprints-restore: %s; nothing was deleted:' "$1" >&2
  printf " the data as it was is in %s, the snapshot's copy in %s\n" "$2" "$3" >&2
  exit 1
}
volumes=$*
for vol in "$@"; do
  [ -d "$root/$vol" ] || unchanged "the claim of $vol is not mounted at $root/$vol"
done
for vol in "$@"; do
  stage=$root/$vol/__STAGE__$stamp
  rm -rf "$stage"
  mkdir -m 700 "$stage" || unchanged "cannot create $stage"
  say "restoring /data/$vol of snapshot $snapshot ($host) into $stage"
  restic --retry-lock __RETRY__ restore "$snapshot" --host "$host" --tag "$tag" \
    --target "$stage" --include "/data/$vol" || unchanged "restic restore failed (exit $?)"
  [ -d "$stage/data/$vol" ] || unchanged "snapshot $snapshot of $host holds no /data/$vol"
done
for vol in "$@"; do
  live=$root/$vol
  stage=$live/__STAGE__$stamp
  copy=$stage/data/$vol
  aside=$live/__BEFORE__$stamp
  mkdir -m 700 "$aside" || partly "cannot create $aside" "$live" "$copy"
  for entry in "$live"/* "$live"/.[!.]* "$live"/..?*; do
    [ -e "$entry" ] || [ -L "$entry" ] || continue
    case ${entry##*/} in lost+found | __BEFORE__* | __STAGE__*) continue ;; esac
    mv "$entry" "$aside/" || partly "moving $entry aside failed" "$aside" "$copy"
  done
  for entry in "$copy"/* "$copy"/.[!.]* "$copy"/..?*; do
    [ -e "$entry" ] || [ -L "$entry" ] || continue
    case ${entry##*/} in lost+found | __BEFORE__* | __STAGE__*) continue ;; esac
    mv "$entry" "$live/" || partly "moving $entry into place failed" "$aside" "$copy"
  done
  if ! chown "$(stat -c %u:%g "$copy")" "$live" || ! chmod "$(stat -c %a "$copy")" "$live"; then
    partly "giving $live the snapshot's owner and mode failed" "$aside" "$copy"
  fi
  rm -rf "$stage"
  say "$live holds snapshot $snapshot; the data as it was is in $aside"
done
""".replace("__STAGE__", STAGE_PREFIX)
    .replace("__BEFORE__", BEFORE_PREFIX)
    .replace("__UNCHANGED__", str(UNCHANGED))
    .replace("__RETRY__", RETRY_LOCK)
)

# Capabilities of the restore Job's root (all others dropped; no privilege escalation, a
# read-only root filesystem). restic restores every file's owner (CHOWN), then its mode and
# times although root no longer owns it (FOWNER), keeping setgid bits where root is not in the
# file's group (FSETID). Writing, renaming and removing inside directories of other users with
# modes like 0700, and renaming directories into another parent (which rewrites their `..`),
# need DAC_OVERRIDE, which also covers the reading DAC_READ_SEARCH gives the backup. All four
# are in Pod Security's baseline list. Not needed: SETUID/SETGID (no other identity), MKNOD (no
# device files in app data; restic fails the staging, nothing changes), SYS_ADMIN (restic
# restores only user.* extended attributes by default).
RESTORE_CAPABILITIES = ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID"]
# Replaced in the Job's manifest with the restore's time (unix seconds) on the node.
STAMP = "__BLUEPRINTS_STAMP__"


def restore_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"], "add": list(RESTORE_CAPABILITIES)},
        "runAsUser": 0,
        "runAsNonRoot": False,
    }


def _volumes_of(app: AppSpec, name: str) -> list[str]:
    """The volumes a service's backup holds: its own, and those several services mount of
    which it is the first user (backed up, and restored, once)."""
    return rel.owned_volumes(app, name)


def _also_stopped(app: AppSpec, name: str) -> list[str]:
    """The other services mounting a volume a service's backup holds: stopped with it while
    the volume is restored (their StatefulSets scaled to 0, then back)."""
    users = {u for v in _volumes_of(app, name) for u in app.volume_users(v)}
    return sorted(users - {name})


def restore_job(app: AppSpec, name: str, snapshot: str) -> dict[str, Any]:
    """The Job that puts a files-backed service's claims back as SNAPSHOT holds them (the
    service's StatefulSet scaled to 0 first). No node is named: the scheduler puts the pod where
    the claims can be mounted (a local-path volume's node; a Hetzner volume is attached to the
    pod's node once the service's pod has let go of it)."""
    volumes, mounts = _scratch()
    claims = _volumes_of(app, name)
    for index, volume in enumerate(claims):
        volumes.append(
            {
                "name": f"data-{index}",
                "persistentVolumeClaim": {"claimName": rel.claim_name(app, volume)},
            }
        )
        mounts.append({"name": f"data-{index}", "mountPath": f"{rel.DATA_DIR}/{volume}"})
    args = [snapshot, rel.backup_host(app, name), TAG, STAMP, rel.DATA_DIR, *claims]
    container = {
        "name": "restore",
        "image": rel.RESTIC_IMAGE,
        "command": [
            rel.escape_dollars(a) for a in ("sh", "-c", JOB_SCRIPT, "blueprints-restore", *args)
        ],
        "envFrom": [{"secretRef": {"name": rel.BACKUP_SECRET}}],
        "env": _restic_env(),
        "resources": json.loads(json.dumps(rel.RESTIC_RESOURCES)),
        "securityContext": restore_security(),
        "volumeMounts": mounts,
    }
    labels = _admin_labels(app, RESTORE_COMPONENT, name)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": f"{_fit(f'restore-{name}')}-{STAMP}",
            "namespace": app.name,
            "labels": labels,
        },
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": RESTORE_DEADLINE_SECONDS,
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": _pod_spec([container], volumes),
            },
        },
    }


RESTORE_FUNCTIONS = r"""step() {
  n=$((n + 1))
  printf '%s. %s\n' "$n" "$*"
}
has() {
  case $lookup in *"\"hostname\":\"$1\""* | *"\"hostname\": \"$1\""*) return 0 ;; esac
  return 1
}
deploy_list() {
  out=
  for pair in $deploys; do
    word=replicas
    [ "${pair#*=}" != 1 ] || word=replica
    out="${out:+$out, }${pair%%=*} (${pair#*=} $word)"
  done
  printf '%s' "$out"
}
deploy_back() {
  out=
  for pair in $deploys; do
    out="${out:+$out, }${pair%%=*} to ${pair#*=}"
  done
  printf '%s' "$out"
}
# wait_gone SELECTOR WHAT: until no pod matches SELECTOR
wait_gone() {
  g_started=$(date +%s)
  while :; do
    g_pods=$(k -n "$ns" get pods -l "$1" -o name) || g_pods=unknown
    [ -n "$g_pods" ] || return 0
    [ $(($(date +%s) - g_started)) -lt __GONE__ ] || fail "$2 still has pods after __GONE__ s"
    sleep 2
  done
}
scale_back() {
  rc=0
  for pair in $scaled; do
    k -n "$ns" scale "deployment/${pair%%=*}" "--replicas=${pair#*=}" >/dev/null || rc=1
  done
  [ "$rc" -eq 0 ] || return 1
  for pair in $scaled; do
    k -n "$ns" annotate "deployment/${pair%%=*}" "__ANNOTATION__-" >/dev/null ||
      warn "could not remove the annotation __ANNOTATION__ of ${pair%%=*}"
  done
  scaled=
}
scale_sts_back() {
  for pair in $sts_down; do
    k -n "$ns" scale "statefulset/${pair%%=*}" "--replicas=${pair#*=}" >/dev/null ||
      warn "could not scale the StatefulSet ${pair%%=*} back to ${pair#*=}"
  done
  sts_down=
}
on_exit() {
  status=$?
  [ "$status" -ne 0 ] || return 0
  scale_sts_back
  [ -n "$scaled" ] || return 0
  if [ "$written" = 0 ]; then
    if scale_back; then
      warn "nothing was restored; the Deployments are scaled back: $(deploy_back)"
      return 0
    fi
  fi
  warn "the Deployments stay scaled to 0 (the data may be partly restored); once it is right:"
  for pair in $scaled; do
    warn "  sudo k3s kubectl -n $ns scale deployment/${pair%%=*} --replicas=${pair#*=}"
  done
}
""".replace("__GONE__", str(POD_GONE_SECONDS)).replace("__ANNOTATION__", REPLICAS_ANNOTATION)


def restore_command(app: AppSpec, snapshot: str, plan: bool) -> str:
    """The restore's numbered steps, printed, then taken (plan=True: only printed; what it
    reads to print them, the snapshots and the Deployments, changes nothing)."""
    if not SNAPSHOT.fullmatch(snapshot):
        raise RemoteError(f"{snapshot!r} is not a snapshot id (hex) or latest")
    return _command(_Restore(app, snapshot).script(plan))


Indexed = tuple[int, str, Service]


class _Restore:
    """The restore script of one app and snapshot. Each backed-up service has an index i; the
    script's sel_<i> says whether the restore takes it (a snapshot id: only its service)."""

    def __init__(self, app: AppSpec, snapshot: str):
        self.app = app
        self.snapshot = snapshot
        self.latest = snapshot == "latest"
        indexed = [(i + 1, name, svc) for i, (name, svc) in enumerate(rel.backed_up(app))]
        self.services: list[Indexed] = indexed
        self.dumped = [(i, n, s) for i, n, s in indexed if s.backup is not None]
        self.files = [(i, n, s) for i, n, s in indexed if s.backup is None]

    def script(self, plan: bool) -> str:
        out = [
            f"plan={1 if plan else 0}\n",
            "now=$(date +%s)\n",
            # The plan runs before the restore does: its names carry <T>, the restore's time.
            "if [ \"$plan\" = 1 ]; then t='<T>'; else t=$now; fi\n",
            f'keep="$HOME/blueprints-restore/{self.app.name}-$t"\n',
            "n=0 written=0 scaled='' sts_down='' deploys='' lookup='' kept=''\n",
        ]
        if not self.services:
            out.append(
                "fail "
                + _cat(
                    "the app has no backed-up data to restore (no service with volumes, or "
                    "backups are off in the spec)"
                )
                + "\n"
            )
        else:
            out += [self._select(), self._deployments(), self._steps()]
            out.append('[ "$plan" = 0 ] || exit 0\n')
            out += [self._act()]
        return _script(
            "blueprints restore",
            self.app,
            _restic_pod_function(self.app),
            WAIT_JOB,
            RESTORE_FUNCTIONS,
            *out,
        )

    def _host(self, name: str) -> str:
        return rel.backup_host(self.app, name)

    def _source(self, name: str) -> str:
        host = self._host(name)
        return f"the newest snapshot of {host}" if self.latest else f"snapshot {self.snapshot}"

    def _select(self) -> str:
        """The snapshots there are (one pod): which services the restore takes."""
        args = ["--no-lock", "snapshots", "--json", "--tag", TAG]
        args += ["--latest", "1"] if self.latest else [self.snapshot]
        what = "the newest snapshots" if self.latest else f"snapshot {self.snapshot}"
        out = [
            f'lookup=$(restic_pod "restic-find-$now-$$" {q(restic_overrides(args))}) ||\n'
            f"  fail {_cat(f'listing {what} failed (the message above); nothing was changed')}\n"
        ]
        for i, name, _ in self.services:
            host = self._host(name)
            if self.latest:
                out.append(
                    f"sel_{i}=1\n"
                    f"has {q(host)} || fail "
                    + _cat(
                        f"the repository holds no snapshot of {name} ({host}); nothing was "
                        "changed (restore the other services one by one: --snapshot ID)"
                    )
                    + "\n"
                )
            else:
                out.append(f"sel_{i}=0\n! has {q(host)} || sel_{i}=1\n")
        if not self.latest:
            hosts = ", ".join(self._host(n) for _, n, _ in self.services)
            flags = "".join(f"$sel_{i}" for i, _, _ in self.services)
            out.append(
                f'[ "{flags}" != {"0" * len(self.services)} ] || fail '
                + _cat(
                    f"snapshot {self.snapshot} is a backup of none of {self.app.name}'s "
                    f"services (hosts {hosts}); nothing was changed"
                )
                + "\n"
            )
        return "".join(out)

    def _any_dump(self) -> str:
        return " || ".join(f'[ "$sel_{i}" = 1 ]' for i, _, _ in self.dumped)

    def _deployments(self) -> str:
        """deploys: NAME=REPLICAS of each of the app's Deployments, when a dump is loaded (the
        count an earlier restore kept in the annotation, if it left the app stopped)."""
        if not self.dumped:
            return ""
        annotation = REPLICAS_ANNOTATION.replace(".", "\\.")
        jsonpath = (
            'jsonpath={range .items[*]}{.metadata.name}{" "}{.spec.replicas}{" "}'
            f'{{.metadata.annotations.{annotation}}}{{"\\n"}}{{end}}'
        )
        selector = f"{rel.LABEL_INSTANCE}={self.app.name}"
        return (
            f"if {self._any_dump()}; then\n"
            f'  listing=$(k -n "$ns" get deployments -l {q(selector)} -o {q(jsonpath)}) ||\n'
            "    fail "
            + _cat(f"listing the Deployments of {self.app.name} failed; nothing was changed")
            + "\n"
            "  while read -r name replicas before; do\n"
            '    [ -n "$name" ] || continue\n'
            "    case $replicas in '' | *[!0-9]*) replicas=1 ;; esac\n"
            "    case $before in '' | *[!0-9]*) before=$replicas ;; esac\n"
            '    deploys="$deploys $name=$before"\n'
            "  done <<EOF\n"
            "$listing\n"
            "EOF\n"
            "fi\n"
        )

    def _steps(self) -> str:
        """The numbered steps, with the real names (the plan's output)."""
        out: list[str] = []

        def step(i: int, *parts: str | Var) -> None:
            out.append(f'[ "$sel_{i}" = 0 ] || step {_cat(*parts)}\n')

        for i, name, _ in self.dumped:
            step(
                i,
                f"download the dump {rel.dump_file(name)} of {self._source(name)} from the "
                "repository (a one-off restic pod) to ",
                Var("keep"),
                f"/{name}.dump on this node; the app keeps running, and nothing is stopped if "
                "this fails",
            )
        if self.dumped:
            out.append(
                'if [ -n "$deploys" ]; then step "scale the Deployments $(deploy_list) to 0 '
                f"(their replica counts kept in the annotation {REPLICAS_ANNOTATION}) and wait "
                'until their pods are gone"; fi\n'
            )
        for i, name, svc in self.dumped:
            assert svc.backup is not None
            step(
                i,
                f"wait until {name}-0 is ready and keep its data as it is now: kubectl exec "
                f"{name}-0 -c {name} -- {shlex.join(svc.backup.dump)} > ",
                Var("keep"),
                f"/{name}.before-restore.dump (never deleted)",
            )
        for i, name, _ in self.files:
            claims = _volumes_of(self.app, name)
            paths = _mount_paths(self.app, name)
            others = _also_stopped(self.app, name)
            step(i, f"scale the StatefulSet {name} to 0 and wait until its pod {name}-0 is gone")
            for other in others:
                step(
                    i,
                    f"scale the StatefulSet {other} to 0 too (it mounts "
                    + ", ".join(v for v in claims if other in self.app.volume_users(v))
                    + ") and wait until its pods are gone",
                )
            asides: list[str | Var] = []
            for path in paths:
                asides += [", " if asides else "", f"{path}/{BEFORE_PREFIX}", Var("t")]
            step(
                i,
                f"run the Job {_fit(f'restore-{name}')}-",
                Var("t"),
                f" (restic as root with only {', '.join(RESTORE_CAPABILITIES)}, on the node "
                "where the claim(s) "
                + ", ".join(rel.claim_name(self.app, v) for v in claims)
                + " can be mounted): restore "
                + ", ".join(f"{rel.DATA_DIR}/{v}" for v in claims)
                + f" of {self._source(name)} into {STAGE_PREFIX}",
                Var("t"),
                " on each claim (nothing is changed if this fails), then move each claim's "
                f"contents into {BEFORE_PREFIX}",
                Var("t"),
                f"/ at its root (never deleted; in {name}-0: ",
                *asides,
                ") and the snapshot's files into their place",
            )
            step(i, f"scale the StatefulSet {name} back up and wait until it is ready")
            for other in others:
                step(i, f"scale the StatefulSet {other} back up and wait until it is ready")
            out.append(
                f'[ "$sel_{i}" = 0 ] || kept="${{kept:+$kept; }}"{_cat(*asides, f" in {name}-0")}\n'
            )
        for i, name, svc in self.dumped:
            assert svc.backup is not None
            step(
                i,
                f"load the snapshot's dump into {name}: kubectl exec -i {name}-0 -c {name} -- "
                f"{shlex.join(svc.backup.restore)} < ",
                Var("keep"),
                f"/{name}.dump (then delete that download)",
            )
            out.append(
                f'[ "$sel_{i}" = 0 ] || kept="${{kept:+$kept; }}$keep/{name}.before-restore.dump"\n'
            )
        if self.dumped:
            out.append(
                'if [ -n "$deploys" ]; then step "scale the Deployments back: $(deploy_back)"; fi\n'
            )
        out.append(
            'step "the data as it was before stays in: $kept; delete it once the app is right"\n'
        )
        return "".join(out)

    def _act(self) -> str:
        out = ["trap on_exit EXIT\n", "trap 'exit 1' HUP INT TERM PIPE\n"]
        out += [self._download(i, n) for i, n, _ in self.dumped]
        out.append(self._stop_deployments())
        out += [self._keep_dump(i, n, s) for i, n, s in self.dumped]
        out += [self._restore_files(i, n, s) for i, n, s in self.files]
        out += [self._load_dump(i, n, s) for i, n, s in self.dumped]
        out.append(self._start_deployments())
        out.append(f'say {_cat(f"restored {self.snapshot}; the data as it was before: ")}"$kept"\n')
        return "".join(out)

    def _download(self, i: int, name: str) -> str:
        """A dump, read from the repository into a private file on this node while the app
        runs: a failed or empty download stops the restore before anything is stopped."""
        args = ["--retry-lock", RETRY_LOCK, "dump", self.snapshot, rel.dump_file(name)]
        args += ["--host", self._host(name), "--tag", TAG]
        file = f'"$keep"/{q(name + ".dump")}'
        return (
            f'if [ "$sel_{i}" = 1 ]; then\n'
            '  mkdir -p "$keep" || fail "cannot create $keep; nothing was changed"\n'
            f"  say {_cat(f'downloading the dump of {name}...')}\n"
            f'  if ! restic_pod {_cat(f"restic-dump-{name}-")}"$now-$$" '
            f"{q(restic_overrides(args))} >{file}; then\n"
            f"    rm -f {file}\n"
            "    fail "
            + _cat(
                f"downloading the dump of {name} failed (the message above); nothing was "
                "stopped or changed"
            )
            + "\n"
            "  fi\n"
            f"  if [ ! -s {file} ]; then\n"
            f"    rm -f {file}\n"
            f"    fail {_cat(f'the dump of {name} is empty; nothing was stopped or changed')}\n"
            "  fi\n"
            f"  say \"  $(wc -c <{file} | tr -d ' ') bytes\"\n"
            "fi\n"
        )

    def _stop_deployments(self) -> str:
        """What writes to the databases, stopped: each Deployment's count annotated, then
        scaled to 0; then waited for until its pods are gone."""
        if not self.dumped:
            return ""
        pods = f"{rel.LABEL_INSTANCE}={self.app.name},{rel.LABEL_NAME}="
        return (
            "for pair in $deploys; do\n"
            "  name=${pair%%=*}\n"
            f'  k -n "$ns" annotate "deployment/$name" "{REPLICAS_ANNOTATION}=${{pair#*=}}" \\\n'
            "    --overwrite >/dev/null ||\n"
            '    fail "annotating the Deployment $name failed; nothing was changed"\n'
            '  scaled="$scaled $pair"\n'
            '  say "scaling the Deployment $name to 0..."\n'
            '  k -n "$ns" scale "deployment/$name" --replicas=0 >/dev/null ||\n'
            '    fail "scaling the Deployment $name to 0 failed; nothing was changed"\n'
            "done\n"
            "for pair in $deploys; do\n"
            f'  wait_gone {q(pods)}"${{pair%%=*}}" "the Deployment ${{pair%%=*}}"\n'
            "done\n"
        )

    def _keep_dump(self, i: int, name: str, svc: Service) -> str:
        """The database as it is now (its writers stopped), dumped to this node and kept."""
        assert svc.backup is not None
        pod = f"{name}-0"
        argv = " ".join(q(a) for a in svc.backup.dump)
        file = f'"$keep"/{q(name + ".before-restore.dump")}'
        return (
            f'if [ "$sel_{i}" = 1 ]; then\n'
            f'  k -n "$ns" wait --for=condition=Ready {q("pod/" + pod)} '
            f"--timeout={READY_TIMEOUT} >/dev/null ||\n"
            f"    fail {_cat(f'{pod} is not ready; nothing was restored')}\n"
            f"  say {_cat(f'keeping the data of {name} as it is now...')}\n"
            f'  if ! k -n "$ns" exec {q(pod)} -c {q(name)} -- {argv} >{file} ||\n'
            f"    [ ! -s {file} ]; then\n"
            "    fail "
            + _cat(
                f"dumping the data of {name} as it is now failed (the message above); nothing "
                "was restored"
            )
            + "\n"
            "  fi\n"
            "fi\n"
        )

    def _restore_files(self, i: int, name: str, svc: Service) -> str:
        """A service backed up as files: its StatefulSet scaled to 0, the restore Job, the
        StatefulSet scaled back. Until the Job is created the StatefulSet is scaled back on any
        failure (sts_down); after, only if the Job says it changed nothing."""
        manifest = json.dumps(restore_job(self.app, name, self.snapshot), sort_keys=True)
        limit = RESTORE_DEADLINE_SECONDS + DEADLINE_MARGIN_SECONDS
        pods = f"{rel.LABEL_INSTANCE}={self.app.name},{rel.LABEL_NAME}={name}"
        sts = f"statefulset/{name}"
        asides: list[str | Var] = []
        for path in _mount_paths(self.app, name):
            asides += [" " if asides else "", f"{path}/{BEFORE_PREFIX}", Var("t")]
        # The other services mounting its volumes (a shared volume): stopped with it, started
        # with it; `group` holds their NAME=REPLICAS.
        others = _also_stopped(self.app, name)
        stop_others = "".join(
            f'  replicas_o=$(k -n "$ns" get {q("statefulset/" + o)} '
            "-o 'jsonpath={.spec.replicas}') ||\n"
            f"    fail {_cat(f'reading the StatefulSet {o} failed')}\n"
            "  case $replicas_o in '' | *[!0-9]* | 0) replicas_o=1 ;; esac\n"
            f'  sts_down="$sts_down {o}=$replicas_o" group="$group {o}=$replicas_o"\n'
            f"  say {_cat(f'scaling the StatefulSet {o} to 0 (it mounts a volume of {name})...')}\n"
            f'  k -n "$ns" scale {q("statefulset/" + o)} --replicas=0 >/dev/null ||\n'
            f"    fail {_cat(f'scaling the StatefulSet {o} to 0 failed')}\n"
            for o in others
        )
        wait_others = "".join(
            f"  wait_gone {q(f'{rel.LABEL_INSTANCE}={self.app.name},{rel.LABEL_NAME}={o}')} "
            f"{q(f'the StatefulSet {o}')}\n"
            for o in others
        )
        start_others = (
            (
                "  for pair in $group; do\n"
                '    say "starting ${pair%%=*} again..."\n'
                '    k -n "$ns" scale "statefulset/${pair%%=*}" "--replicas=${pair#*=}" '
                ">/dev/null ||\n"
                '      fail "scaling the StatefulSet ${pair%%=*} back up failed"\n'
                "  done\n"
                "  for pair in $group; do\n"
                '    k -n "$ns" rollout status "statefulset/${pair%%=*}" '
                f"--timeout={READY_TIMEOUT} ||\n"
                '      fail "${pair%%=*} is not ready after the restore"\n'
                "  done\n"
            )
            if others
            else ""
        )
        return (
            f'if [ "$sel_{i}" = 1 ]; then\n'
            f"  replicas=$(k -n \"$ns\" get {q(sts)} -o 'jsonpath={{.spec.replicas}}') ||\n"
            f"    fail {_cat(f'reading the StatefulSet {name} failed')}\n"
            "  case $replicas in '' | *[!0-9]* | 0) replicas=1 ;; esac\n"
            "  sts_before=$sts_down\n"
            f"  svc={q(name)}\n"
            '  sts_down="$sts_down $svc=$replicas"\n'
            f"  say {_cat(f'scaling the StatefulSet {name} to 0...')}\n"
            f'  k -n "$ns" scale {q(sts)} --replicas=0 >/dev/null ||\n'
            f"    fail {_cat(f'scaling the StatefulSet {name} to 0 failed')}\n"
            + ("  group=''\n" if others else "")
            + stop_others
            + f"  wait_gone {q(pods)} {q(f'the StatefulSet {name}')}\n"
            + wait_others
            + f"  job={_cat(_fit(f'restore-{name}') + '-', Var('t'))}\n"
            + f'  say {_cat(f"restoring {name} with the Job ")}"$job"...\n'
            "  # shellcheck disable=SC2016 # the manifest holds the Job's script, as written\n"
            f"  printf '%s\\n' {q(manifest)} | sed \"s/{STAMP}/$t/g\" |\n"
            '    ki -n "$ns" create -f - >/dev/null ||\n'
            f"    fail {_cat(f'creating the restore Job of {name} failed (the message above)')}\n"
            # From here on the Job may change the claims: the StatefulSet stays down until the
            # Job says otherwise.
            "  written_before=$written\n"
            "  written=1 sts_down=$sts_before\n"
            "  status=0\n"
            f'  wait_job "$job" {limit} || status=$?\n'
            '  job_logs "$job"\n'
            '  if [ "$status" = 1 ]; then\n'
            "    path='{.items[*].status.containerStatuses[*].state.terminated.exitCode}'\n"
            '    code=$(k -n "$ns" get pods -l "batch.kubernetes.io/job-name=$job" \\\n'
            '      -o "jsonpath=$path")\n'
            f'    if [ "$code" = {UNCHANGED} ]; then\n'
            '      written=$written_before sts_down="$sts_down $svc=$replicas'
            + ("$group" if others else "")
            + '"\n'
            "      fail "
            + _cat(
                f"the restore Job of {name} failed before it changed anything (its log above); "
                f"{name} is started again as it was"
            )
            + "\n"
            "    fi\n"
            "    fail "
            + _cat(
                f"the restore Job of {name} failed part-way (its log above): {name} stays "
                "stopped; nothing was deleted, its data as it was is in ",
                *asides,
                f" (in {name}-0)",
            )
            + "\n"
            "  fi\n"
            '  if [ "$status" != 0 ]; then\n'
            "    fail "
            + _cat(
                f"the restore Job of {name} has not finished after {limit} s; it goes on in "
                f"the cluster and {name} stays stopped: sudo k3s kubectl -n {self.app.name} get "
                "job ",
                Var("job"),
            )
            + "\n"
            "  fi\n"
            f"  say {_cat(f'starting {name} again...')}\n"
            f'  k -n "$ns" scale {q(sts)} "--replicas=$replicas" >/dev/null ||\n'
            f"    fail {_cat(f'scaling the StatefulSet {name} back up failed')}\n"
            f'  k -n "$ns" rollout status {q(sts)} --timeout={READY_TIMEOUT} ||\n'
            "    fail "
            + _cat(
                f"{name} is not ready after the restore; its data as it was is in ",
                *asides,
                f" (in {name}-0)",
            )
            + "\n"
            + start_others
            + "fi\n"
        )

    def _load_dump(self, i: int, name: str, svc: Service) -> str:
        assert svc.backup is not None
        pod = f"{name}-0"
        argv = " ".join(q(a) for a in svc.backup.restore)
        file = f'"$keep"/{q(name + ".dump")}'
        return (
            f'if [ "$sel_{i}" = 1 ]; then\n'
            f"  say {_cat(f'loading the dump into {name}...')}\n"
            "  written=1\n"
            f'  ki -n "$ns" exec -i {q(pod)} -c {q(name)} -- {argv} <{file} ||\n'
            "    fail "
            + _cat(
                f"loading the dump into {name} failed (the message above); its data as it was "
                "is in ",
                Var("keep"),
                f"/{name}.before-restore.dump, the snapshot's dump in ",
                Var("keep"),
                f"/{name}.dump",
            )
            + "\n"
            f"  rm -f {file}\n"
            "fi\n"
        )

    def _start_deployments(self) -> str:
        if not self.dumped:
            return ""
        return (
            'if [ -n "$scaled" ]; then\n'
            '  say "scaling the Deployments back: $(deploy_back)..."\n'
            '  scale_back || fail "scaling the Deployments back failed"\n'
            "  for pair in $deploys; do\n"
            f'    k -n "$ns" rollout status "deployment/${{pair%%=*}}" --timeout={READY_TIMEOUT} '
            ">/dev/null ||\n"
            '      warn "the Deployment ${pair%%=*} is not ready yet"\n'
            "  done\n"
            "fi\n"
        )


def _mount_paths(app: AppSpec, name: str) -> list[str]:
    paths = {m.volume: m.path for m in app.services[name].volumes}
    return [paths[v] for v in _volumes_of(app, name)]
