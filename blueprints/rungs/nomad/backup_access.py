"""`blueprints backup | backups | restore` on a nomad stack: what runs on the data node over SSH.

The data node (node-1, meta `blueprints_data = "true"`) runs the periodic jobs `<app>-backup` and
`<app>-backup-check` (release.py); the admin's commands reach it as `deploy` with the stack's
deploy key, and run as root there (sudo), against Nomad's API on the node itself
(https://127.0.0.1:4646, verified with the cluster's CA file) with the management token.

- backup now: `nomad job periodic force <app>-backup`, then follows the run it starts (a child job
  `<app>-backup/periodic-<time>`, named by the evaluation it returns) until its allocation has
  completed or failed, saying what it waits for, and prints the task's logs; exit 1 when the run
  failed or did not finish in time.
- snapshots, restore: blueprints-backup itself, run directly on the node (not as a job) from a
  private temporary directory (0700, removed on exit, failures and signals included) holding the
  script, its configuration (rendered here from the spec by node_config, as release.py renders
  the job's) and the job's secrets (read from its Nomad Variable on the node). For a restore the
  configuration stops and starts the app: every service job and the backup jobs (a backup run
  firing mid-restore would snapshot a half-restored app and push a good snapshot out); the
  ingress keeps running, it mounts none of the volumes swapped.

Secrets never reach a command line: the token travels on standard input (its first line), the
repository password and the bucket's keys only between Nomad and root-only files on the node.
Standard input carries the script too (everything after the first line), checked against its
SHA-256 on the command line: it is the admin's version, consistent with the configuration
rendered beside it, and needs no earlier run on the node (a cluster rebuilt from scratch has none,
and Nomad garbage-collects finished allocations and their directories).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shlex
from collections.abc import Mapping
from typing import cast

from blueprints.backup import backup_source
from blueprints.backup.node_files import node_config
from blueprints.backup.remote import Access, RemoteError, required_output
from blueprints.backup.storage import Storage
from blueprints.rungs.nomad.bootstrap import CA_FILE, DATA_NODE, NODE_NAMES
from blueprints.rungs.nomad.release import (
    BACKUP_TASK,
    PASSWORD_ITEM,
    STORAGE_ITEM,
    backup_job_name,
    backup_runtime,
    backup_variable_path,
    check_job_name,
    job_name,
)
from blueprints.rungs.nomad.rules import NOMAD_HTTP
from blueprints.spec import AppSpec

NOMAD_ADDR = f"https://127.0.0.1:{NOMAD_HTTP}"
# Stands for the temporary directory in the configuration, replaced on the node (sed).
DIR = "@BLUEPRINTS_DIR@"
# The helper blueprints-backup's stop and start run (on PATH: the temporary directory).
JOBS_HELPER = "blueprints-nomad-jobs"
PREFIX = "blueprints"
# Names a restic host is made of (<app>-<stack>: the repository's last folder).
HOST_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")


@dataclasses.dataclass(frozen=True)
class Timing:
    """How `backup now` and the restore's stop wait, in seconds."""

    poll: int = 5
    # A progress line at least this often while a backup run goes on.
    progress: int = 30
    # A run not placed on the data node within this long fails `backup now` (it goes on).
    place: int = 300
    # A run not finished within this long: `backup now` stops following it (it goes on).
    run: int = 3 * 3600
    # The app's allocations must have stopped within this long, or the restore stops there.
    stop: int = 300


@dataclasses.dataclass(frozen=True)
class _Repository:
    """What node_config reads of a Storage: the repository (from the stack's outputs)."""

    repository: str


def backup_access(
    app: AppSpec, outputs: Mapping[str, object], timing: Timing | None = None
) -> Access:
    """The data node's address, the deploy key, and the command lines of each backup command."""
    timing = timing or Timing()
    ips = outputs.get("serverIps")
    node = outputs.get("dataNode") or NODE_NAMES[DATA_NODE]
    host = ips.get(node) if isinstance(ips, Mapping) else None
    if not isinstance(host, str) or not host:
        raise RemoteError(
            f"the stack has no output serverIps with the data node {node}; has `pulumi up` run?"
        )
    key = required_output(outputs, "deployKey")
    token = required_output(outputs, "nomadToken")
    repository = required_output(outputs, "backupRepository")
    name = repository.rstrip("/").rsplit("/", 1)[-1]
    if not repository.startswith("s3:") or not HOST_NAME.match(name):
        raise RemoteError(
            f"the stack's backupRepository {repository!r} is not an s3: repository ending in "
            "its <app>-<stack> folder; run `pulumi up` again"
        )
    source = backup_source()
    config = restore_config(app, repository, name)

    def tool(*args: str) -> str:
        return node_command(tool_script(app, config, source, list(args), timing))

    return Access(
        host=host,
        key=key,
        now=node_command(now_script(app, timing)),
        snapshots=tool("snapshots", "--json"),
        restore_plan=lambda snap: tool("restore-app", snap, "--plan"),
        restore=lambda snap: tool("restore-app", snap),
        # First line the token, then the script (tool_script checks it arrived whole).
        stdin=f"{token}\n{source}",
    )


