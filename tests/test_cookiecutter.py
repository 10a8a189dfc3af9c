"""The scaffold as a team uses it: bake projects with cookiecutter's API and `blueprints new`, then
check what they hold, that GitLab's schema accepts their CI, and that their own tests pass."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import validators
import yaml
from cookiecutter.exceptions import FailedHookException
from cookiecutter.main import cookiecutter

from blueprints import scaffold
from blueprints.cli import app as cli_app
from blueprints.settings import BLUEPRINTS as ALL_KNOWN_BLUEPRINTS
from blueprints.settings import parse_settings
from blueprints.spec import load_spec
from blueprints.stack import BLUEPRINT_COMPONENTS
from blueprints.vendoring import build_wheel, find_uv

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "cookiecutter-app"
EXAMPLE = ROOT / "examples" / "app.yaml"
BLUEPRINT_CHOICES = [*scaffold.BLUEPRINTS, scaffold.ALL_BLUEPRINTS]
TARGET_CHOICES = [*scaffold.TARGETS, scaffold.BOTH_TARGETS]
COMBOS = [(b, t) for b in BLUEPRINT_CHOICES for t in TARGET_CHOICES]
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHc2mXkq1QeC3rVbCq1y8f0p5h0dU7v9yq8x3r0mP6Fh dev@laptop"
VERSION = importlib.metadata.version("blueprints")
UV = find_uv()  # `blueprints new` from a checkout builds the wheel with it
assert UV, "uv is not installed (scripts/bootstrap installs it)"
PATH = f"{Path(UV).parent}:/usr/bin:/bin"


def expected_stacks(blueprint: str, target: str) -> set[str]:
    bps = scaffold.BLUEPRINTS if blueprint == "all" else (blueprint,)
    tgs = scaffold.TARGETS if target == "both" else (target,)
    return {f"{b}-{t}" for b in bps for t in tgs}


def stacks_in(project: Path) -> set[str]:
    return {p.name[len("Pulumi.") : -len(".yaml")] for p in (project / "stacks").iterdir()}


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A HOME with the default key path filled in and cookiecutter's replay kept inside."""
    home = tmp_path_factory.mktemp("home")
    (home / ".ssh").mkdir()
    (home / ".ssh" / "id_ed25519.pub").write_text(KEY + "\n")
    (home / "cookiecutter.yaml").write_text(
        yaml.safe_dump({"cookiecutters_dir": str(home / "cc"), "replay_dir": str(home / "replay")})
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(home))
        yield home


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    """The wheel of this blueprints, built once: handed to the hook as `blueprints new` does
    (`_wheel`); `test_the_hook_builds_the_wheel_itself` bakes without it."""
    return build_wheel(tmp_path_factory.mktemp("wheel"))


def bake(home: Path, out: Path, wheel: Path | None = None, **answers: str) -> Path:
    return Path(
        cookiecutter(
            str(TEMPLATE),
            no_input=True,
            extra_context={**answers, **({"_wheel": str(wheel)} if wheel else {})},
            output_dir=str(out),
            config_file=str(home / "cookiecutter.yaml"),
        )
    )


@pytest.fixture(scope="module")
def baked(home, wheel, tmp_path_factory) -> dict[object, Path]:
    """The default bake and one per blueprint x target answer, each baked once."""
    projects: dict[object, Path] = {
        "default": bake(home, tmp_path_factory.mktemp("default"), wheel)
    }
    for b, t in COMBOS:
        out = tmp_path_factory.mktemp(f"{b}-{t}")
        projects[(b, t)] = bake(home, out, wheel, blueprint=b, target=t)
    return projects


CUSTOM = {
    "project_name": "Acme Shop",
    "project_slug": "acme-shop",
    "domain": "shop.acme.test",
    "acme_email": "certs@acme.test",
    "hcloud_location": "hel1",
    "admin_cidr": "198.51.100.0/24",
}


@pytest.fixture(scope="module")
def custom(home, wheel, tmp_path_factory) -> Path:
    return bake(home, tmp_path_factory.mktemp("custom"), wheel, **CUSTOM, target="hcloud")


# -- what a bake holds ------------------------------------------------------------------------


def test_default_bake_is_single_vm_on_both_targets(baked, home):
    project = baked["default"]
    assert project.name == "shop"
    assert stacks_in(project) == {"single-vm-hcloud", "single-vm-localstack"}
    app = load_spec(project / "app.yaml")
    assert app.admin.ssh_keys == [KEY]  # read from ~/.ssh/id_ed25519.pub at bake time
    assert app.admin.cidrs == ["203.0.113.0/24"]
    assert (app.name, app.domain, app.acme_email) == (
        "shop",
        "shop.example.com",
        "ops@shop.example.com",
    )


