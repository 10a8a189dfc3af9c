"""What every server's bootstrap (user data) does about apt's lock, a failed install, Docker's own
restarts and reboots: checked on the user data each stack's plan gives its servers, and run for
real where a shell can run it here (the runcmd guard under dash, as cloud-init runs it; the
package installer and the installers' refusal under bash, with apt and dpkg stood in by scripts
that record what they are asked)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import validators
import yaml

from blueprints.plan import Plan, list_stacks, plan_stack
from blueprints.render import single_vm as svm
from blueprints.render.common import render_template
from blueprints.render.unpack import SERVER_TYPES, server_user_data
from blueprints.render.vm import (
    ACME_RETRY_UNIT,
    APT_LOCK_CONF,
    APT_LOCK_TIMEOUT_SECONDS,
    BOOTSTRAP_FAILED,
    BOOTSTRAP_FAILED_HINT,
    CLOUD_INIT_LOG,
    CLOUD_INIT_RUNCMD,
    DOCKER_DAEMON_JSON,
    FIRST_BOOT_MAX_SECONDS,
    INSTALL_PACKAGES,
    PACKAGES_DEADLINE_SECONDS,
    bootstrap_guard,
    host_files,
    install_node_ready,
)

ROOT = Path(__file__).resolve().parent.parent
STACKS = sorted(list_stacks(ROOT))
AUTO_UPGRADES = "/etc/apt/apt.conf.d/52blueprints-auto-upgrades"


@pytest.fixture(scope="module")
def plans() -> dict[str, Plan]:
    return {stack: plan_stack(stack, ROOT) for stack in STACKS}


def user_datas(plan: Plan) -> dict[str, dict]:
    """Server name -> its #cloud-config document, as the plan passes it to the cloud."""
    out = {}
    for r in plan.resources:
        if r.type in SERVER_TYPES:
            text = server_user_data(r)
            assert text is not None and text.startswith("#cloud-config\n"), r.name
            out[r.name] = yaml.safe_load(text)
    assert out
    return out


def written(doc: dict) -> dict[str, str]:
    return {entry["path"]: entry["content"] for entry in doc["write_files"]}


def script_packages(script: str) -> list[str]:
    [line] = [line for line in script.splitlines() if line.startswith("packages=(")]
    return shlex.split(line[len("packages=(") : -1])


# --- every server of every stack ------------------------------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
def test_every_bootstrap_stops_at_a_failure_and_checks_its_packages(plans, stack):
    for name, doc in user_datas(plans[stack]).items():
        guard = bootstrap_guard()
        assert doc["runcmd"][: len(guard)] == guard, name
        files = written(doc)
        # install-packages installs exactly what cloud-init was asked to
        assert script_packages(files[INSTALL_PACKAGES]) == sorted(doc["packages"]), name
        assert f'DPkg::Lock::Timeout "{APT_LOCK_TIMEOUT_SECONDS}";' in files[APT_LOCK_CONF]
        assert 'Unattended-Upgrade::Automatic-Reboot "false";' in files[AUTO_UPGRADES]


@pytest.mark.parametrize("stack", STACKS)
def test_every_apt_get_waits_for_the_lock(plans, stack):
    """Each apt-get a bootstrap script runs passes DPkg::Lock::Timeout (directly, or through the
    one function that adds it)."""
    seen = 0
    for doc in user_datas(plans[stack]).values():
        for path, text in written(doc).items():
            lines = [line.strip() for line in text.splitlines()]
            code = [line for line in lines if line and not line.startswith(("#", "echo"))]
            calls = [line for line in code if re.search(r"(^|[\s;(])apt-get\s", line)]
            for line in calls:
                seen += 1
                assert f"DPkg::Lock::Timeout={APT_LOCK_TIMEOUT_SECONDS}" in line, (path, line)
            # apt-get only runs through apt_get where a script defines it
            if any(line.startswith("apt_get()") for line in code):
                assert not [c for c in code if re.match(r"apt-get\s", c)], path
        assert "apt-get" not in " ".join(doc["runcmd"])
    assert seen