def node_command(script: str) -> str:
    """The SSH command line: the script run by root's sh, standard input passed on."""
    return f"sudo sh -c {shlex.quote(script)}"


def stopped_jobs(app: AppSpec) -> list[str]:
    """What a restore stops, in that order: the backup jobs (no run starts meanwhile), then each
    service's job, dependents before what they depend on. Not the ingress: it mounts no volume
    that is swapped (its own is /srv/data/traefik, never restored over), and keeps answering."""
    services = [job_name(app, name) for name in reversed(app.start_order())]
    return [backup_job_name(app), check_job_name(app), *services]


def restore_config(app: AppSpec, repository: str, name: str) -> str:
    """blueprints-backup's configuration for a run from the temporary directory (DIR): the
    job's (node_config with release.py's runtime) plus how the app stops and starts."""
    jobs = stopped_jobs(app)
    runtime = dataclasses.replace(
        backup_runtime(),
        stop=[JOBS_HELPER, "stop", *jobs],
        start=[JOBS_HELPER, "start", *reversed(jobs)],
    )
    config = node_config(
        app,
        cast(Storage, _Repository(repository)),
        runtime,
        name=name,
        password_file=f"{DIR}/backup-password",
        env_file=f"{DIR}/backup-storage.env",
    )
    text = json.dumps(config, sort_keys=True, ensure_ascii=True)
    if text.count(DIR) != 2:  # pragma: no cover - a spec value cannot hold it
        raise ValueError(f"the backup configuration holds {DIR} where it should not")
    return text


def _preamble() -> str:
    """Root's sh: the token from the first line of standard input, Nomad's address and CA."""
    return (
        "set -u\n"
        "umask 077\n"
        'if ! IFS= read -r NOMAD_TOKEN || [ -z "$NOMAD_TOKEN" ]; then\n'
        f'  echo "{PREFIX}: no Nomad token on standard input; nothing was done" >&2\n'
        "  exit 2\n"
        "fi\n"
        f"NOMAD_ADDR={shlex.quote(NOMAD_ADDR)}\n"
        f"NOMAD_CACERT={shlex.quote(CA_FILE)}\n"
        "export NOMAD_TOKEN NOMAD_ADDR NOMAD_CACERT\n"
    )


# nomad job allocs -t: one line per allocation, its id and client status.
ALLOCS_TEMPLATE = '{{range .}}{{.ID}} {{.ClientStatus}}{{"\\n"}}{{end}}'
# nomad job inspect -t: the job's id, whether it is stopped, its version.
JOB_TEMPLATE = "{{.ID}} {{.Stop}} {{.Version}}"