def test_every_combination_holds_exactly_its_stacks(baked):
    for (b, t), project in ((k, v) for k, v in baked.items() if k != "default"):
        assert stacks_in(project) == expected_stacks(b, t), (b, t)
        for stack in stacks_in(project):
            config = yaml.safe_load((project / "stacks" / f"Pulumi.{stack}.yaml").read_text())
            raw = {k.removeprefix("blueprints:"): v for k, v in config["config"].items()}
            settings = parse_settings(raw, stack)
            assert f"{settings.blueprint}-{settings.target}" == stack
            assert settings.spec == "app.yaml"


def test_no_template_syntax_left_anywhere(baked, custom):
    for project in [*baked.values(), custom]:
        files = [p for p in project.rglob("*") if p.is_file()]
        assert len(files) >= 10
        for path in files:
            if path.suffix == ".whl":
                assert zipfile.is_zipfile(path), path
                continue
            text = path.read_text()
            for mark in ("{{ cookiecutter.", "{{cookiecutter.", "{%", "{#", "cookiecutter."):
                assert mark not in text, f"{path.relative_to(project)} holds {mark!r}"
            assert "{" not in str(path.relative_to(project)), path


def test_answers_reach_every_file(custom, wheel):
    app = load_spec(custom / "app.yaml")
    assert (app.name, app.domain, app.acme_email) == (
        "acme-shop",
        "shop.acme.test",
        "certs@acme.test",
    )
    assert app.admin.cidrs == ["198.51.100.0/24"]
    # Everything else is the example's: the scaffold applies answers, it does not fork the spec.
    example = load_spec(EXAMPLE)
    assert app.services == example.services and app.volumes == example.volumes
    assert (custom / "app.yaml").read_text().count("# A small team's app") == 1  # comments kept

    pulumi_yaml = yaml.safe_load((custom / "Pulumi.yaml").read_text())
    assert pulumi_yaml["name"] == "acme-shop"
    assert pulumi_yaml["runtime"]["name"] == "python"
    assert pulumi_yaml["stackConfigDir"] == "stacks"
    main = custom / pulumi_yaml["main"]
    assert "from blueprints.stack import deploy" in main.read_text()

    stack = yaml.safe_load((custom / "stacks/Pulumi.single-vm-hcloud.yaml").read_text())["config"]
    assert stack["blueprints:location"] == "hel1"
    assert stack["blueprints:active"] == "primary"  # blueprint-only keys come with defaults

    pyproject = tomllib.loads((custom / "pyproject.toml").read_text())
    assert pyproject["project"]["name"] == "acme-shop"
    assert pyproject["project"]["dependencies"] == [f"blueprints=={VERSION}"]
    # blueprints from the wheel it carries; everything else pinned to what runs here.
    source = pyproject["tool"]["uv"]["sources"]["blueprints"]
    assert source == {"path": f"vendor/blueprints-{VERSION}-py3-none-any.whl"}
    assert (custom / source["path"]).read_bytes() == wheel.read_bytes()
    pins = pyproject["tool"]["uv"]["constraint-dependencies"]
    assert f"pulumi=={importlib.metadata.version('pulumi')}" in pins
    assert f"pytest=={importlib.metadata.version('pytest')}" in pins
    assert not any(p.startswith("blueprints") for p in pins)

    readme = (custom / "README.md").read_text()
    assert readme.startswith("# Acme Shop\n")
    for step in (
        "pulumi login",
        "pulumi up",
        "blueprints plan",
        "blueprints render",
        "hcloud:token",
    ):
        assert step in readme, step
    for name in app.secret_names():
        assert f"pulumi config set --secret --path 'blueprints:secrets.{name}'" in readme
    assert "single-vm-localstack" not in readme


def test_hostile_answers_are_data_not_code(home, wheel, tmp_path):
    # Quotes of every kind (the hooks embed the answers in Python), shell syntax and a backslash.
    name = "Shop \"Deluxe\" '''x''' $(touch /tmp/pwned) `id` \\ ; --"
    project = bake(home, tmp_path, wheel, project_name=name, project_slug="deluxe")
    assert (project / "README.md").read_text().startswith(f"# {name}\n")
    assert yaml.safe_load((project / "Pulumi.yaml").read_text())["description"].startswith(name)
    assert tomllib.loads((project / "pyproject.toml").read_text())["project"][
        "description"
    ].startswith(name)


