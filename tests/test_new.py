"""`blueprints new` beyond the template (tests/test_cookiecutter.py): the wheel a baked project
carries, a team's own spec (`--spec`), and the interactive questions, each checked at its
prompt. The baked project installing offline: tests/test_new_offline.py."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml
from packaging.specifiers import SpecifierSet
from typer.testing import CliRunner

from blueprints import scaffold
from blueprints.cli import app as cli_app
from blueprints.spec import load_spec
from blueprints.vendoring import build_wheel, checkout_root, find_uv, installed_pins

ROOT = Path(__file__).resolve().parent.parent
VERSION = importlib.metadata.version("blueprints")
WHEEL = f"blueprints-{VERSION}-py3-none-any.whl"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHc2mXkq1QeC3rVbCq1y8f0p5h0dU7v9yq8x3r0mP6Fh dev@laptop"
OTHER_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFv0V1Pp2yQmR9g3xK7wL4cN8sT6uZ1aB5dE0hJ2kM3n me@desk"
)
UV = find_uv()
assert UV, "uv is not installed (scripts/bootstrap installs it); the checkout's wheel needs it"
GRAFANA = ROOT / "tests/apps/prometheus-grafana"


@pytest.fixture
def user(tmp_path, monkeypatch):
    """A user's working directory and HOME (with ~/.ssh/id_ed25519.pub), uv on PATH."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519.pub").write_text(KEY + "\n")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("PATH", f"{Path(UV).parent}:/usr/bin:/bin")
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.chdir(work)
    return work


def new(*args: str, input: str | None = None):
    return CliRunner().invoke(cli_app, ["new", *args], input=input)


def stacks_in(project: Path) -> set[str]:
    return {p.name[len("Pulumi.") : -len(".yaml")] for p in (project / "stacks").iterdir()}


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


# -- the wheel a baked project carries ----------------------------------------------------------


def test_the_wheel_is_reproducible_and_the_same_from_an_installed_wheel(tmp_path):
    assert checkout_root() == ROOT  # these tests run from the checkout: built by uv
    first = build_wheel(tmp_path / "a")
    second = build_wheel(tmp_path / "b")
    assert first.name == WHEEL
    assert first.read_bytes() == second.read_bytes()
    with zipfile.ZipFile(first) as zf:
        names = zf.namelist()
        assert "blueprints/scaffold.py" in names
        assert "blueprints/_scaffold/cookiecutter-app/cookiecutter.json" in names
        assert "blueprints/_scaffold/examples/app.yaml" in names
        assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]

    # Installed from that wheel (not editable), blueprints packs its installed files again:
    # the same files, byte for byte.
    target = tmp_path / "site"
    subprocess.run(
        [UV, "pip", "install", "--quiet", "--offline", "--no-deps", "--target", str(target),
         "--python", sys.executable, str(first)],
        check=True, timeout=120,
    )  # fmt: skip
    script = (
        "import sys; from pathlib import Path; import blueprints.vendoring as v; "
        "assert v.checkout_root() is None, v.__file__; print(v.build_wheel(Path(sys.argv[1])))"
    )

    def repack(out: Path) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", script, str(out)],
            env={**os.environ, "PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
            capture_output=True, text=True, timeout=120, cwd=tmp_path,
        )  # fmt: skip

    res = repack(tmp_path / "c")
    assert res.returncode == 0, res.stderr
    repacked = Path(res.stdout.strip())
    assert repacked.name == WHEEL
    with zipfile.ZipFile(first) as a, zipfile.ZipFile(repacked) as b:
        assert sorted(a.namelist()) == sorted(b.namelist())
        record = f"blueprints-{VERSION}.dist-info/RECORD"
        for name in a.namelist():
            if name != record:
                assert a.read(name) == b.read(name), name
        assert sorted(a.read(record).splitlines()) == sorted(b.read(record).splitlines())

    # An installed file changed after install: refused, not packed as if it were the wheel.
    with (target / "blueprints" / "prices.yaml").open("a") as f:
        f.write("# edited\n")
    res = repack(tmp_path / "d")
    assert res.returncode != 0
    assert "prices.yaml: changed since blueprints was installed" in res.stderr