def now_script(app: AppSpec, timing: Timing) -> str:
    """Forces a run of the backup job, follows it to its end and prints its logs."""
    job = shlex.quote(backup_job_name(app))
    task = shlex.quote(BACKUP_TASK)
    return _preamble() + (
        "exec </dev/null\n"
        f"if ! out=$(nomad job periodic force -detach {job}); then\n"
        f'  echo "{PREFIX}: could not start a run of {job} (is it registered? nomad job status '
        f'{job})" >&2\n'
        "  exit 1\n"
        "fi\n"
        "evaluation=$(printf '%s\\n' \"$out\" | sed -n 's/^Evaluation ID: *//p')\n"
        "run=\n"
        'if [ -n "$evaluation" ]; then\n'
        "  run=$(nomad eval status -t '{{.JobID}}' \"$evaluation\") || run=\n"
        "fi\n"
        'if [ -z "$run" ]; then\n'
        f'  echo "{PREFIX}: a run of {job} was asked for, but which one is not known: nomad job '
        f'status {job}" >&2\n'
        "  exit 1\n"
        "fi\n"
        f'echo "{PREFIX}: backing up: $run (on the data node)" >&2\n'
        "waited=0\n"
        "said=0\n"
        "last=\n"
        "while :; do\n"
        f'  allocs=$(nomad job allocs -t {shlex.quote(ALLOCS_TEMPLATE)} "$run") || allocs=\n'
        "  alloc=$(printf '%s\\n' \"$allocs\" | awk 'NF == 2 { print $1; exit }')\n"
        "  status=$(printf '%s\\n' \"$allocs\" | awk 'NF == 2 { print $2; exit }')\n"
        '  case "$status" in\n'
        "    complete | failed | lost) break ;;\n"
        "  esac\n"
        '  if [ "${status:-unplaced}" != "$last" ] || [ $((waited - said)) -ge '
        f"{timing.progress} ]; then\n"
        f'    echo "{PREFIX}: $run: ${{status:-not placed yet}} (${{waited}} s)" >&2\n'
        "    last=${status:-unplaced}\n"
        "    said=$waited\n"
        "  fi\n"
        f'  if [ -z "$status" ] && [ "$waited" -ge {timing.place} ]; then\n'
        f'    echo "{PREFIX}: $run was not placed on the data node within {timing.place} s; see '
        'nomad job status $run" >&2\n'
        "    exit 1\n"
        "  fi\n"
        f'  if [ "$waited" -ge {timing.run} ]; then\n'
        f'    echo "{PREFIX}: $run is still $status after {timing.run} s; it goes on (nomad job '
        'status $run)" >&2\n'
        "    exit 1\n"
        "  fi\n"
        f"  sleep {timing.poll}\n"
        f"  waited=$((waited + {timing.poll}))\n"
        "done\n"
        f'nomad alloc logs -stdout "$alloc" {task} || true\n'
        f'nomad alloc logs -stderr "$alloc" {task} >&2 || true\n'
        'if [ "$status" != complete ]; then\n'
        f'  echo "{PREFIX}: the backup run $run $status: its logs are above (nomad alloc '
        'status $alloc)" >&2\n'
        "  exit 1\n"
        "fi\n"
        f'echo "{PREFIX}: $run complete" >&2\n'
    )


def jobs_helper(timing: Timing) -> str:
    """blueprints-nomad-jobs stop|start JOB...: `stop` stops each running job (recording its
    version beside itself) and waits until their allocations have stopped; when anything fails
    it starts again what it stopped and fails. `start` reverts each job it stopped to the
    version it ran (`nomad job revert`: in every Nomad version; `nomad job start` only from
    1.10.2 on, and the stack may pin an older one)."""
    return (
        "#!/bin/sh\n"
        "set -u\n"
        'state="$(dirname "$0")/stopped"\n'
        "verb=$1\n"
        "shift\n"
        "start() {\n"
        "  failed=0\n"
        '  for j in "$@"; do\n'
        '    version=$(awk -v j="$j" \'$1 == j { print $2 }\' "$state" 2>/dev/null)\n'
        '    [ -n "$version" ] || continue\n'
        '    if ! nomad job revert "$j" "$version" >&2; then\n'
        f'      echo "{PREFIX}: could not start $j again (nomad job revert $j $version)" >&2\n'
        "      failed=1\n"
        "    fi\n"
        "  done\n"
        '  return "$failed"\n'
        "}\n"
        'if [ "$verb" = start ]; then\n'
        '  start "$@"\n'
        "  exit\n"
        "fi\n"
        ': >"$state"\n'
        "why=\n"
        'for j in "$@"; do\n'
        f'  if ! info=$(nomad job inspect -t {shlex.quote(JOB_TEMPLATE)} "$j"); then\n'
        '    why="cannot read the job $j (nomad job inspect $j)"\n'
        "    break\n"
        "  fi\n"
        "  id=${info%% *}\n"
        "  rest=${info#* }\n"
        "  stopped=${rest%% *}\n"
        "  version=${rest#* }\n"
        '  if [ "$id" != "$j" ]; then\n'
        '    why="the cluster has no job $j (is the app released?)"\n'
        "    break\n"
        "  fi\n"
        "  # (a job someone stopped stays stopped)\n"
        '  [ "$stopped" = false ] || continue\n'
        '  if ! nomad job stop -yes "$j" >&2; then\n'
        '    why="nomad job stop $j failed"\n'
        "    # (stopped all the same? then it is started again with the others)\n"
        f'    info=$(nomad job inspect -t {shlex.quote(JOB_TEMPLATE)} "$j") || info=\n'
        '    [ "$info" != "$j true ${info##* }" ] || echo "$j $version" >>"$state"\n'
        "    break\n"
        "  fi\n"
        '  echo "$j $version" >>"$state"\n'
        "done\n"
        "# Stopped means their allocations have stopped, not just that Nomad was asked to.\n"
        "waited=0\n"
        'while [ -z "$why" ]; do\n'
        "  busy=\n"
        "  while read -r j _; do\n"
        f'    allocs=$(nomad job allocs -t {shlex.quote(ALLOCS_TEMPLATE)} "$j" </dev/null) || '
        'allocs="? unknown"\n'
        "    if printf '%s\\n' \"$allocs\" | grep -q -E ' (pending|running|unknown)$'; then\n"
        '      busy="$busy $j"\n'
        "    fi\n"
        '  done <"$state"\n'
        '  [ -n "$busy" ] || exit 0\n'
        f'  if [ "$waited" -ge {timing.stop} ]; then\n'
        f'    why="still running after {timing.stop} s:$busy"\n'
        "    break\n"
        "  fi\n"
        f"  sleep {timing.poll}\n"
        f"  waited=$((waited + {timing.poll}))\n"
        "done\n"
        "# Started again in the reverse order; the reason is the last line (blueprints-backup\n"
        "# shows it).\n"
        "order=$(awk '{ l[NR] = $1 } END { for (i = NR; i > 0; i--) print l[i] }' \"$state\")\n"
        "# shellcheck disable=SC2086 # job names: one word each\n"
        "start $order\n"
        f'echo "{PREFIX}: $why; started again what had been stopped" >&2\n'
        "exit 1\n"
    )


