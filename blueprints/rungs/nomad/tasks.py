"""A task's run in a release: what `<prefix>-task-<name>` runs on the data node over SSH.

Each task of the spec is a parameterized batch job `<app>-task-<name>` (release.py). The Nomad
provider registers a batch job but cannot wait for one to finish, so the release runs this
script on the data node (as root, against Nomad's API there, the management token on standard
input, as `blueprints backup now` does): it dispatches one run of the job with the release's
digest in its meta (a new run per release, and a retried release dispatches again), follows it
until its allocation has completed or failed, prints the task's logs, and fails when the run
failed, was lost or is still going past its timeout (plus the time a placement and an image
pull may take), stopping it then. The service jobs depend on it, so a failed task fails
`pulumi up` before any service is rolled out: the previous version keeps serving.
"""

from __future__ import annotations

import shlex

from blueprints.rungs.nomad.backup_access import ALLOCS_TEMPLATE, PREFIX, _preamble, node_command
from blueprints.rungs.nomad.release import RELEASE_META
from blueprints.spec import AppSpec

POLL_SECONDS = 5
# Beyond the task's own timeout (kept by its watchdog inside Nomad): placement and the pull.
MARGIN_SECONDS = 600


def run_script(app: AppSpec, name: str, job: str, release: str) -> str:
    """sh: dispatch one run of the task's job for this release and follow it to its end."""
    task = app.tasks[name]
    limit = task.timeout + MARGIN_SECONDS
    quoted = shlex.quote(job)
    service = shlex.quote(task.service)
    meta = shlex.quote(f"{RELEASE_META}={release}")
    return _preamble() + (
        "exec </dev/null\n"
        f"if ! out=$(nomad job dispatch -detach -meta {meta} {quoted}); then\n"
        f'  echo "{PREFIX}: could not start the task {name} (nomad job status {job})" >&2\n'
        "  exit 1\n"
        "fi\n"
        "run=$(printf '%s\\n' \"$out\" | sed -n 's/^Dispatched Job ID *= *//p')\n"
        'if [ -z "$run" ]; then\n'
        f'  echo "{PREFIX}: the task {name} was dispatched, but which run is not known: nomad '
        f'job status {job}" >&2\n'
        "  exit 1\n"
        "fi\n"
        f'echo "{PREFIX}: task {name}: $run" >&2\n'
        "waited=0\n"
        "while :; do\n"
        f'  allocs=$(nomad job allocs -t {shlex.quote(ALLOCS_TEMPLATE)} "$run") || allocs=\n'
        "  alloc=$(printf '%s\\n' \"$allocs\" | awk 'NF == 2 { print $1; exit }')\n"
        "  status=$(printf '%s\\n' \"$allocs\" | awk 'NF == 2 { print $2; exit }')\n"
        '  case "$status" in\n'
        "    complete | failed | lost) break ;;\n"
        "  esac\n"
        f'  if [ "$waited" -ge {limit} ]; then\n'
        f'    echo "{PREFIX}: the task {name} did not finish within {limit} s; stopping $run" >&2\n'
        '    nomad job stop -yes "$run" >&2 || true\n'
        '    status="timed out"\n'
        "    break\n"
        "  fi\n"
        f"  sleep {POLL_SECONDS}\n"
        f"  waited=$((waited + {POLL_SECONDS}))\n"
        "done\n"
        'if [ -n "$alloc" ]; then\n'
        f'  nomad alloc logs -stdout "$alloc" {service} | tail -n 50 || true\n'
        f'  nomad alloc logs -stderr "$alloc" {service} | tail -n 50 >&2 || true\n'
        "fi\n"
        'if [ "$status" != complete ]; then\n'
        f'  echo "{PREFIX}: the task {name} $status: the release stops here, the services keep '
        'their previous version (nomad job status $run)" >&2\n'
        "  exit 1\n"
        "fi\n"
        f'echo "{PREFIX}: task {name} complete" >&2\n'
    )


def run_command(app: AppSpec, name: str, job: str, release: str) -> str:
    """The SSH command line of one task's run."""
    return node_command(run_script(app, name, job, release))