def test_baking_is_deterministic(home, wheel, tmp_path):
    # The wheel's own reproducibility: tests/test_new.py.
    first = bake(home, tmp_path / "a", wheel, blueprint="all")
    second = bake(home, tmp_path / "b", wheel, blueprint="all")

    def tree(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}

    assert tree(first) == tree(second)


# -- the generated CI ----------------------------------------------------------------------------


def test_gitlab_ci_passes_gitlabs_schema(baked):
    for project in baked.values():
        validators.check_jsonschema("vendor.gitlab-ci", project / ".gitlab-ci.yml")


def _commands() -> set[str]:
    return {c.name or c.callback.__name__ for c in cli_app.registered_commands}


def test_gitlab_ci_jobs_per_stack(baked):
    mr = '$CI_PIPELINE_SOURCE == "merge_request_event"'
    for key, project in baked.items():
        ci = yaml.safe_load((project / ".gitlab-ci.yml").read_text())
        stacks = stacks_in(project)
        jobs = {k: v for k, v in ci.items() if isinstance(v, dict) and not k.startswith(".")}
        assert jobs["validate"]["rules"][0] == {"if": mr}
        assert "uv run pytest -q" in jobs["validate"]["script"]
        for stack in stacks:
            preview = jobs[f"preview:{stack}"]
            assert preview["rules"] == [{"if": mr}]
            assert any(f"pulumi preview --stack {stack} --json" in s for s in preview["script"])
            assert preview["artifacts"]["paths"] == [f"preview-{stack}.json"]
            deploy = jobs[f"deploy:{stack}"]
            assert "$CI_DEFAULT_BRANCH" in deploy["rules"][0]["if"]
            assert "merge_request_event" not in deploy["rules"][0]["if"]
            assert deploy["resource_group"] == stack
            assert any(f"pulumi up --yes --refresh --stack {stack}" in s for s in deploy["script"])
        watched = {k.removeprefix("watchdog:") for k in jobs if k.startswith("watchdog:")}
        assert watched == {
            s for s in stacks if s.startswith("single-vm-") and "localstack" not in s
        }
        for stack in watched:
            dog = jobs[f"watchdog:{stack}"]
            assert dog["rules"] == [{"if": '$CI_PIPELINE_SOURCE == "schedule"'}]
            assert dog["resource_group"] == jobs[f"deploy:{stack}"]["resource_group"]  # never both
            assert f"uv run blueprints watch {stack} --for 60s" in dog["script"][0]
        # One report job after every preview, on merge requests only.
        report = jobs["preview-report"]
        assert report["rules"] == [{"if": mr, "when": "always"}]  # after a failed preview too
        assert report["stage"] == "report"
        assert {n["job"] for n in report["needs"]} == {f"preview:{s}" for s in stacks}
        assert all(n["artifacts"] for n in report["needs"])
        for stack in stacks:
            assert f"preview-{stack}.json" in report["script"][0]
        assert "--fail-on data-loss" in report["script"][0]
        # Only commands that exist.
        text = (project / ".gitlab-ci.yml").read_text()
        used = set(re.findall(r"uv run blueprints ([a-z-]+)", text))
        assert used <= _commands(), (key, used - _commands())
        assert "preview-report" in used
        # Every image pinned to a version.
        images = [j["image"] for j in [*jobs.values(), ci[".blueprints"]] if "image" in j]
        images += [s["name"] for j in jobs.values() for s in j.get("services", [])]
        for image in images:
            assert re.search(r":\d+\.\d+", image) and not image.endswith(":latest"), image


def _preview_doc(stack: str, project: str, op: str) -> dict:
    """A `pulumi preview --json` document with one step on the stack's data volume."""
    urn = f"urn:pulumi:{stack}::{project}::hcloud:index/volume:Volume::data"
    state = {"urn": urn, "type": "hcloud:index/volume:Volume", "custom": True}
    step = {
        "op": op,
        "urn": urn,
        "oldState": {**state, "inputs": {"size": 21, "location": "fsn1"}},
        "newState": {**state, "inputs": {"size": 21, "location": "nbg1"}},
    }
    if op == "replace":
        step["replaceReasons"] = ["location"]
        step["detailedDiff"] = {"location": {"kind": "update-replace", "inputDiff": True}}
    return {"steps": [step], "changeSummary": {op: 1}}