def tool_script(
    app: AppSpec, config: str, source: str, args: list[str], timing: Timing | None = None
) -> str:
    """blueprints-backup ARGS on the node, from a private temporary directory holding the
    script (the rest of standard input), its configuration and the job's secrets."""
    variable = shlex.quote(backup_variable_path(backup_job_name(app)))
    digest = hashlib.sha256(source.encode()).hexdigest()
    secrets = []
    for item, file, end in (
        (PASSWORD_ITEM, "backup-password", 'echo >>"$d/backup-password"\n'),
        (STORAGE_ITEM, "backup-storage.env", ""),
    ):
        secrets.append(
            f'if ! nomad var get -item={item} {variable} >"$d/{file}"; then\n'
            f"  echo \"{PREFIX}: cannot read the backup's {item} from the Nomad Variable "
            f'{variable}; nothing was done" >&2\n'
            "  exit 1\n"
            "fi\n" + end
        )
    return (
        _preamble() + 'd=$(mktemp -d "${TMPDIR:-/tmp}/blueprints-backup.XXXXXXXXXX") || exit 1\n'
        "trap 'rm -rf \"$d\"' EXIT\n"
        "trap 'exit 129' HUP\n"
        "trap 'exit 130' INT\n"
        "trap 'exit 143' TERM\n"
        'cat >"$d/blueprints-backup" || exit 1\n'
        "exec </dev/null\n"
        'sum=$(sha256sum <"$d/blueprints-backup") || exit 1\n'
        f'if [ "${{sum%% *}}" != {digest} ]; then\n'
        f'  echo "{PREFIX}: blueprints-backup arrived incomplete on standard input; nothing was '
        'done" >&2\n'
        "  exit 1\n"
        "fi\n"
        + "".join(secrets)
        + _here(f'"$d/{JOBS_HELPER}"', jobs_helper(timing or Timing()))
        + f'chmod 700 "$d/{JOBS_HELPER}"\n'
        + _here('"$d/config.json"', config, f'sed "s|{DIR}|$d|g"')
        + 'PATH="$d:$PATH"\n'
        "export PATH\n"
        'python3 "$d/blueprints-backup" --config "$d/config.json" '
        + " ".join(shlex.quote(a) for a in args)
        + "\n"
    )


def _here(target: str, text: str, through: str = "cat") -> str:
    """sh: TEXT written to TARGET as it is (a here-document with a quoted delimiter)."""
    end = "BLUEPRINTS_EOF"
    if end in text.splitlines():  # pragma: no cover - neither the helper nor a JSON line
        raise ValueError(f"the text holds the here-document's delimiter {end}")
    return f"{through} >{target} <<'{end}'\n{text.rstrip(chr(10))}\n{end}\n"