def test_pins_follow_the_installed_dependency_tree():
    pins = installed_pins(["pydantic>=2", "pytest", "colorama; sys_platform == 'win32'"])
    versions = dict(p.split("==") for p in pins)
    assert versions["pydantic"] == importlib.metadata.version("pydantic")
    assert versions["pydantic-core"] == importlib.metadata.version("pydantic-core")  # transitive
    assert versions["pluggy"] == importlib.metadata.version("pluggy")
    assert "colorama" not in versions  # its marker is false here
    assert [p.split("==")[0] for p in pins] == sorted(versions)  # by name
    # A requirement this environment does not satisfy is left unpinned (not contradicted).
    assert installed_pins(["pydantic<1"]) == []


# -- a team's own spec --------------------------------------------------------------------------


def copy_grafana(where: Path) -> Path:
    """The prometheus-grafana spec with the files its services read, as a team has it."""
    shutil.copytree(GRAFANA, where, ignore=shutil.ignore_patterns("compose.yaml", "README.md"))
    return where / "app.yaml"


def test_new_bakes_your_own_spec_and_names_its_secrets(user):
    spec = copy_grafana(user / "mine")
    original = spec.read_text()
    res = new(
        "infra", "--spec", "mine/app.yaml", "--no-input", "--target", "hcloud",
        "--admin-cidr", "198.51.100.0/24",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    project = user / "infra"
    assert stacks_in(project) == {"single-vm-hcloud"}

    # The spec as written; only what it left open (admin) filled from the answers.
    baked = (project / "app.yaml").read_text()
    assert baked.startswith(original.rstrip("\n"))
    app, mine = load_spec(project / "app.yaml"), load_spec(spec)
    assert app.model_dump(exclude={"admin"}) == mine.model_dump(exclude={"admin"})
    assert (app.admin.ssh_keys, app.admin.cidrs) == ([KEY], ["198.51.100.0/24"])
    for rel in ("prometheus/prometheus.yml", "grafana/datasource.yml"):  # files it reads
        assert (project / rel).read_bytes() == (spec.parent / rel).read_bytes()

    # Its name, domain and secrets, not the example's.
    assert yaml.safe_load((project / "Pulumi.yaml").read_text())["name"] == "monitoring"
    readme = (project / "README.md").read_text()
    stack_file = (project / "stacks/Pulumi.single-vm-hcloud.yaml").read_text()
    assert mine.secret_names() == ["GF_SECURITY_ADMIN_PASSWORD"]
    for text in (readme, stack_file):
        assert "--path 'blueprints:secrets.GF_SECURITY_ADMIN_PASSWORD'" in text
        for example_secret in load_spec(ROOT / "examples/app.yaml").secret_names():
            assert example_secret not in text
    assert readme.startswith("# monitoring\n")
    assert "`grafana.example.com`" in readme
    assert "is the spec this project was\n   baked from" in readme
    assert "example services" not in readme


def test_a_spec_that_lists_its_admins_is_not_asked_for_a_key(user):
    # The example lists its admin keys and networks: no key file is read (HOME has one, but it
    # is not the spec's), and the spec is baked byte for byte.
    (Path(os.environ["HOME"]) / ".ssh" / "id_ed25519.pub").unlink()
    spec = ROOT / "examples/app.yaml"
    res = new("infra", "--spec", str(spec), "--no-input", "--blueprint", "compose")
    assert res.exit_code == 0, res.output
    assert (user / "infra" / "app.yaml").read_bytes() == spec.read_bytes()
    assert stacks_in(user / "infra") == {"compose-hcloud", "compose-localstack"}


def test_your_own_spec_is_never_contradicted(user):
    spec = copy_grafana(user / "mine")
    key = user / "other.pub"
    key.write_text(OTHER_KEY + "\n")
    listed = spec.parent / "listed.yaml"  # the grafana spec with its admins listed
    listed.write_text(spec.read_text() + f"admin:\n  ssh_keys: ['{KEY}']\n  cidrs: [10.0.0.0/8]\n")
    bad = spec.parent / "bad.yaml"
    bad.write_text(spec.read_text().replace("size_gb: 20", "size_gb: lots"))
    cases = [
        (
            ("--spec", "mine/bad.yaml"),
            "error: mine/bad.yaml: volumes.prom-data.size_gb: must be a whole number (got 'lots')",
        ),
        (
            ("--spec", "missing.yaml"),
            "error: missing.yaml: no such file",
        ),
        (
            ("--spec", "mine/app.yaml", "--domain", "grafana.example.org"),
            "error: domain: 'grafana.example.org' differs from the spec's domain "
            f"'grafana.example.com' ({spec}); the spec is baked as written",
        ),
        (
            ("--spec", "mine/app.yaml", "--project-slug", "grafana"),
            "error: project_slug: 'grafana' differs from the spec's name 'monitoring'",
        ),
        (
            ("--spec", "mine/app.yaml", "--acme-email", "me@example.com"),
            "error: acme_email: 'me@example.com' differs from the spec's acme_email",
        ),
        (
            ("--spec", "mine/listed.yaml", "--admin-cidr", "192.0.2.0/24"),
            "error: admin_cidr: 192.0.2.0/24 is not among the spec's admin.cidrs (10.0.0.0/8;",
        ),
        (
            ("--spec", "mine/listed.yaml", "--ssh-public-key", "other.pub"),
            f"error: ssh_public_key: {key}: this key is not among the spec's admin.ssh_keys",
        ),
    ]
    before = sorted(p.name for p in user.iterdir())
    for args, message in cases:
        for interactive in (False, True):  # a bad spec or option stops before any question
            res = new("infra", *args, *([] if interactive else ["--no-input"]), input="")
            assert res.exit_code == 2, (args, res.output)
            assert "Traceback" not in res.output
            lines = res.output.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith(message), (args, res.output)
    assert sorted(p.name for p in user.iterdir()) == before  # nothing written, no staging left


def test_a_spec_file_landing_on_a_project_file_is_refused(user):
    spec = copy_grafana(user / "mine")
    (spec.parent / "README.md").write_text("scrape config\n")
    spec.write_text(spec.read_text().replace("source: grafana/datasource.yml", "source: README.md"))
    res = new("infra", "--spec", str(spec), "--no-input", "--admin-cidr", "10.0.0.0/8")
    assert res.exit_code == 2, res.output
    assert error_lines(res.output) == [
        f"error: spec: {spec}: the file README.md its services read would land on the baked "
        "project's own README.md; move it into a directory of its own (like config/)"
    ]
    assert sorted(p.name for p in user.iterdir()) == ["mine"]


# -- the questions ------------------------------------------------------------------------------


def test_each_answer_is_checked_at_its_prompt(user):
    (user / "keys").mkdir()
    (user / "keys" / "me.pub").write_text(KEY + "\n")
    answers = [
        "Acme Shop",  # project name
        "",  # slug: the suggestion, acme-shop
        "Not A Domain",  # refused at once, asked again
        "acme.example.org",
        "",  # e-mail: the suggestion, ops@acme.example.org
        "swarm",
        "compose",
        "",  # target: both
        "mars1",
        "hel1",
        "10.0.0.1/8",
        "10.0.0.0/8",
        "nope.pub",
        "keys/me.pub",
    ]
    res = new("infra", input="\n".join(answers) + "\n")
    assert res.exit_code == 0, res.output
    out = res.output
    # The choices are listed at their prompts.
    assert (
        "[5/9] Blueprint, or all of them (single-vm, compose, nomad, k8s, all) [single-vm]:" in out
    )
    assert "(hcloud, localstack, both) [both]:" in out
    assert "Hetzner Cloud location (fsn1, nbg1, hel1) [fsn1]:" in out
    assert (
        "[2/9] Slug (names the app, the Pulumi project and every cloud resource) [acme-shop]:"
        in out
    )
    assert "[ops@acme.example.org]:" in out
    # Each wrong answer: one line saying why, right after it, then the same question again.
    assert error_lines(out) == [
        "error: domain: 'Not A Domain' is not a lower-case DNS name like app.example.com",
        "error: blueprint: 'swarm' is not a blueprint; allowed: single-vm, compose, nomad, k8s, "
        "all",
        "error: hcloud_location: 'mars1' is not a Hetzner Cloud location; allowed: fsn1, nbg1, "
        "hel1",
        "error: admin_cidr: '10.0.0.1/8' has host bits set; did you mean 10.0.0.0/8?",
        f"error: ssh_public_key: {user}/nope.pub: no such file; give the path of your SSH public "
        "key (e.g. ~/.ssh/id_ed25519.pub, made by ssh-keygen -t ed25519)",
    ]
    assert out.count("[3/9] Domain the app is served on") == 2
    # ... and every answer given reached the project.
    project = user / "infra"
    assert stacks_in(project) == {"compose-hcloud", "compose-localstack"}
    app = load_spec(project / "app.yaml")
    assert (app.name, app.domain, app.acme_email) == (
        "acme-shop",
        "acme.example.org",
        "ops@acme.example.org",
    )
    assert (app.admin.ssh_keys, app.admin.cidrs) == ([KEY], ["10.0.0.0/8"])
    stack = yaml.safe_load((project / "stacks/Pulumi.compose-hcloud.yaml").read_text())
    assert stack["config"]["blueprints:location"] == "hel1"
    assert (project / "README.md").read_text().startswith("# Acme Shop\n")
    assert (project / "vendor" / WHEEL).is_file()


def scripted(replies: list[str]):
    """An `ask` that answers from a list and records each question."""
    asked: list[scaffold.Question] = []

    def ask(question: scaffold.Question) -> str:
        asked.append(question)
        reply = replies.pop(0)
        return question.default if reply == "" else reply

    return ask, asked


def test_questions_follow_earlier_answers_and_skip_what_is_settled(user):
    template = scaffold.template_dir()
    # Only LocalStack stacks: no Hetzner location is asked.
    ask, asked = scripted(["Shop", "", "", "", "k8s", "localstack", "", ""])
    answers = scaffold.ask_answers({}, template, ask, pytest.fail, base=user)
    assert [q.key for q in asked] == [k for k in scaffold.ANSWER_KEYS if k != "hcloud_location"]
    assert answers["hcloud_location"] == "fsn1" and answers["target"] == "localstack"
    assert answers["ssh_public_key"] == str(Path(os.environ["HOME"]) / ".ssh/id_ed25519.pub")

    # A spec of your own: its name, domain, e-mail and the admins it lists are not asked; the
    # project name suggests its name; options given are the suggestions.
    own = scaffold.read_spec(ROOT / "examples/app.yaml")
    ask, asked = scripted(["", "", "", ""])
    answers = scaffold.ask_answers(
        {"blueprint": "nomad"}, template, ask, pytest.fail, spec=own, base=user
    )
    assert [q.key for q in asked] == ["project_name", "blueprint", "target", "hcloud_location"]
    assert [q.default for q in asked] == ["shop", "nomad", "both", "fsn1"]
    assert answers["domain"] == "shop.example.com" and answers["ssh_public_key"] == ""


def test_interactive_new_with_a_spec_asks_only_what_it_leaves_open(user):
    copy_grafana(user / "mine")
    replies = ["Monitoring", "", "hcloud", "", "", ""]  # name, blueprint, target, loc, cidr, key
    res = new("infra", "--spec", "mine/app.yaml", input="\n".join(replies) + "\n")
    assert res.exit_code == 0, res.output
    out = res.output
    assert out.startswith(
        "from mine/app.yaml: app monitoring, domain grafana.example.com, ACME e-mail "
        "ops@example.com\n"
    )
    assert "Slug" not in out and "Domain the app" not in out and "E-mail for" not in out
    assert "[6/6] Path of your SSH public key" in out
    app = load_spec(user / "infra" / "app.yaml")
    assert (app.admin.ssh_keys, app.admin.cidrs) == ([KEY], ["203.0.113.0/24"])
    assert (user / "infra" / "README.md").read_text().startswith("# Monitoring\n")


# -- filling in a spec's empty admin lists -------------------------------------------------------

EXAMPLE = (ROOT / "examples/app.yaml").read_text()
NO_ADMIN = EXAMPLE[: EXAMPLE.index("\nadmin:\n") + 1]  # the example without its admin block
TINY = """\
name: tiny
domain: tiny.example.com
acme_email: ops@example.com
services:
  web:
    image: nginx:1.27
    files:
      - path: /etc/motd
        content: |+
          hello

"""
# (name, spec text, admin expected after filling in KEY and 198.51.100.0/24)
ADMIN_LAYOUTS = [
    (
        "blank line and comment between keys",
        NO_ADMIN + "admin:\n  cidrs:\n    - 203.0.113.0/24\n\n  # keys\n  ssh_keys: []\n",
        {"ssh_keys": [KEY], "cidrs": ["203.0.113.0/24"]},
    ),
    (
        "column-0 comment inside admin, comment after the value",
        NO_ADMIN + "admin:\n# who may log in\n  ssh_keys: []  # none yet\n\n"
        "  cidrs: [10.0.0.0/8]  # office\n",
        {"ssh_keys": [KEY], "cidrs": ["10.0.0.0/8"]},
    ),
    (
        "both empty, trailing comment",
        NO_ADMIN + "admin:\n  ssh_keys: []\n  cidrs: [ ]\n# the end\n",
        {"ssh_keys": [KEY], "cidrs": ["198.51.100.0/24"]},
    ),
    (
        "key missing, followed by a comment",
        NO_ADMIN + f"admin:\n  ssh_keys:\n    - {OTHER_KEY}\n  # networks later\n",
        {"ssh_keys": [OTHER_KEY], "cidrs": ["198.51.100.0/24"]},
    ),
    (
        "admin before the services",
        NO_ADMIN.replace("services:", "admin:\n  cidrs: [10.0.0.0/8]\n\nservices:", 1),
        {"ssh_keys": [KEY], "cidrs": ["10.0.0.0/8"]},
    ),
    (
        "flow mapping",
        NO_ADMIN + "admin: {cidrs: [10.0.0.0/8]}  # flow\n",
        {"ssh_keys": [KEY], "cidrs": ["10.0.0.0/8"]},
    ),
    (
        "empty flow mapping",
        NO_ADMIN + "admin: {}\n",
        {"ssh_keys": [KEY], "cidrs": ["198.51.100.0/24"]},
    ),
    (
        "document end marker",
        NO_ADMIN + "admin:\n  cidrs: [10.0.0.0/8]\n...\n",
        {"ssh_keys": [KEY], "cidrs": ["10.0.0.0/8"]},
    ),
    ("no admin", NO_ADMIN, {"ssh_keys": [KEY], "cidrs": ["198.51.100.0/24"]}),
    (
        "no admin, no final line break",
        NO_ADMIN.rstrip("\n"),
        {"ssh_keys": [KEY], "cidrs": ["198.51.100.0/24"]},
    ),
    ("no admin, a kept block scalar last", TINY, {"ssh_keys": [KEY], "cidrs": ["198.51.100.0/24"]}),
]


def own_answers(spec: Path) -> scaffold.Answers:
    app = load_spec(spec)
    return scaffold.Answers(
        project_name="Own", project_slug=app.name, domain=app.domain, acme_email=app.acme_email,
        blueprint="single-vm", target="hcloud", hcloud_location="fsn1",
        admin_cidr="198.51.100.0/24", ssh_public_key="/k.pub", ssh_key=KEY, spec=str(spec),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("text", "admin"), [c[1:] for c in ADMIN_LAYOUTS], ids=[c[0] for c in ADMIN_LAYOUTS]
)
def test_empty_admin_lists_are_filled_in_place(tmp_path, text, admin):
    spec = tmp_path / "app.yaml"
    spec.write_text(text)
    baked_text, _, baked = scaffold._baked_spec(own_answers(spec))
    written = tmp_path / "baked" / "app.yaml"
    written.parent.mkdir()
    written.write_text(baked_text)
    app = load_spec(written)  # the strict loader: no key given twice
    assert app == baked and app.admin.model_dump() == admin
    assert app.model_dump(exclude={"admin"}) == load_spec(spec).model_dump(exclude={"admin"})
    # Nothing but admin's empty lists changed: every comment and every line before admin kept.
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            assert line in baked_text.splitlines(), line
    head = text[: text.find("admin:")] if "admin:" in text else text.rstrip("\n")
    assert baked_text.startswith(head)
    assert baked_text.count("ssh_keys") == 1 and baked_text.count("cidrs") == 1


def test_a_spec_with_comments_in_its_admin_block_bakes(user):
    # The reviewer's case: a blank line and a comment between admin's keys once left the old
    # `ssh_keys: []` behind, and the bake failed naming a temporary path.
    (user / "sp").mkdir()
    (user / "sp" / "app.yaml").write_text(ADMIN_LAYOUTS[0][1])
    (user / "key.pub").write_text(KEY + "\n")
    res = new("p3", "--no-input", "--spec", "sp/app.yaml", "--ssh-public-key", "key.pub")
    assert res.exit_code == 0, res.output
    baked = (user / "p3" / "app.yaml").read_text()
    assert baked.count("ssh_keys:") == 1 and "  # keys\n" in baked
    app = load_spec(user / "p3" / "app.yaml")
    assert (app.admin.ssh_keys, app.admin.cidrs) == ([KEY], ["203.0.113.0/24"])


def test_an_admin_list_that_cannot_be_filled_in_is_refused_naming_your_spec(user):
    (user / "key.pub").write_text(KEY + "\n")
    head = "name: tiny\ndomain: tiny.example.com\nacme_email: ops@example.com\n"
    web = "services:\n  web:\n    image: nginx:1.27\n    depends_on: {}\n"
    anchored = head + "admin:\n  ssh_keys: &none []\n\n" + web.format("*none")
    aliased = head + web.format("&none []") + "admin:\n  cidrs: [10.0.0.0/8]\n  ssh_keys: *none\n"
    cases = [
        # its anchor would be replaced, leaving the alias that reads it undefined
        (anchored, "the answers did not give the same spec (found undefined alias 'none');"),
        # the list is written elsewhere in the file
        (aliased, "admin.ssh_keys: is an alias (*name) of a value written elsewhere"),
    ]
    for text, message in cases:
        spec = user / "mine.yaml"
        spec.write_text(text)
        load_spec(spec)  # a valid spec as written
        res = new("infra", "--no-input", "--spec", str(spec), "--ssh-public-key", "key.pub")
        assert res.exit_code == 2, res.output
        lines = res.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: spec: {spec}: "), res.output
        assert message in lines[0] and ".blueprints-new-" not in res.output
        assert sorted(p.name for p in user.iterdir()) == ["key.pub", "mine.yaml"]


# -- files a spec reads: their paths normalised ---------------------------------------------------


@pytest.mark.parametrize(
    "source", ["./pyproject.toml", ".//README.md", "./vendor/x.yml", "tests/./test_project.py"]
)
def test_a_spec_file_landing_on_a_project_file_is_refused_however_written(user, source):
    spec = copy_grafana(user / "mine")
    (spec.parent / source).parent.mkdir(parents=True, exist_ok=True)
    (spec.parent / source).write_text("scrape config\n")
    spec.write_text(spec.read_text().replace("source: grafana/datasource.yml", f"source: {source}"))
    load_spec(spec)
    res = new("infra", "--spec", str(spec), "--no-input", "--admin-cidr", "10.0.0.0/8")
    assert res.exit_code == 2, res.output
    rel = os.path.normpath(source)
    assert error_lines(res.output) == [
        f"error: spec: {spec}: the file {rel} its services read would land on the baked "
        f"project's own {rel}; move it into a directory of its own (like config/)"
    ]
    assert sorted(p.name for p in user.iterdir()) == ["mine"]


def test_a_spec_file_written_with_dot_slash_lands_at_its_normal_path(user):
    spec = copy_grafana(user / "mine")
    spec.write_text(
        spec.read_text().replace(
            "source: grafana/datasource.yml", "source: ./grafana//datasource.yml"
        )
    )
    res = new("infra", "--spec", str(spec), "--no-input", "--admin-cidr", "10.0.0.0/8")
    assert res.exit_code == 0, res.output
    copied = user / "infra" / "grafana" / "datasource.yml"
    assert copied.read_bytes() == (spec.parent / "grafana" / "datasource.yml").read_bytes()
    assert load_spec(user / "infra" / "app.yaml").model_dump(exclude={"admin"}) == load_spec(
        spec
    ).model_dump(exclude={"admin"})


# -- answers as TOML, the Pythons a project runs on, finding uv ----------------------------------


def test_toml_strings_hold_any_text():
    samples = ["Shop 🛒", 'a "quoted" \\ back\\slash', "".join(map(chr, range(0x80))), "𝄞 \u2028 é"]
    for text in samples:
        assert tomllib.loads(f"x = {scaffold.toml_string(text)}\n")["x"] == text, text
    assert "🛒" in scaffold.toml_string("Shop 🛒")  # as itself, not as escapes
    with pytest.raises(scaffold.ScaffoldError, match="is not valid UTF-8 text"):
        scaffold.check_given({"project_name": "Shop \udcff"})  # a byte that was not UTF-8


def test_a_project_name_with_an_emoji_bakes(user):
    res = new("emo", "--no-input", "--project-name", "Shop 🛒", "--project-slug", "emo")
    assert res.exit_code == 0, res.output
    pyproject = tomllib.loads((user / "emo" / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["project"]["description"].startswith("Shop 🛒: ")
    assert (user / "emo" / "README.md").read_text(encoding="utf-8").startswith("# Shop 🛒\n")


def test_the_project_runs_on_the_baking_pythons_minor_version_and_up(tmp_path):
    assert scaffold.requires_python((3, 13, 1)) == ">=3.13"
    wheel = build_wheel(tmp_path)
    pins = scaffold.project_pins(wheel)
    answers = own_answers(ROOT / "examples/app.yaml")
    text = scaffold.pyproject_text(answers, wheel.name, pins)
    lowest = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert tomllib.loads(text)["project"]["requires-python"] == f">={lowest}"
    # Every pinned version runs on every Python the project allows (its lowest one here), so
    # `uv lock` can resolve them for all of them (tests/test_new_offline.py locks for real).
    for pin in pins:
        needs = importlib.metadata.metadata(pin.split("==")[0]).get("Requires-Python")
        assert not needs or SpecifierSet(needs).contains(lowest), (pin, needs)


def test_uv_is_found_where_pip_or_its_installer_put_it(tmp_path, monkeypatch):
    from blueprints import vendoring

    def fake_uv(where: Path) -> str:
        where.mkdir(parents=True, exist_ok=True)
        (where / "uv").write_text("#!/bin/sh\n")
        (where / "uv").chmod(0o755)
        return str(where / "uv")

    of_this_python = vendoring._uv_of_this_python
    monkeypatch.delenv("UV", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "path"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(vendoring.site, "getuserbase", lambda: str(tmp_path / "userbase"))
    monkeypatch.setattr(vendoring, "_uv_of_this_python", lambda: None)
    assert vendoring.find_uv() is None
    with pytest.raises(vendoring.VendorError) as refused:
        vendoring.build_wheel(tmp_path / "out")
    assert "\n" not in str(refused.value) and "set UV to its path" in str(refused.value)

    # Found in each place, the earlier ones first: `pip install --user uv` (the user site's
    # bin: ~/Library/Python/X.Y/bin on macOS), uv's installer (~/.local/bin), the uv package
    # of this Python (what `python -m uv` runs), PATH, and UV.
    assert fake_uv(tmp_path / "userbase" / "bin") == vendoring.find_uv()
    assert fake_uv(tmp_path / "home" / ".local" / "bin") == vendoring.find_uv()
    package = tmp_path / "site" / "uv"
    package.mkdir(parents=True)
    binary = fake_uv(tmp_path / "site" / "bin")
    (package / "__init__.py").write_text(f"def find_uv_bin():\n    return {binary!r}\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "uv", raising=False)
    monkeypatch.setattr(vendoring, "_uv_of_this_python", of_this_python)
    assert vendoring.find_uv() == binary
    assert fake_uv(tmp_path / "path") == vendoring.find_uv()
    monkeypatch.setenv("UV", fake_uv(tmp_path / "running"))
    assert vendoring.find_uv() == str(tmp_path / "running" / "uv")
