"""The Hetzner Cloud fake, driven through the official hcloud SDK (and raw HTTP where the
SDK would hide what is being checked)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from fakes import DROP, FakeHcloud
from hcloud import APIException, Client
from hcloud.actions import ActionFailedException

AUTH = {"Authorization": "Bearer test-token"}


@pytest.fixture
def fake() -> Iterator[FakeHcloud]:
    with FakeHcloud() as server:
        yield server


@pytest.fixture
def client(fake: FakeHcloud) -> Client:
    return fake.client()


def post(fake: FakeHcloud, path: str, body: dict[str, Any] | None = None) -> requests.Response:
    return requests.post(f"{fake.url}{path}", json=body, headers=AUTH, timeout=5)


def get(fake: FakeHcloud, path: str, **params: Any) -> requests.Response:
    return requests.get(f"{fake.url}{path}", params=params, headers=AUTH, timeout=5)


# ----------------------------------------------------------------------------- lifecycle


def test_start_stop_leaves_no_threads() -> None:
    before = set(threading.enumerate())
    with FakeHcloud() as fake:
        fake.add_server("a")
        assert fake.url.startswith("http://127.0.0.1:") and fake.url.endswith("/v1")
        assert get(fake, "/servers").status_code == 200
    assert set(threading.enumerate()) <= before


def test_missing_or_wrong_token_is_401() -> None:
    with FakeHcloud(token="right") as fake:
        resp = requests.get(f"{fake.url}/servers", timeout=5)
        assert resp.status_code == 401
        assert resp.json()["error"]["code"] == "unauthorized"
        with pytest.raises(APIException) as exc:
            fake.client(token="wrong").servers.get_all()
        assert exc.value.code == "unauthorized"
        assert fake.client(token="right").servers.get_all() == []


# ----------------------------------------------------------------------------- reads


def test_list_by_label_selector_and_name(fake: FakeHcloud, client: Client) -> None:
    primary = fake.add_server("web-1", "fsn1", {"app": "shop", "role": "primary"})
    spare = fake.add_server("web-2", "nbg1", {"app": "shop", "role": "spare"}, status="off")
    db = fake.add_server("db-1", "fsn1", {"app": "db"})

    found = client.servers.get_all(label_selector="app=shop,role==primary")
    assert [s.id for s in found] == [primary]
    srv = found[0]
    assert srv.status == "running"
    assert srv.location.name == "fsn1"
    assert srv.public_net.ipv4.ip
    assert srv.labels == {"app": "shop", "role": "primary"}

    assert {s.id for s in client.servers.get_all(label_selector="app=shop")} == {primary, spare}
    assert [s.id for s in client.servers.get_all(label_selector="app,role!=primary")] == [
        spare,
        db,
    ]
    assert [s.name for s in client.servers.get_all(label_selector="role in (spare,x)")] == ["web-2"]
    assert [s.name for s in client.servers.get_all(label_selector="!role")] == ["db-1"]
    assert client.servers.get_by_name("web-2").id == spare
    assert [s.id for s in client.servers.get_all(status=["off"])] == [spare]

    vol = fake.add_volume("data", "fsn1", {"app": "shop"}, server=primary)
    fip = fake.add_floating_ip("vip", "fsn1", {"app": "shop"}, server=primary)
    fake.add_volume("other", "nbg1", {"app": "db"})
    [volume] = client.volumes.get_all(label_selector="app=shop")
    assert (volume.id, volume.server.id, volume.location.name) == (vol, primary, "fsn1")
    [floating] = client.floating_ips.get_all(label_selector="app=shop")
    assert (floating.id, floating.server.id, floating.home_location.name) == (fip, primary, "fsn1")

    resp = get(fake, "/servers", label_selector="app=(")
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "invalid_input"


def test_label_selector_negation_matches_missing_keys(fake: FakeHcloud, client: Client) -> None:
    fake.add_server("a", labels={"role": "primary"})
    fake.add_server("b", labels={"role": "spare"})
    fake.add_server("c")
    names = [s.name for s in client.servers.get_all(label_selector="role!=primary")]
    assert names == ["b", "c"]
    names = [s.name for s in client.servers.get_all(label_selector="role notin (primary)")]
    assert names == ["b", "c"]


def test_pagination(fake: FakeHcloud, client: Client) -> None:
    for i in range(5):
        fake.add_server(f"s{i}", labels={"app": "x"})
    page = client.servers.get_list(label_selector="app=x", page=2, per_page=2)
    assert [s.name for s in page.servers] == ["s2", "s3"]
    pagination = page.meta.pagination
    assert (pagination.previous_page, pagination.next_page, pagination.last_page) == (1, 3, 3)
    assert pagination.total_entries == 5
    client.servers.max_per_page = 2  # force get_all to walk pages
    assert len(client.servers.get_all(label_selector="app=x")) == 5


def test_unknown_ids_are_404(fake: FakeHcloud, client: Client) -> None:
    for call in (
        lambda: client.servers.get_by_id(999),
        lambda: client.volumes.get_by_id(999),
        lambda: client.floating_ips.get_by_id(999),
        lambda: client.actions.get_by_id(999),
    ):
        with pytest.raises(APIException) as exc:
            call()
        assert exc.value.code == "not_found"
    assert post(fake, "/servers/999/actions/poweroff").status_code == 404


def test_label_updates_are_immediate_and_names_unique(fake: FakeHcloud, client: Client) -> None:
    a = fake.add_server("a", labels={"role": "primary"})
    fake.add_server("b")
    vol = fake.add_volume("data")
    fip = fake.add_floating_ip("vip")
    updated = client.servers.update(client.servers.get_by_id(a), labels={"role": "fenced"})
    assert updated.labels == {"role": "fenced"}
    assert fake.state()["servers"][a]["labels"] == {"role": "fenced"}
    client.volumes.update(client.volumes.get_by_id(vol), name="data2", labels={"k": "v"})
    assert fake.state()["volumes"][vol] == {
        "name": "data2",
        "server": None,
        "location": "fsn1",
        "labels": {"k": "v"},
    }
    client.floating_ips.update(client.floating_ips.get_by_id(fip), description="d", labels={})
    assert client.floating_ips.get_by_id(fip).description == "d"
    with pytest.raises(APIException) as exc:
        client.servers.update(client.servers.get_by_id(a), name="b")
    assert exc.value.code == "uniqueness_error"


# ----------------------------------------------------------------------------- actions


def test_power_off_waits_for_action(fake: FakeHcloud, client: Client) -> None:
    sid = fake.add_server("web", status="running")
    action = client.servers.get_by_id(sid).power_off()
    assert (action.status, action.command) == ("running", "stop_server")
    assert action.resources == [{"id": sid, "type": "server"}]
    assert client.servers.get_by_id(sid).status == "stopping"

    action.wait_until_finished()
    assert action.status == "success"
    assert action.finished is not None
    assert client.servers.get_by_id(sid).status == "off"
    polls = [r for r in fake.requests if r == ("GET", f"/v1/actions/{action.id}")]
    assert len(polls) == 2  # finishes on the 2nd poll by default

    action = client.servers.get_by_id(sid).power_on()
    assert client.servers.get_by_id(sid).status == "starting"
    action.wait_until_finished()
    assert fake.state()["servers"][sid]["status"] == "running"


def test_power_noops_succeed_immediately(fake: FakeHcloud, client: Client) -> None:
    off = fake.add_server("off", status="off")
    on = fake.add_server("on", status="running")
    assert client.servers.get_by_id(off).power_off().status == "success"
    assert client.servers.get_by_id(off).shutdown().status == "success"
    assert client.servers.get_by_id(on).power_on().status == "success"
    # no-op actions hold no lock
    assert client.servers.get_by_id(on).power_on().status == "success"
    assert fake.state()["servers"][off]["status"] == "off"


def test_locked_while_action_runs(fake: FakeHcloud) -> None:
    sid = fake.add_server("web")
    vol = fake.add_volume("data")
    first = post(fake, f"/servers/{sid}/actions/poweroff")
    assert first.status_code == 201
    assert first.json()["action"]["status"] == "running"

    second = post(fake, f"/servers/{sid}/actions/poweroff")
    assert second.status_code == 423
    assert second.json()["error"]["code"] == "locked"
    # attaching to the busy server is locked too
    attach = post(fake, f"/volumes/{vol}/actions/attach", {"server": sid, "automount": False})
    assert attach.status_code == 423

    action_id = first.json()["action"]["id"]
    assert get(fake, f"/servers/{sid}/actions/{action_id}").json()["action"]["status"] == "running"
    assert get(fake, "/actions", id=action_id).json()["actions"][0]["status"] == "success"
    assert post(fake, f"/servers/{sid}/actions/poweron").status_code == 201
    listed = get(fake, f"/servers/{sid}/actions", status="running").json()["actions"]
    assert [a["command"] for a in listed] == ["start_server"]


def test_attach_across_locations_rejected(fake: FakeHcloud, client: Client) -> None:
    server = fake.add_server("far", "nbg1")
    vol = fake.add_volume("data", "fsn1")
    with pytest.raises(APIException) as exc:
        client.volumes.attach(client.volumes.get_by_id(vol), client.servers.get_by_id(server))
    assert exc.value.code == "invalid_input"
    assert fake.state()["volumes"][vol]["server"] is None


def test_double_attach_rejected(fake: FakeHcloud, client: Client) -> None:
    a = fake.add_server("a", "fsn1")
    b = fake.add_server("b", "fsn1")
    vol = fake.add_volume("data", "fsn1")
    volume = client.volumes.get_by_id(vol)
    action = client.volumes.attach(volume, client.servers.get_by_id(a), automount=False)
    assert fake.state()["volumes"][vol]["server"] is None  # not before the action finishes
    action.wait_until_finished()
    assert fake.state()["volumes"][vol]["server"] == a
    assert [v.id for v in client.servers.get_by_id(a).volumes] == [vol]

    for target in (b, a):
        with pytest.raises(APIException) as exc:
            client.volumes.attach(volume, client.servers.get_by_id(target))
        assert exc.value.code == "volume_already_attached"

    client.volumes.detach(volume).wait_until_finished()
    assert fake.state()["volumes"][vol]["server"] is None
    with pytest.raises(APIException) as exc:
        client.volumes.detach(volume)
    assert exc.value.code == "invalid_input"

    client.volumes.attach(volume, client.servers.get_by_id(b)).wait_until_finished()
    assert fake.state()["volumes"][vol]["server"] == b


def test_reassign_floating_ip(fake: FakeHcloud, client: Client) -> None:
    primary = fake.add_server("primary", "fsn1")
    spare = fake.add_server("spare", "hel1")
    fid = fake.add_floating_ip("vip", "fsn1", server=primary)
    fip = client.floating_ips.get_by_id(fid)

    action = fip.assign(client.servers.get_by_id(spare))  # another location is fine
    assert action.status == "running"
    assert fake.state()["floating_ips"][fid]["server"] == primary
    action.wait_until_finished()
    assert fake.state()["floating_ips"][fid]["server"] == spare
    assert [f.id for f in client.servers.get_by_id(spare).public_net.floating_ips] == [fid]
    assert client.servers.get_by_id(primary).public_net.floating_ips == []

    again = fip.assign(client.servers.get_by_id(spare))
    assert again.status == "success"  # same server: no-op

    fip.unassign().wait_until_finished()
    assert fake.state()["floating_ips"][fid]["server"] is None
    assert fip.unassign().status == "success"


def test_failed_action_rolls_back(fake: FakeHcloud, client: Client) -> None:
    sid = fake.add_server("web")
    fake.fail_next_action("stop_server", message="hypervisor unreachable")
    action = client.servers.get_by_id(sid).power_off()
    with pytest.raises(ActionFailedException) as exc:
        action.wait_until_finished()
    assert exc.value.action.error == {"code": "action_failed", "message": "hypervisor unreachable"}
    assert fake.state()["servers"][sid]["status"] == "running"


def test_action_timing_modes() -> None:
    with FakeHcloud(action_polls=0) as fake:
        sid = fake.add_server("web")
        assert fake.client().servers.get_by_id(sid).power_off().status == "success"
        assert fake.state()["servers"][sid]["status"] == "off"

    with FakeHcloud(action_polls=None, action_delay=0.05) as fake:
        sid = fake.add_server("web")
        client = fake.client()
        action = client.servers.get_by_id(sid).power_off()
        action.wait_until_finished(max_retries=200)
        assert action.status == "success"

    with FakeHcloud(action_polls=None) as fake:
        sid = fake.add_server("web")
        fake.client().servers.get_by_id(sid).power_off()
        assert fake.state()["servers"][sid]["status"] == "stopping"
        assert fake.complete_actions() == 1
        assert fake.state()["servers"][sid]["status"] == "off"


# ----------------------------------------------------------------------------- faults


def test_fail_next_500_and_423(fake: FakeHcloud, client: Client) -> None:
    sid = fake.add_server("web")
    fake.fail_next("GET", r"^/v1/servers$", 500, "server_error", "boom")
    with pytest.raises(APIException) as exc:
        client.servers.get_all()
    assert (exc.value.code, exc.value.message) == ("server_error", "boom")
    assert len(client.servers.get_all()) == 1  # consumed

    fake.fail_next("POST", r"/actions/poweroff$", 423, "locked", times=2)
    for _ in range(2):
        with pytest.raises(APIException) as exc:
            client.servers.get_by_id(sid).power_off()
        assert exc.value.code == "locked"
    assert fake.state()["servers"][sid]["status"] == "running"
    client.servers.get_by_id(sid).power_off().wait_until_finished()
    assert fake.state()["servers"][sid]["status"] == "off"


def test_rate_limit_is_retried_by_sdk(fake: FakeHcloud, client: Client) -> None:
    fake.add_server("web")
    fake.fail_next("GET", r"^/v1/servers$", 429, "rate_limit_exceeded")
    resp = get(fake, "/servers")
    assert resp.status_code == 429
    assert resp.headers["RateLimit-Remaining"] == "0"
    assert {"RateLimit-Limit", "RateLimit-Reset"} <= set(resp.headers)

    fake.fail_next("GET", r"^/v1/servers$", 429, "rate_limit_exceeded")
    fake.clear_requests()
    assert len(client.servers.get_all()) == 1  # the SDK retries rate_limit_exceeded
    assert fake.requests == [("GET", "/v1/servers")] * 2


def test_lost_response_still_applies(fake: FakeHcloud, client: Client) -> None:
    sid = fake.add_server("web")
    fake.fail_next("POST", r"/poweroff$", 500, "server_error", apply=True)
    with pytest.raises(APIException):
        client.servers.get_by_id(sid).power_off()
    assert fake.state()["servers"][sid]["status"] == "stopping"
    resp = post(fake, f"/servers/{sid}/actions/poweroff")
    assert resp.status_code == 423  # the unseen action holds the lock


def test_on_request_hook(fake: FakeHcloud, client: Client) -> None:
    sid = fake.add_server("web")
    seen: list[tuple[str, str]] = []

    def hook(method: str, path: str) -> Any:
        seen.append((method, path))
        if path.endswith("/poweron"):
            fake.set_status(sid, "running")  # the primary comes back on its own
        if path.endswith("/shutdown"):
            return DROP
        return None

    fake.on_request(hook)
    fake.set_status(sid, "off")
    assert client.servers.get_by_id(sid).status == "off"
    assert client.servers.get_by_id(sid).power_on().status == "success"
    with pytest.raises(requests.ConnectionError):
        client.servers.get_by_id(sid).shutdown()
    assert ("POST", f"/v1/servers/{sid}/actions/shutdown") in seen
    assert fake.state()["servers"][sid]["status"] == "running"
    assert fake.errors == []


# ----------------------------------------------------------------------------- placement groups


def test_placement_groups_crud(fake: FakeHcloud, client: Client) -> None:
    made = client.placement_groups.create(name="lock-a", type="spread", labels={"owner": "x-1"})
    group = made.placement_group
    assert (group.name, group.type, group.labels, made.action) == (
        "lock-a",
        "spread",
        {"owner": "x-1"},
        None,
    )
    client.placement_groups.create(name="other", type="spread", labels={"app": "db"})

    assert [g.id for g in client.placement_groups.get_all(name="lock-a")] == [group.id]
    assert [g.name for g in client.placement_groups.get_all(label_selector="app=db")] == ["other"]
    assert client.placement_groups.get_by_id(group.id).labels == {"owner": "x-1"}

    updated = client.placement_groups.update(group, labels={"owner": "x-2", "beat": "12"})
    assert updated.labels == {"owner": "x-2", "beat": "12"}
    assert fake.placement_groups()[group.id]["labels"] == {"owner": "x-2", "beat": "12"}

    with pytest.raises(APIException) as exc:
        client.placement_groups.create(name="lock-a", type="spread")
    assert exc.value.code == "uniqueness_error"
    resp = post(fake, "/placement_groups", {"name": "lock-b", "type": "cluster"})
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_input"
    bad = post(
        fake, "/placement_groups", {"name": "lock-b", "type": "spread", "labels": {"k": "-x"}}
    )
    assert bad.status_code == 400

    assert client.placement_groups.delete(group) is True
    resp = requests.delete(f"{fake.url}/placement_groups/{group.id}", headers=AUTH, timeout=5)
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found"
    for call in (
        lambda: client.placement_groups.get_by_id(group.id),
        lambda: client.placement_groups.update(group, labels={}),
    ):
        with pytest.raises(APIException) as exc:
            call()
        assert exc.value.code == "not_found"
    assert client.placement_groups.get_all(name="lock-a") == []


def test_placement_group_names_are_taken_atomically(fake: FakeHcloud) -> None:
    """Twenty clients create one name at the same moment: exactly one gets it."""
    start = threading.Barrier(20)
    codes: list[int] = []

    def create(i: int) -> None:
        start.wait()
        resp = post(
            fake, "/placement_groups", {"name": "lock", "type": "spread", "labels": {"n": str(i)}}
        )
        codes.append(resp.status_code)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(codes) == [201] + [409] * 19
    assert len(fake.placement_groups()) == 1


# ----------------------------------------------------------------------------- clock, silence


def test_date_header_follows_the_fake_clock(fake: FakeHcloud) -> None:
    from email.utils import parsedate_to_datetime

    def date() -> float:
        return parsedate_to_datetime(get(fake, "/servers").headers["Date"]).timestamp()

    assert abs(date() - time.time()) < 3
    fake.shift_clock(660)
    assert abs(date() - (time.time() + 660)) < 3
    assert abs(fake.now() - (time.time() + 660)) < 1
    fake.shift_clock(-1320)
    assert abs(date() - (time.time() - 660)) < 3


def test_silence_accepts_and_never_answers(fake: FakeHcloud) -> None:
    fake.add_server("web")
    fake.silence()
    started = time.monotonic()
    with pytest.raises(requests.ReadTimeout):
        requests.get(f"{fake.url}/servers", headers=AUTH, timeout=(2, 0.5))
    assert time.monotonic() - started < 2
    fake.silence(False)
    assert get(fake, "/servers").status_code == 200


def test_request_log_shows_the_user_agent(fake: FakeHcloud) -> None:
    fake.client(application_name="promoter-a").servers.get_all()
    [entry] = fake.request_log
    assert entry["user_agent"].startswith("promoter-a hcloud-python/")