@pytest.mark.parametrize("stack", STACKS)
def test_docker_keeps_containers_across_its_restarts(plans, stack):
    for name, doc in user_datas(plans[stack]).items():
        files = written(doc)
        if "docker.io" not in doc["packages"]:
            assert stack.startswith("k8s-")  # k3s runs its own containerd
            assert DOCKER_DAEMON_JSON not in files
            continue
        settings = json.loads(files[DOCKER_DAEMON_JSON])
        assert settings == {
            "live-restore": True,
            "log-driver": "json-file",
            "log-opts": {"max-file": "3", "max-size": "10m"},
        }, name


@pytest.mark.parametrize("stack", STACKS)
def test_the_caddy_rungs_retry_the_first_certificate(plans, stack):
    caddy = stack.startswith(("single-vm-", "compose-"))
    for doc in user_datas(plans[stack]).values():
        files = written(doc)
        enable = f"systemctl enable --now {ACME_RETRY_UNIT}.timer"
        assert (enable in doc["runcmd"]) is caddy
        assert (f"/etc/systemd/system/{ACME_RETRY_UNIT}.service" in files) is caddy
        if caddy:
            unit = files[f"/etc/systemd/system/{ACME_RETRY_UNIT}.service"]
            assert f"--config {svm.CADDY_CONFIG} --storage {svm.CADDY_STORAGE}" in unit
            # the proxy is restarted only while it runs (a stopped one stays stopped)
            if stack.startswith("compose-"):
                wrapper, proxy = "/usr/local/sbin/app-compose", "blueprints_proxy"
                check = f"{wrapper} ps --status running --quiet {proxy}"
                assert f"--running {check} -- {wrapper} restart {proxy}" in unit
            else:
                caddy_unit = "blueprints-caddy.service"
                check = f"systemctl is-active {caddy_unit}"
                assert f"--running {check} -- systemctl try-restart {caddy_unit}" in unit


def test_cloud_init_schema_accepts_the_guard(tmp_path: Path):
    files = host_files(["curl"])
    doc = {"runcmd": [*bootstrap_guard(), "true"], "packages": ["curl"]}
    doc["write_files"] = [{"path": p, "content": t} for p, t in files.items()]
    validators.cloud_init_schema("#cloud-config\n" + yaml.safe_dump(doc), tmp_path)


# --- the runcmd guard, run by dash as cloud-init runs runcmd --------------------------------------


def runcmd_script(tmp_path: Path, commands: list[str]) -> Path:
    """runcmd as cloud-init writes it (#!/bin/sh, one line per entry), with the marker and the
    package check moved into tmp_path."""
    marker = tmp_path / "state" / "bootstrap-failed"
    lines = [
        line.replace(BOOTSTRAP_FAILED, str(marker))
        .replace(BOOTSTRAP_FAILED.rsplit("/", 1)[0], str(marker.parent))
        .replace(INSTALL_PACKAGES, "true")
        for line in bootstrap_guard()
    ]
    script = tmp_path / "runcmd"
    script.write_text("#!/bin/sh\n" + "\n".join([*lines, *commands]) + "\n")
    return script


def test_a_failing_command_stops_the_bootstrap_and_leaves_the_marker(tmp_path: Path):
    after = tmp_path / "after"
    script = runcmd_script(tmp_path, ["echo first", "false", f"touch {after}"])
    proc = subprocess.run(["dash", str(script)], capture_output=True, text=True, check=False)
    assert proc.returncode == 1
    assert not after.exists()  # nothing after the failure ran
    marker = (tmp_path / "state" / "bootstrap-failed").read_text()
    assert "exit status 1" in marker and "/var/log/cloud-init-output.log" in marker


