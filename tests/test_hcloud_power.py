"""The hcloud power resource's provider (blueprints.targets.hcloud_power) against the fake
Hetzner API, driven through the official hcloud client exactly as `pulumi up` drives it."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator

import dill
import pytest
from fakes import FakeHcloud
from pulumi.dynamic.dynamic import serialize_provider
from pulumi.runtime import rpc

from blueprints.targets.hcloud_power import PowerError, ServerPowerProvider

TOKEN = "power-token"


@pytest.fixture
def fake() -> Iterator[FakeHcloud]:
    with FakeHcloud(token=TOKEN) as server:
        yield server


def provider() -> ServerPowerProvider:
    """The provider with short waits (it builds its own client from the inputs)."""
    return ServerPowerProvider(poll=0.01, shutdown_wait=0.3, power_wait=10)


def props(fake: FakeHcloud, sid: int, state: str, **extra: object) -> dict[str, object]:
    return {
        "serverId": str(sid),
        "state": state,
        "token": TOKEN,
        "endpoint": fake.url,
        "timeout": 5,
        **extra,
    }


def status(fake: FakeHcloud, sid: int) -> str:
    return fake.state()["servers"][sid]["status"]


def actions(fake: FakeHcloud) -> list[str]:
    return [path.rsplit("/", 1)[-1] for method, path in fake.requests if method == "POST"]


def test_create_powers_on_a_server_meant_to_run(fake: FakeHcloud):
    sid = fake.add_server("shop-primary", status="off")
    result = provider().create(props(fake, sid, "running"))
    assert result.id == str(sid)
    assert result.outs == {**props(fake, sid, "running"), "status": "running"}
    assert status(fake, sid) == "running"
    assert actions(fake) == ["poweron"]


def test_create_shuts_a_cold_spare_down_cleanly(fake: FakeHcloud):
    sid = fake.add_server("shop-spare")
    result = provider().create(props(fake, sid, "off"))
    assert result.outs["status"] == "off" and status(fake, sid) == "off"
    # an ACPI shutdown was enough: no hard power-off
    assert actions(fake) == ["shutdown"]


def test_a_server_ignoring_the_shutdown_is_powered_off():
    with FakeHcloud(token=TOKEN, shutdown_powers_off=False) as fake:
        sid = fake.add_server("shop-spare")
        started = time.monotonic()
        result = provider().create(props(fake, sid, "off"))
        assert result.outs["status"] == "off"
        assert actions(fake) == ["shutdown", "poweroff"]
        assert time.monotonic() - started >= 0.3  # it gave the OS its shutdown_wait


def test_nothing_is_sent_when_the_server_already_is_as_wanted(fake: FakeHcloud):
    sid = fake.add_server("shop-primary")
    assert provider().create(props(fake, sid, "running")).outs["status"] == "running"
    assert actions(fake) == []


def test_diff_reads_the_real_status(fake: FakeHcloud):
    """Pulumi's record says running and nothing changed in the program, but the server is off
    (a promotion fenced it, someone stopped it): an update, which powers it on."""
    sid = fake.add_server("shop-primary")
    p = provider()
    olds = p.create(props(fake, sid, "running")).outs
    news = props(fake, sid, "running")
    same = p.diff(str(sid), olds, news)
    assert same.changes is False and not same.replaces
    fake.set_status(sid, "off")
    found_off = p.diff(str(sid), olds, news)
    assert found_off.changes is True and found_off.replaces == []
    # ... and the update that follows powers it on
    assert p.update(str(sid), olds, news).outs["status"] == "running"
    assert status(fake, sid) == "running"
    assert p.diff(str(sid), olds, news).changes is False
    # on its way to the wanted state is not a difference
    fake.set_status(sid, "starting")
    assert p.diff(str(sid), olds, news).changes is False


def test_diff_of_a_changed_wish_or_another_server(fake: FakeHcloud):
    sid = fake.add_server("shop-spare")
    other = fake.add_server("shop-spare-2")
    p = provider()
    olds = p.create(props(fake, sid, "running")).outs
    park = p.diff(str(sid), olds, props(fake, sid, "off"))
    assert park.changes is True and park.replaces == []
    assert p.update(str(sid), olds, props(fake, sid, "off")).outs["status"] == "off"
    # another server (a replaced one): a new power resource, the old one deleted first
    moved = p.diff(str(sid), olds, props(fake, other, "running"))
    assert moved.changes is True and moved.replaces == ["serverId"]
    assert moved.delete_before_replace is True
    # a server not created yet (unknown id in a preview) is another server too
    unknown = p.diff(str(sid), olds, {**props(fake, sid, "running"), "serverId": rpc.UNKNOWN})
    assert unknown.replaces == ["serverId"]
    # a token only known at apply time: the stored one reads the status meanwhile
    later = p.diff(str(sid), olds, {**props(fake, sid, "running"), "token": rpc.UNKNOWN})
    assert later.changes is True and later.replaces == []


def test_read_reports_the_status_and_a_vanished_server(fake: FakeHcloud):
    sid = fake.add_server("shop-spare", status="off")
    p = provider()
    read = p.read(str(sid), props(fake, sid, "running", status="running"))
    assert read.id == str(sid) and read.outs["status"] == "off"
    fake.remove_server(sid)
    gone = p.read(str(sid), props(fake, sid, "running"))
    assert gone.id == "" and gone.outs == {}


def test_delete_leaves_the_server_as_it_is(fake: FakeHcloud):
    sid = fake.add_server("shop-primary")
    provider().delete(str(sid), props(fake, sid, "off"))
    assert status(fake, sid) == "running" and actions(fake) == []


def test_a_locked_server_is_retried(fake: FakeHcloud):
    """A server just created is locked by its own actions for a while (Hetzner answers 423)."""
    sid = fake.add_server("shop-primary", status="off")
    fake.fail_next("POST", rf"/servers/{sid}/actions/poweron", 423, "locked", times=2)
    assert provider().create(props(fake, sid, "running")).outs["status"] == "running"
    assert actions(fake) == ["poweron", "poweron", "poweron"]


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (
            "bad token",
            "could not read server {sid}: the Hetzner API answered unauthorized: ",
        ),
        (
            "no server",
            "server {sid} does not exist (deleted outside Pulumi?); run `pulumi refresh`",
        ),
        (
            "action fails",
            "could not power on server {sid}: its action ended error (action_failed: "
            "Action failed)",
        ),
        ("rejected", "could not power on server {sid}: the Hetzner API answered server_error: "),
    ],
)
def test_failures_are_one_sentence(fake: FakeHcloud, setup: str, message: str):
    sid = fake.add_server("shop-primary", status="off")
    wanted = props(fake, sid, "running")
    if setup == "bad token":
        wanted["token"] = "wrong"
    elif setup == "no server":
        fake.remove_server(sid)
    elif setup == "action fails":
        fake.fail_next_action("start_server")
    else:
        fake.fail_next("POST", rf"/servers/{sid}/actions/poweron", 500, "server_error")
    with pytest.raises(PowerError) as raised:
        provider().create(wanted)
    text = str(raised.value)
    assert text.startswith(message.format(sid=sid)), text
    assert "\n" not in text and raised.value.__cause__ is None


def test_the_token_is_stripped_and_never_shown(fake: FakeHcloud):
    """A token pasted with its line end (`pulumi config set --secret hcloud:token < file`)
    works; an error that quotes the token (the HTTP library's complaint about a broken header,
    an API message) shows *** in its place."""
    sid = fake.add_server("shop-primary", status="off")
    wanted = props(fake, sid, "running", token=f"{TOKEN}\n")
    assert provider().create(wanted).outs["status"] == "running"
    fake.fail_next("GET", rf"/servers/{sid}$", 500, "server_error", f"bad token {TOKEN}", times=2)
    for call in (lambda: provider().create(wanted), lambda: provider().status(wanted)):
        with pytest.raises(PowerError) as raised:
            call()
        text = str(raised.value)
        assert text == f"could not read server {sid}: the Hetzner API answered server_error: " + (
            "bad token ***"
        )
        assert TOKEN not in text


def test_the_sdk_retries_nothing_unseen(fake: FakeHcloud):
    """The hcloud SDK would retry a gateway error or a timed-out request 5 times, backing off
    up to 60 s; here a read answers at once, and `apply` retries within power_wait."""
    sid = fake.add_server("shop-primary", status="off")
    wanted = props(fake, sid, "running")
    fake.fail_next("GET", rf"/servers/{sid}$", 502, "bad_gateway")
    started = time.monotonic()
    with pytest.raises(PowerError, match="the Hetzner API answered bad_gateway"):
        provider().status(wanted)
    assert time.monotonic() - started < 1.0
    reads = [path for method, path in fake.requests if method == "GET"]
    assert len(reads) == 1
    # powering on retries by itself, well inside its wait
    fake.fail_next("GET", rf"/servers/{sid}$", 502, "bad_gateway")
    fake.fail_next("POST", rf"/servers/{sid}/actions/poweron", 429, "rate_limit_exceeded")
    assert provider().create(wanted).outs["status"] == "running"
    assert actions(fake) == ["poweron", "poweron"]


def test_an_unreachable_api_is_named(fake: FakeHcloud):
    sid = fake.add_server("shop-primary")
    wanted = props(fake, sid, "running", endpoint="http://127.0.0.1:9/v1", timeout=1)
    with pytest.raises(PowerError, match=r"could not read server \d+ from http://127.0.0.1:9/v1"):
        ServerPowerProvider(poll=0.01).status(wanted)


def test_check_refuses_an_unknown_state():
    failures = ServerPowerProvider().check({}, {"serverId": "1", "state": "parked"}).failures
    assert [(f.property, f.reason) for f in failures] == [("state", "must be one of running, off")]
    assert ServerPowerProvider().check({}, {"serverId": "1", "state": "off"}).failures == []


def test_the_provider_travels_by_reference():
    """Pulumi stores the provider with each resource (dill): by module and class name, so it is
    small, the same bytes every run, and loads the installed code."""
    text = serialize_provider(ServerPowerProvider())
    assert text == serialize_provider(ServerPowerProvider()) and len(text) < 400
    raw = base64.b64decode(text)
    assert b"blueprints.targets.hcloud_power" in raw and b"def " not in raw
    loaded = dill.loads(raw)
    assert isinstance(loaded, ServerPowerProvider) and loaded.poll == 2.0


def _struct(values: dict[str, object]):
    from google.protobuf import struct_pb2

    out = struct_pb2.Struct()
    out.update(values)
    return out


def test_pulumis_dynamic_provider_host_drives_it(fake: FakeHcloud, tmp_path):
    """The way `pulumi up` reaches the provider: Pulumi's dynamic provider host in a process of
    its own (`python -m pulumi.dynamic`, what pulumi-resource-pulumi-python runs), over gRPC,
    given the serialized provider and the inputs as the engine sends them (plain: the host
    accepts no secrets, so the engine unwraps the token; a new server's id unknown in a
    preview)."""
    import subprocess
    import sys

    import grpc
    from pulumi.runtime import proto
    from pulumi.runtime.proto import provider_pb2_grpc

    with FakeHcloud(token=TOKEN, action_polls=0) as fast:
        sid = fast.add_server("shop-primary", status="off")
        process = subprocess.Popen(
            [sys.executable, "-m", "pulumi.dynamic"], stdout=subprocess.PIPE, cwd=tmp_path
        )
        try:
            port = int(process.stdout.readline())
            channel = grpc.insecure_channel(f"127.0.0.1:{port}")
            host = provider_pb2_grpc.ResourceProviderStub(channel)
            inputs = {
                "__provider": serialize_provider(ServerPowerProvider()),
                "serverId": str(sid),
                "state": "running",
                "token": TOKEN,
                "endpoint": fast.url,
                "timeout": 5,
            }
            checked = host.Check(proto.CheckRequest(olds=_struct({}), news=_struct(inputs)))
            assert list(checked.failures) == []
            created = host.Create(proto.CreateRequest(properties=_struct(inputs)))
            assert created.id == str(sid)
            assert fast.state()["servers"][sid]["status"] == "running"
            outs = rpc.deserialize_properties(created.properties)
            assert outs["status"] == "running" and outs["token"] == TOKEN

            def diff(news: dict[str, object]):
                return host.Diff(
                    proto.DiffRequest(id=str(sid), olds=created.properties, news=_struct(news))
                )

            assert diff(inputs).changes == proto.DiffResponse.DIFF_NONE
            fast.set_status(sid, "off")  # fenced, or stopped in the console
            assert diff(inputs).changes == proto.DiffResponse.DIFF_SOME
            replaced = diff({**inputs, "serverId": rpc.UNKNOWN})
            assert list(replaced.replaces) == ["serverId"] and replaced.deleteBeforeReplace
            updated = host.Update(
                proto.UpdateRequest(id=str(sid), olds=created.properties, news=_struct(inputs))
            )
            assert rpc.deserialize_properties(updated.properties)["status"] == "running"
            assert fast.state()["servers"][sid]["status"] == "running"
            read = host.Read(proto.ReadRequest(id=str(sid), properties=created.properties))
            assert read.id == str(sid)
            assert rpc.deserialize_properties(read.properties)["status"] == "running"
            # a failure reaches Pulumi as the provider's error, naming the server
            fast.remove_server(sid)
            with pytest.raises(grpc.RpcError) as failed:
                host.Update(
                    proto.UpdateRequest(id=str(sid), olds=created.properties, news=_struct(inputs))
                )
            # one sentence, as `pulumi up` prints it: no traceback of the provider's code
            assert failed.value.details().splitlines() == [
                "blueprints.targets.hcloud_power.PowerError: "
                f"server {sid} does not exist (deleted outside Pulumi?); run `pulumi refresh`"
            ]
            # ... and never the token, whatever the API says
            fast.add_server("shop-spare")
            other = {**inputs, "serverId": str(sid + 1), "token": f"{TOKEN}\n"}
            fast.fail_next("GET", rf"/servers/{sid + 1}$", 500, "server_error", f"{TOKEN}?")
            with pytest.raises(grpc.RpcError) as failed:
                host.Create(proto.CreateRequest(properties=_struct(other)))
            assert failed.value.details().splitlines() == [
                "blueprints.targets.hcloud_power.PowerError: could not read server "
                f"{sid + 1}: the Hetzner API answered server_error: ***?"
            ]
            channel.close()
        finally:
            process.kill()
            process.wait(timeout=10)
            process.stdout.close()
