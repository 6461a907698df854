"""The web console in a real Chromium (Debian's, driven by Playwright) against a real server, broker and the
fleet simulator. If these fail, an admin cannot log in, sees a stale fleet, cannot stop a bad rollout from
the page, cannot fix a label with the mouse, or a viewer can act. Each test saves a screenshot under
test-output/console/<test>/."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest

from tests.helpers import ROOT, Server, deploy_all, wait_for
from tools.fleet_sim import FleetSim

pytestmark = pytest.mark.e2e
PASSWORDS = {"olga": "Operator-pass-1", "victor": "Viewer-pass-22", "ada": "Admin-pass-333"}
ROLES = {"olga": "operator", "victor": "viewer", "ada": "admin"}


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory, mosquitto: str, assets: dict[str, Path]) -> Iterator[Server]:
    s = Server(
        tmp_path_factory.mktemp("console") / "data",
        mosquitto,
        env={"EDGELOOP_ROLLOUT_TICK_S": "0.2", "EDGELOOP_TELEMETRY_HISTORY_S": "0.5"},
    )
    for m in ("model_v1", "model_v2"):
        s.push(assets[m])
    for name, role in ROLES.items():
        r = s.http.post("/api/v1/users", json={"name": name, "role": role, "password": PASSWORDS[name]})
        assert r.status_code == 201, r.text
    yield s
    s.stop()


@pytest.fixture()
def shots(request: pytest.FixtureRequest) -> Path:
    out = Path(os.environ.get("EDGELOOP_TEST_OUTPUT", ROOT / "test-output")) / "console" / request.node.name
    out.mkdir(parents=True, exist_ok=True)
    return out


def _page(browser: Any, width: int = 1280) -> Any:
    ctx = browser.new_context(viewport={"width": width, "height": 900})
    page = ctx.new_page()
    page.set_default_timeout(30_000)
    page.on("dialog", lambda d: d.accept())
    return page


def _login(page: Any, server: Server, name: str) -> None:
    page.goto(f"{server.url}/console/fleet")
    assert "/console/login" in page.url  # not logged in: sent to the login page
    page.fill("input[name=name]", name)
    page.fill("input[name=password]", PASSWORDS[name])
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r".*/console/fleet$"))
    assert page.locator(".me").inner_text().find(ROLES[name]) >= 0


def _sim(server: Server, mosquitto: str, n: int, prefix: str, tags: dict[str, str]) -> FleetSim:
    sim = FleetSim(server.url, server.token, mosquitto, n, prefix, telemetry_interval_s=0.2)
    sim.enroll(tags)
    return sim.start()


def test_login_refuses_a_wrong_password_and_sees_devices_appear_live(
    console: Server, mosquitto: str, browser: Any, shots: Path
) -> None:
    page = _page(browser)
    page.goto(f"{console.url}/console/login")
    page.fill("input[name=name]", "olga")
    page.fill("input[name=password]", "not-her-password")
    page.click("button[type=submit]")
    assert "wrong user name or password" in page.locator(".error").inner_text()

    _login(page, console, "olga")
    page.evaluate("window.__sameDocument = true")  # gone if the page reloads
    assert page.locator("tr[data-device^='live-']").count() == 0
    sim = _sim(console, mosquitto, 3, "live", {"site": "live"})
    try:
        page.wait_for_selector("tr[data-device='live-00002'] .dot.ok", timeout=20_000)
        # a deployment shows up in place: model, update state, fps
        for d in sim.devices:
            console.http.put(f"/api/v1/devices/{d}/deployment", json={"model": "colors", "version": 1})
        row = page.locator("tr[data-device='live-00000']")
        page.wait_for_selector("tr[data-device='live-00000'] a[href='/console/models/colors/1']", timeout=20_000)
        wait_for(lambda: row.locator("td").nth(4).inner_text() != "-", 20, "fps shown in the fleet table")
        assert float(row.locator("td").nth(4).inner_text()) > 0
        assert "UpdateStateName" not in page.locator("tbody").inner_text()  # states read as names, not enums
        assert page.evaluate("window.__sameDocument") is True
        assert int(page.locator("#count-online").inner_text()) >= 3
        # filter by tag, server-side
        page.goto(f"{console.url}/console/fleet?tag=site%3Dlive")
        assert page.locator("tbody tr").count() == 3
        page.screenshot(path=str(shots / "fleet.png"), full_page=True)
        # the device page: its charts fill from the stored telemetry history
        page.click("a[href='/console/devices/live-00000']")
        page.wait_for_selector("svg[data-key='fps'] polyline", timeout=20_000)
        page.wait_for_selector("svg[data-key='fps'] text.tick", timeout=20_000)  # a clock axis under the curve
        tick = page.locator("svg[data-key='fps'] text.tick").first.text_content() or ""
        assert re.fullmatch(r"\d\d:\d\d(:\d\d)?", tick), tick
        page.screenshot(path=str(shots / "device.png"), full_page=True)
        # tablet width: the page still lays out without horizontal scrolling of the whole page
        tablet = _page(browser, width=800)
        tablet.context.add_cookies(page.context.cookies())
        tablet.goto(f"{console.url}/console/fleet")
        assert tablet.evaluate("document.documentElement.scrollWidth") <= 800
        tablet.screenshot(path=str(shots / "fleet-tablet.png"), full_page=True)
    finally:
        sim.stop()


def test_the_fleet_page_flags_a_device_whose_camera_is_down(
    console: Server, mosquitto: str, browser: Any, shots: Path
) -> None:
    import paho.mqtt.client as mqtt

    from edge_agent.protocol.messages import SourceTelemetry, Telemetry, encode_message

    sim = _sim(console, mosquitto, 2, "camdown", {"site": "camdown"})
    host, port = mosquitto.split("://")[1].rsplit(":", 1)
    c = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id="camdown-probe")
    try:
        for d in sim.devices:
            console.http.put(f"/api/v1/devices/{d}/deployment", json={"model": "colors", "version": 1})
        wait_for(lambda: all((console.device(d)["fps"] or 0) > 0 for d in sim.devices), 20, "telemetry flowing")
        sim.pause_telemetry()
        time.sleep(0.5)
        c.connect(host, int(port))
        c.loop_start()
        down = SourceTelemetry(name="door", ok=False, error="rtsp://10.0.0.7/door: connection timed out")
        msg = Telemetry(device_id="camdown-00000", model="colors", version=1, frames=0, fps=0.0, source_ok=False,
                        source_error=down.error, sources=[down])  # fmt: skip
        c.publish("edgeloop/v1/devices/camdown-00000/telemetry", encode_message(msg), qos=1).wait_for_publish(5)
        wait_for(lambda: console.device("camdown-00000")["problem"], 10, "the problem stored")
        assert (
            "door down" in console.device("camdown-00000")["problem"]
            and console.device("camdown-00001")["problem"] is None
        )

        page = _page(browser)
        _login(page, console, "olga")
        page.goto(f"{console.url}/console/fleet?tag=site%3Dcamdown")
        row = page.locator("tr[data-device='camdown-00000']")
        assert "problem" in (row.get_attribute("class") or "")
        assert "door down: rtsp://10.0.0.7/door: connection timed out" in row.locator(".problem-reason").inner_text()
        assert page.locator("tr[data-device='camdown-00001'] .problem-reason").count() == 0
        assert int(page.locator("a.count.warn", has_text="with a problem").locator("b").inner_text()) >= 1
        page.goto(f"{console.url}/console/fleet?state=degraded&tag=site%3Dcamdown")
        assert [r.get_attribute("data-device") for r in page.locator("tbody tr").all()] == ["camdown-00000"]
        page.screenshot(path=str(shots / "fleet-problem.png"), full_page=True)
        listed = console.cli("devices", "list").stdout
        assert "! door down" in listed and "device(s) with a problem" in listed
    finally:
        c.loop_stop()
        sim.stop()


def test_operator_starts_a_rollout_watches_it_and_aborts_it(
    console: Server, mosquitto: str, browser: Any, shots: Path
) -> None:
    sim = _sim(console, mosquitto, 4, "roll", {"site": "roll"})
    try:
        deploy_all(console, sim, 1)
        page = _page(browser)
        _login(page, console, "olga")
        page.goto(f"{console.url}/console/rollouts")
        page.select_option("select[name=ref]", "colors:2")
        page.fill("input[name=selector]", "site=roll")
        page.wait_for_selector("#selector-preview:text('matches 4 devices (4 online)')")  # previewed as typed
        page.fill("input[name=canary]", "1")
        page.fill("input[name=waves]", "100%")
        page.fill("input[name=bake_s]", "600")
        page.click("#new-rollout button[type=submit]")
        page.wait_for_url(re.compile(r".*/console/rollouts/\d+$"))
        rid = int(page.url.rsplit("/", 1)[1])
        # progress shows up without a reload: the canary device becomes active on v2 and bakes
        page.wait_for_selector("#rollout-devices td.st-active", timeout=30_000)
        assert page.locator("#rollout-state").inner_text() == "running"
        page.screenshot(path=str(shots / "rollout-running.png"), full_page=True)
        page.click("#abort")
        page.wait_for_selector("#rollout-state:text('aborted')", timeout=20_000)
        assert page.locator("#abort").count() == 0
        page.screenshot(path=str(shots / "rollout-aborted.png"), full_page=True)
        r = console.http.get(f"/api/v1/rollouts/{rid}").json()
        assert r["state"] == "aborted" and r["created_by"] == "olga"
        assert any(a["action"] == "abort" and a["actor"] == "olga" for a in r["audit"])
        wait_for(lambda: all(v == 1 for v in sim.versions().values()), 30, "canary sent back to v1")
        # the canary's page tells its story in sentences: deployed by the engine, then sent back by the abort
        canary = next(d["id"] for d in r["devices"] if d["wave"] == 0)
        page.goto(f"{console.url}/console/devices/{canary}")
        story = page.locator("#timeline").inner_text()
        assert f"rollout {rid} of colors:2, wave 0: rolled back" in story, story
        assert "the rollout engine deployed colors:2" in story and "the rollout engine deployed colors:1" in story
        assert "PUT 200" not in story and "{" not in story  # no raw HTTP lines, no unfolded JSON
        page.screenshot(path=str(shots / "device-rolled-back.png"), full_page=True)
        # every state-changing call is in the audit log with the person who made it
        log = console.http.get("/api/v1/audit", params={"actor": "user:olga"}).json()
        assert {"/api/v1/rollouts", f"/api/v1/rollouts/{rid}/abort"} <= {a["target"] for a in log}
    finally:
        sim.stop()


def test_viewer_sees_no_actions_and_the_api_refuses_them(
    console: Server, mosquitto: str, browser: Any, shots: Path
) -> None:
    sim = _sim(console, mosquitto, 2, "view", {"site": "view"})
    try:
        deploy_all(console, sim, 1)
        r = console.http.post(
            "/api/v1/rollouts",
            json={"model": "colors", "version": 2, "selector": "site=view", "bake_s": 600, "waves": ["100%"]},
        )
        assert r.status_code == 201, r.text
        rid = r.json()["id"]
        page = _page(browser)
        _login(page, console, "victor")
        page.goto(f"{console.url}/console/rollouts/{rid}")
        page.wait_for_selector("#rollout-state")
        assert page.locator("#abort").count() == 0 and page.locator("#rollout-actions").count() == 0
        page.goto(f"{console.url}/console/rollouts")
        assert page.locator("#new-rollout").count() == 0
        page.screenshot(path=str(shots / "viewer-rollout.png"), full_page=True)
        # the same request the button would send, from the viewer's own logged-in page: refused
        status = page.evaluate(
            """async (rid) => {
                const csrf = document.querySelector('meta[name="csrf-token"]').content;
                const headers = {'X-CSRF-Token': csrf};
                const r = await fetch(`/api/v1/rollouts/${rid}/abort`, {method: 'POST', headers});
                return [r.status, (await r.json()).detail];
            }""",
            rid,
        )
        assert status[0] == 403 and "operator" in status[1]
        # and with a bearer login token from the API
        tok = httpx.post(f"{console.url}/api/v1/auth/login", json={"name": "victor", "password": PASSWORDS["victor"]})
        bearer = {"Authorization": f"Bearer {tok.json()['token']}"}
        assert httpx.post(f"{console.url}/api/v1/rollouts/{rid}/abort", headers=bearer).status_code == 403
        assert httpx.get(f"{console.url}/api/v1/rollouts/{rid}", headers=bearer).status_code == 200
        # a cookie without the CSRF header cannot act, even for an operator
        op = _page(browser)
        _login(op, console, "olga")
        no_csrf = op.evaluate(f"fetch('/api/v1/rollouts/{rid}/abort', {{method: 'POST'}}).then(r => r.status)")
        assert no_csrf == 403
        assert console.http.get(f"/api/v1/rollouts/{rid}").json()["state"] == "running"
        console.http.post(f"/api/v1/rollouts/{rid}/abort").raise_for_status()
    finally:
        sim.stop()


def _scene() -> tuple[bytes, list[float]]:
    """A 320x240 picture with one red square at a known place; returns (jpeg, its true box)."""
    img = np.full((240, 320, 3), 60, np.uint8)
    cv2.rectangle(img, (180, 100), (260, 180), (0, 0, 220), -1)
    ok, jpg = cv2.imencode(".jpg", img)
    assert ok
    return jpg.tobytes(), [180.0, 100.0, 261.0, 181.0]


def _import_colors_dataset(server: Server, work: Path) -> None:
    """A two-image COCO dataset with the colour classes, imported through the API (the one the samples extend)."""
    import io
    import tarfile

    folder = work / "colors-ds"
    (folder / "images").mkdir(parents=True)
    images, anns = [], []
    for i, colour in enumerate([(0, 0, 220), (0, 200, 0)]):
        img = np.full((96, 128, 3), 40, np.uint8)
        cv2.rectangle(img, (30, 20), (90, 70), colour, -1)
        cv2.imwrite(str(folder / "images" / f"{i}.jpg"), img)
        images.append({"id": i + 1, "file_name": f"{i}.jpg", "width": 128, "height": 96})
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": i + 1, "bbox": [30, 20, 61, 51]})
    cats = [{"id": k + 1, "name": n} for k, n in enumerate(["red", "green", "blue"])]
    (folder / "annotations.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.add(folder, arcname="colors-ds")
    r = server.http.post("/api/v1/datasets/colors-ds/import", params={"format": "coco"}, content=buf.getvalue())
    assert r.status_code == 201, r.text


def test_reviewer_corrects_a_box_with_the_mouse_and_the_label_is_stored(
    console: Server, browser: Any, shots: Path, tmp_path: Path
) -> None:
    dev = console.enroll("review-cam")
    jpg, truth = _scene()
    meta = {
        "strategy": "confidence",
        "reason": "score 0.41 in band",
        "model": "colors",
        "version": 1,
        "predictions": [{"label": "green", "score": 0.41, "box": [60.0, 40.0, 140.0, 120.0]}],  # in the wrong place
    }
    r = httpx.post(
        f"{console.url}/api/v1/devices/review-cam/samples",
        headers={"Authorization": f"Bearer {dev['token']}"},
        files={"image": ("s.jpg", jpg, "image/jpeg")},
        data={"meta": json.dumps(meta)},
    )
    assert r.status_code == 201, r.text
    sid = r.json()["id"]

    page = _page(browser)
    _login(page, console, "olga")
    page.goto(f"{console.url}/console/samples")
    page.wait_for_selector(f".sample[data-id='{sid}'] svg rect")  # the pre-annotation is drawn on the thumbnail
    thumb = page.locator(f".sample[data-id='{sid}'] svg")
    assert (
        thumb.locator("rect").get_attribute("data-label") == "green" and thumb.locator("text").text_content() == "green"
    )
    assert "stroke: hsl(" in (thumb.locator("rect").get_attribute("style") or "")  # in its class's colour
    page.screenshot(path=str(shots / "queue.png"), full_page=True)
    page.click(f".sample[data-id='{sid}'] a")
    page.wait_for_selector("#editor svg rect.box")
    assert page.locator("#box-label").input_value() == "green"  # the class selector follows the selected box
    box = page.locator("#editor svg.overlay").bounding_box()
    sx, sy = box["width"] / 320, box["height"] / 240

    def at(x: float, y: float) -> tuple[float, float]:
        return box["x"] + x * sx, box["y"] + y * sy

    # drag the predicted box by its middle onto the square: (100, 80) -> (220, 140)
    page.mouse.move(*at(100, 80))
    page.mouse.down()
    page.mouse.move(*at(160, 110), steps=5)
    page.mouse.move(*at(220, 140), steps=5)
    page.mouse.up()
    # grow it by its corner handle from (260, 180) to (261, 181) is below a pixel; make it visibly larger then fix it
    page.mouse.move(*at(260, 180))
    page.mouse.down()
    page.mouse.move(*at(270, 190), steps=4)
    page.mouse.move(*at(261, 181), steps=4)
    page.mouse.up()
    page.keyboard.press("s")
    page.wait_for_selector("#sample-state:text('corrected')")
    page.screenshot(path=str(shots / "corrected.png"), full_page=True)

    stored = console.http.get(f"/api/v1/samples/{sid}").json()
    assert stored["state"] == "corrected"
    (lab,) = stored["labels"]
    assert lab["label"] == "green"
    tol = 3.0  # screen pixels to image pixels rounding
    assert all(abs(a - b) <= tol for a, b in zip(lab["box"], truth, strict=True)), (lab["box"], truth)
    audit = console.http.get("/api/v1/audit", params={"actor": "user:olga"}).json()
    assert any(a["target"] == f"/api/v1/samples/{sid}/review" for a in audit)

    # bulk: three more samples, "select all" on the queue, accept. One was stored by an older server with a box
    # outside its image (boxes are clipped at ingest now): it is named in the answer, the others are accepted
    more = []
    for shift in (0, 40, 80):
        img = np.random.default_rng(shift).integers(0, 255, (240, 320, 3), dtype=np.uint8)  # distinct scenes
        jpg2 = cv2.imencode(".jpg", img)[1].tobytes()
        m2 = {**meta, "predictions": [{"label": "red", "score": 0.5, "box": [10.0 + shift, 10.0, 50.0 + shift, 60.0]}]}
        r = httpx.post(
            f"{console.url}/api/v1/devices/review-cam/samples",
            headers={"Authorization": f"Bearer {dev['token']}"},
            files={"image": ("s.jpg", jpg2, "image/jpeg")},
            data={"meta": json.dumps(m2)},
        )
        assert r.status_code == 201, r.text
        more.append(r.json()["id"])
    bad = more.pop()
    with sqlite3.connect(console.data_dir / "edgeloop.db") as db:
        outside = [{"label": "red", "score": 0.5, "box": [300.0, 10.0, 400.0, 60.0]}]
        db.execute("UPDATE sample SET predictions_json = ? WHERE id = ?", (json.dumps(outside), bad))
    page.goto(f"{console.url}/console/samples")
    assert page.locator(".sample").count() == 3  # the corrected one left the "new" queue
    page.click("#select-all")
    page.click("[data-bulk=accept]")
    note = page.locator("#toast .err")
    note.wait_for()
    assert (
        "accepted 2 sample(s)" in note.inner_text()
        and f"#{bad}: box [300.0, 10.0, 400.0, 60.0] is outside" in note.inner_text()
    )
    for i in more:
        s2 = console.http.get(f"/api/v1/samples/{i}").json()
        assert s2["state"] == "accepted" and s2["labels"][0]["label"] == "red"
    assert console.http.get(f"/api/v1/samples/{bad}").json()["state"] == "new"  # left for a person to correct
    page.screenshot(path=str(shots / "bulk-accept-one-bad.png"), full_page=True)
    wait_for(lambda: page.locator(".sample").count() == 1, 20, "the queue reloaded")
    assert page.locator(f".sample[data-id='{bad}']").count() == 1  # only it is left in the queue

    # the reviewed samples become a new dataset version from the datasets page
    _import_colors_dataset(console, tmp_path)
    page.goto(f"{console.url}/console/datasets")
    assert "3 accepted or corrected" in page.locator("#from-samples summary").inner_text()
    page.click("#from-samples summary")
    page.select_option("#from-samples select[name=target]", "colors-ds")
    page.click("#from-samples button[type=submit]")
    page.wait_for_selector("td b:text('colors-ds:2')")
    v2 = console.http.get("/api/v1/datasets/colors-ds/versions/2").json()
    assert v2["samples"] == 2 + 3 and v2["objects"]["train"]["red"] + v2["objects"]["val"]["red"] >= 3
    page.screenshot(path=str(shots / "datasets.png"), full_page=True)


def test_every_page_renders_for_an_admin_without_script_errors(console: Server, browser: Any, shots: Path) -> None:
    page = _page(browser)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    _login(page, console, "ada")
    for path, marker in (
        ("/console/fleet", "#fleet-table"),
        ("/console/models", "a[href='/console/models/colors/2']"),
        ("/console/models/colors/2", "#targets"),
        ("/console/rollouts", "#rollouts"),
        ("/console/samples?state=", "#sample-grid"),
        ("/console/datasets", "h1"),
        ("/console/jobs", "#jobs"),
        ("/console/audit", "#audit"),
        ("/console/webhooks", "#webhooks"),
        ("/console/users", "#users"),
    ):
        page.goto(console.url + path)
        page.wait_for_selector(marker)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 1280, f"{path} is {width} px wide at 1280"  # nothing overflows the window
        page.screenshot(path=str(shots / (path.strip("/").replace("/", "_").split("?")[0] + ".png")), full_page=True)
    assert page.locator("#users td", has_text="victor").count() == 1
    page.goto(console.url + "/console/models/colors/2")
    assert page.locator("#signature").inner_text() == "✔ signed"  # checked against the root key on render
    page.goto(console.url + "/console/users")
    assert errors == []
    # the admin adds a user from the page; the new user can log in with that role
    page.fill("form[data-api-form] input[name=name]", "nora")
    page.select_option("form[data-api-form] select[name=role]", "viewer")
    page.fill("form[data-api-form] input[name=password]", "Nora-pass-4444")
    page.click("form[data-api-form] button")
    page.wait_for_selector("#users td:text('nora')")
    r = httpx.post(f"{console.url}/api/v1/auth/login", json={"name": "nora", "password": "Nora-pass-4444"})
    assert r.status_code == 200 and r.json()["role"] == "viewer"
    # an admin enrolls a device from the fleet page (its credential shown once) and tags it on its page
    page.goto(console.url + "/console/fleet")
    page.click("#enroll summary")
    page.fill("#enroll input[name=device_id]", "door-cam")
    page.click("#enroll button[type=submit]")
    page.wait_for_selector("#enrolled:not([hidden])")
    assert "device_id: door-cam" in page.locator("#enrolled").inner_text()
    page.goto(console.url + "/console/devices/door-cam")
    page.fill("#tag-form input[name=tags]", "site=north, group=doors")
    page.click("#tag-form button[type=submit]")
    page.wait_for_selector(".tag:text('group=doors')")
    assert console.device("door-cam")["tags"] == {"site": "north", "group": "doors"}
    # an admin rotates a device's token on its page: the new agent.yaml lines are shown once
    old = console.enroll("key-cam")["token"]
    page.goto(console.url + "/console/devices/key-cam")
    page.click("#device-admin button:text('Rotate token')")
    page.wait_for_selector("#credential:not([hidden])")
    text = page.locator("#credential").inner_text()
    assert "token: edl_dev_" in text and old not in text and "device_id: key-cam" in text
    page.screenshot(path=str(shots / "device-rotated.png"), full_page=True)
    # an operator is not shown the users page and cannot open it
    op = _page(browser)
    _login(op, console, "olga")
    assert op.locator("a[href='/console/users']").count() == 0
    assert op.goto(console.url + "/console/users").status == 403
    op.goto(console.url + "/console/devices/key-cam")
    assert op.locator("#device-admin").count() == 0