def test_a_bootstrap_that_succeeds_leaves_no_marker(tmp_path: Path):
    after = tmp_path / "after"
    script = runcmd_script(tmp_path, ["echo first", f"touch {after}"])
    proc = subprocess.run(["dash", str(script)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert after.exists()
    assert not (tmp_path / "state").exists()


# --- install-packages, with dpkg-query and apt-get stood in ---------------------------------------


def fake_tools(tmp_path: Path, installed: set[str], apt_fails: int = 0) -> tuple[Path, Path]:
    """A bin/ with dpkg-query (knows `installed`), apt-get (records its arguments, fails the
    first `apt_fails` calls) and sleep (returns at once)."""
    bin_dir, log = tmp_path / "bin", tmp_path / "apt.log"
    bin_dir.mkdir()
    tools = {
        "dpkg-query": f"""#!/bin/bash
for p in {" ".join(sorted(installed)) or "-"}; do
  [[ $p == "${{@: -1}}" ]] && {{ printf installed; exit 0; }}
done
exit 1
""",
        "apt-get": f"""#!/bin/bash
echo "$*" >>{log}
n=$(wc -l <{log})
((n > {apt_fails}))
""",
        "sleep": "#!/bin/bash\nexit 0\n",
    }
    for name, text in tools.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return bin_dir, log


def installer(tmp_path: Path, packages: list[str], deadline: int = 1200) -> Path:
    script = tmp_path / "install-packages"
    script.write_text(
        render_template(
            "install-packages.sh.j2",
            packages=packages,
            lock_timeout=APT_LOCK_TIMEOUT_SECONDS,
            deadline=deadline,
        )
    )
    return script


def run_installer(script: Path, bin_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    return subprocess.run(
        ["bash", str(script)], capture_output=True, text=True, env=env, check=False, timeout=60
    )


def test_install_packages_passes_shellcheck(tmp_path: Path):
    script = tmp_path / "install-packages"
    script.write_text(host_files(["curl", "docker.io"])[INSTALL_PACKAGES])
    validators.shellcheck(script, "bash")


def test_installed_packages_need_no_apt(tmp_path: Path):
    bin_dir, log = fake_tools(tmp_path, {"curl", "docker.io"})
    proc = run_installer(installer(tmp_path, ["curl", "docker.io"]), bin_dir)
    assert proc.returncode == 0, proc.stderr
    assert not log.exists()


def test_missing_packages_are_installed_waiting_for_the_lock(tmp_path: Path):
    bin_dir, log = fake_tools(tmp_path, {"curl"}, apt_fails=1)
    proc = run_installer(installer(tmp_path, ["curl", "docker.io", "restic"]), bin_dir)
    assert proc.returncode == 0, proc.stderr
    option = f"--quiet --option DPkg::Lock::Timeout={APT_LOCK_TIMEOUT_SECONDS}"
    # the first update failed (a held lists lock, say): tried again, then the install
    assert log.read_text().splitlines() == [
        f"{option} update",
        f"{option} update",
        f"{option} install --yes docker.io restic",
    ]


def test_an_install_that_keeps_failing_fails_the_bootstrap(tmp_path: Path):
    bin_dir, log = fake_tools(tmp_path, set(), apt_fails=10**6)
    proc = run_installer(installer(tmp_path, ["curl"], deadline=0), bin_dir)
    assert proc.returncode == 1
    assert "could not install curl" in proc.stderr
    assert log.read_text().splitlines() == [
        f"--quiet --option DPkg::Lock::Timeout={APT_LOCK_TIMEOUT_SECONDS} update"
    ]


# --- what runs over SSH later refuses a failed bootstrap ------------------------------------------


@pytest.mark.parametrize(
    ("installer", "who"),
    [
        (install_node_ready("TARGET", "k3s-node-ready"), "install-node-ready"),
        (svm.release_agent_files("/dev/sdb", [])[svm.INSTALL_AGENT], "install-agent"),
    ],
)
def test_installers_refuse_a_node_whose_bootstrap_failed(tmp_path: Path, installer, who):
    """The installers as the bootstrap writes them, with the marker and the log in tmp_path."""
    marker, log = tmp_path / "bootstrap-failed", tmp_path / "cloud-init-output.log"
    marker.write_text("the bootstrap stopped at a failing command (exit status 100); ...\n")
    log.write_text("E: Could not get lock /var/lib/apt/lists/lock\n")
    script = tmp_path / "installer"
    assert BOOTSTRAP_FAILED in installer and CLOUD_INIT_LOG in installer
    script.write_text(
        installer.replace(BOOTSTRAP_FAILED, str(marker)).replace(CLOUD_INIT_LOG, str(log))
    )
    proc = subprocess.run(
        ["bash", str(script)], input="", capture_output=True, text=True, check=False, timeout=30
    )
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert lines[0] == f"{who}: this server's bootstrap failed: {marker.read_text().strip()}"
    assert "Could not get lock" in lines[1]  # the end of cloud-init's output comes along
    # and how to go on (naming the marker, moved here with the rest)
    assert lines[-1] == f"{who}: {BOOTSTRAP_FAILED_HINT.replace(BOOTSTRAP_FAILED, str(marker))}"
    assert "TARGET" not in proc.stdout and "AGENT" not in proc.stdout


def test_the_hint_says_how_to_clear_the_marker():
    assert f"remove {BOOTSTRAP_FAILED}" in BOOTSTRAP_FAILED_HINT
    assert (
        "pulumi up --replace" in BOOTSTRAP_FAILED_HINT
        and CLOUD_INIT_RUNCMD in BOOTSTRAP_FAILED_HINT
    )
    assert BOOTSTRAP_FAILED_HINT.endswith("then run pulumi up again")
    # it goes into double-quoted shell strings as it is
    assert not set(BOOTSTRAP_FAILED_HINT) & set('"$`\\\n')


def test_the_standby_image_pull_refuses_a_failed_bootstrap(tmp_path: Path):
    command = svm.pull_images_command()
    assert f"if [ -e {BOOTSTRAP_FAILED} ]; then" in command
    subprocess.run(["sh", "-n", "-c", command], check=True)
    bin_dir, marker = tmp_path / "bin", tmp_path / "bootstrap-failed"
    bin_dir.mkdir()
    for tool in ("cloud-init", "docker", "sudo"):
        (bin_dir / tool).write_text(f"#!/bin/sh\necho {tool} >>{tmp_path / 'calls'}\n")
        (bin_dir / tool).chmod(0o755)
    marker.write_text("the bootstrap stopped at a failing command (exit status 1); ...\n")
    proc = subprocess.run(
        ["sh", "-c", command.replace(BOOTSTRAP_FAILED, str(marker))],
        input="caddy:2\n",
        capture_output=True,
        text=True,
        env={"PATH": f"{bin_dir}:/usr/bin:/bin"},
        check=False,
        timeout=30,
    )
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"blueprints: the bootstrap of this node failed: {marker.read_text().strip()}",
        f"blueprints: {BOOTSTRAP_FAILED_HINT.replace(BOOTSTRAP_FAILED, str(marker))}",
    ]
    assert (tmp_path / "calls").read_text() == "cloud-init\n"  # nothing pulled


def test_the_standby_waits_for_the_longest_first_boot():
    """cloud-init's own package step may wait for apt's lock, then install-packages tries until
    its deadline, and its last try may wait for the lock again: the boot wait outlasts them."""
    assert FIRST_BOOT_MAX_SECONDS > PACKAGES_DEADLINE_SECONDS + 2 * APT_LOCK_TIMEOUT_SECONDS
    assert svm.BOOT_WAIT_SECONDS >= FIRST_BOOT_MAX_SECONDS
    assert f"timeout {svm.BOOT_WAIT_SECONDS} cloud-init status --wait" in svm.PULL_IMAGES_COMMAND


# --- compose: the app is not restarted with docker ------------------------------------------------


def test_compose_app_unit_does_not_restart_with_docker(plans):
    from blueprints.render.compose import APP_UNIT

    doc = next(iter(user_datas(plans["compose-hcloud"]).values()))
    unit = written(doc)[f"/etc/systemd/system/{APP_UNIT}"]
    values = {}
    for line in unit.splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    requires = " ".join(values["Requires"]).split()
    # Requires= would restart the app (`down`, `up`) whenever docker restarts, directly or
    # through the metadata guard, which restarts with docker
    assert "docker.service" not in requires and svm.METADATA_GUARD_UNIT not in requires
    wants = " ".join(values["Wants"]).split()
    assert {"docker.service", svm.METADATA_GUARD_UNIT} <= set(wants)
    # the guard's rule is still in place before the containers start
    assert values["ExecStartPre"][0] == f"{svm.SCRIPTS}/metadata-guard"