def test_the_report_job_runs_its_script(baked, tmp_path):
    """The job's own command line, run on previews like the preview jobs leave behind."""
    project = baked[("single-vm", "both")]
    ci = yaml.safe_load((project / ".gitlab-ci.yml").read_text())
    script = ci["preview-report"]["script"][0].replace(
        "uv run blueprints", f"{sys.executable} -m blueprints.cli"
    )
    name = yaml.safe_load((project / "Pulumi.yaml").read_text())["name"]
    env = {k: v for k, v in os.environ.items() if k != "GITLAB_TOKEN"}
    for op, status in (("same", 0), ("replace", 4)):
        work = tmp_path / op
        work.mkdir()
        for stack in stacks_in(project):
            doc = _preview_doc(stack, name, op)
            (work / f"preview-{stack}.json").write_text(json.dumps(doc))
        proc = subprocess.run(
            ["bash", "-c", script], cwd=work, capture_output=True, text=True, env=env, timeout=120
        )
        assert proc.returncode == status, proc.stdout + proc.stderr
        report = (work / "preview-report.md").read_text()
        for stack in stacks_in(project):
            assert stack in report
        assert ("data loss" in report.lower()) == (op == "replace")


# -- the baked project's own tests ------------------------------------------------------------


def test_baked_projects_own_tests_pass(baked):
    # Once per blueprint (on both targets), which plans every blueprint x target.
    for b in scaffold.BLUEPRINTS:
        project = baked[(b, "both")]
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
            cwd=project,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert f"{2 + len(expected_stacks(b, 'both'))} passed" in proc.stdout


# -- bad answers ---------------------------------------------------------------------------------

BAD = [
    (
        {"project_slug": "Bad_Slug"},
        "project_slug: 'Bad_Slug' is not a valid slug; use lower-case letters, digits and "
        "hyphens, starting with a letter and at most 63 characters (it names the app and its "
        "cloud resources)",
    ),
    (
        {"domain": "not a domain"},
        "domain: 'not a domain' is not a lower-case DNS name like app.example.com",
    ),
    ({"acme_email": "ops"}, "acme_email: 'ops' is not an e-mail address like ops@example.com"),
    (
        {"admin_cidr": "10.0.0.300/8"},
        "admin_cidr: '10.0.0.300/8' is not a network in CIDR form like 203.0.113.0/24",
    ),
    (
        {"admin_cidr": "10.1.2.3/8"},
        "admin_cidr: '10.1.2.3/8' has host bits set; did you mean 10.0.0.0/8?",
    ),
    (
        {"hcloud_location": "mars1"},
        "hcloud_location: 'mars1' is not a Hetzner Cloud location; allowed: fsn1, nbg1, hel1",
    ),
    (
        {"blueprint": "swarm"},
        f"blueprint: 'swarm' is not a blueprint; allowed: {', '.join(BLUEPRINT_CHOICES)}",
    ),
    ({"target": "gcp"}, "target: 'gcp' is not a target; allowed: hcloud, localstack, both"),
    ({"project_name": "two\nlines"}, "project_name: must be one line of 1 to 80 characters"),
]


@pytest.mark.parametrize(("answers", "message"), BAD, ids=[next(iter(a)) for a, _ in BAD])
def test_bad_answer_is_refused_with_its_sentence_and_nothing_left(
    home, tmp_path, capfd, answers, message
):
    with pytest.raises(FailedHookException):
        bake(home, tmp_path, **answers)
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}"), err
    assert "Traceback" not in err.split("Stopping generation")[0]
    assert list(tmp_path.iterdir()) == []


def test_missing_or_private_ssh_key_is_refused(home, tmp_path, capfd):
    out = tmp_path / "out"
    out.mkdir()
    missing = tmp_path / "nope.pub"
    with pytest.raises(FailedHookException):
        bake(home, out, ssh_public_key=str(missing))
    assert (
        f"error: ssh_public_key: {missing}: no such file; give the path" in capfd.readouterr().err
    )
    private = tmp_path / "id_ed25519"
    private.write_text(
        "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----\n"
    )
    with pytest.raises(FailedHookException):
        bake(home, out, ssh_public_key=str(private))
    assert f"error: ssh_public_key: {private}: is a private key" in capfd.readouterr().err
    assert list(out.iterdir()) == []


# -- the hooks and the one list -----------------------------------------------------------------


def _hook(name: str):
    spec = importlib.util.spec_from_file_location(name, TEMPLATE / "hooks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hooks_are_plain_importable_functions(home, tmp_path, capsys):
    answers = json.loads((TEMPLATE / "cookiecutter.json").read_text())
    answers.update(
        project_name="Shop", project_slug="shop", domain="shop.example.com",
        acme_email="ops@example.com", _output_dir=str(tmp_path),
    )  # fmt: skip
    pre = _hook("pre_gen_project")
    assert pre.main(answers) == 0
    assert pre.main({**answers, "target": "mars"}) == 1
    assert capsys.readouterr().err.startswith("error: target: 'mars' is not a target")
    (tmp_path / "README.md").write_text(f"# Shop\n\n{scaffold.README_MARKER}\n")
    assert _hook("post_gen_project").main(answers, tmp_path) == 0
    assert stacks_in(tmp_path) == {"single-vm-hcloud", "single-vm-localstack"}
    # Without `_wheel` (plain cookiecutter), the hook builds the wheel of blueprints itself.
    wheels = [p.name for p in (tmp_path / "vendor").iterdir()]
    assert wheels == [f"blueprints-{VERSION}-py3-none-any.whl"]


def test_a_hook_that_fails_unexpectedly_says_so_in_one_line(home, tmp_path, capsys, monkeypatch):
    answers = json.loads((TEMPLATE / "cookiecutter.json").read_text())
    answers.update(project_name="Shop", project_slug="shop", _output_dir=str(tmp_path))

    def broken(*_args, **_kwargs):
        raise tomllib.TOMLDecodeError("Escaped character is not a Unicode scalar value\n(line 7)")

    monkeypatch.setattr(scaffold, "write_project", broken)
    monkeypatch.setattr(scaffold, "validate_answers", broken)
    for hook, args in (("post_gen_project", (answers, tmp_path)), ("pre_gen_project", (answers,))):
        assert _hook(hook).main(*args) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert err.startswith("error: ") and "(TOMLDecodeError: Escaped character is not a " in err


def test_one_list_of_blueprints_and_the_template_asks_every_answer():
    template = json.loads((TEMPLATE / "cookiecutter.json").read_text())
    assert [k for k in template if not k.startswith("_")] == list(scaffold.ANSWER_KEYS)
    assert set(template["__prompts__"]) == set(scaffold.ANSWER_KEYS)
    assert template["blueprint"] in scaffold.BLUEPRINTS
    # Every offered blueprint is one the package can deploy: its component module exists.
    for b in scaffold.BLUEPRINTS:
        assert b in ALL_KNOWN_BLUEPRINTS, b
        assert importlib.util.find_spec(BLUEPRINT_COMPONENTS[b].partition(":")[0]), b
    # No blueprint or target name is spelled out anywhere in the template.
    for path in TEMPLATE.rglob("*"):
        if path.is_file() and path.name != "cookiecutter.json":
            text = path.read_text()
            for b in ALL_KNOWN_BLUEPRINTS:
                assert f"{b}-hcloud" not in text and f"{b}-localstack" not in text, path


# -- blueprints new ------------------------------------------------------------------------------


def new(home: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "blueprints.cli", "new", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": PATH, "HOME": str(home), "COLUMNS": "200", "NO_COLOR": "1"},
    )


def test_blueprints_new_bakes_with_options(home, tmp_path):
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "me.pub").write_text(KEY + "\n")
    res = new(
        home, tmp_path, "infra", "--no-input", "--project-name", "Acme", "--blueprint", "all",
        "--target", "hcloud", "--ssh-public-key", "keys/me.pub", "--domain", "acme.example.org",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    project = tmp_path / "infra"
    assert stacks_in(project) == expected_stacks("all", "hcloud")
    app = load_spec(project / "app.yaml")
    assert (app.name, app.domain, app.admin.ssh_keys) == ("acme", "acme.example.org", [KEY])
    assert "baked infra/" in res.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["infra", "keys"]  # no staging left


def test_blueprints_new_refuses_bad_answers_and_busy_directories(home, tmp_path):
    cases = [
        (("x", "--admin-cidr", "10.0.0.1/8"), "error: admin_cidr: '10.0.0.1/8' has host bits set"),
        (("x", "--project-slug", "1shop"), "error: project_slug: '1shop' is not a valid slug"),
        (("x", "--ssh-public-key", "gone.pub"), f"error: ssh_public_key: {tmp_path}/gone.pub: no"),
        (("x", "--blueprint", "{{ 7 * 7 }}"), "error: blueprint: must not contain {{, {% or {#"),
        (("busy",), "error: directory: "),
    ]
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    for args, message in cases:
        res = new(home, tmp_path, *args, "--no-input")
        assert res.returncode == 2, (args, res.stdout, res.stderr)
        assert "Traceback" not in res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(message), (args, res.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy"]
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]
