"""The console's pages over in-memory services: what they show, what they escape, what they refuse."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shared.console.base import ConsoleSources, DeadLetter, GraphNode, Instance
from shared.console.graph import chain_graph
from shared.console.paths import is_console_path
from shared.console.security import CSP
from shared.engine.model import Message
from shared.errors import PermanentError
from tests.unit.console.support import (
    XSS_BLOB,
    XSS_ERROR,
    XSS_PARAM,
    ConsoleWorld,
    cookie_of,
    failed_run,
    html,
    running_run,
    scan,
)

SAME_ORIGIN = {"Host": "127.0.0.1:7071", "Origin": "http://127.0.0.1:7071", "Sec-Fetch-Site": "same-origin"}


@pytest.fixture
def world(tmp_path: Path) -> ConsoleWorld:
    w = ConsoleWorld(tmp_path)
    w.add(failed_run(), running_run())
    return w


PAGES = [
    "/",
    "/?fragment=live",
    "/?status=failed&flow=train&trigger=blob&q=script",
    "/runs/run-failed-1",
    "/runs/run-failed-1?fragment=live",
    "/runs/run-running-1",
    "/runs/run-failed-1/rerun",
    "/runs/run-running-1/cancel",
    "/models",
    "/dead-letters",
]


@pytest.mark.parametrize("url", PAGES)
def test_every_page_has_the_csp_and_no_inline_script_or_style(world: ConsoleWorld, url: str) -> None:
    resp = world.get(url)
    assert resp.status == 200, html(resp)[:500]
    assert resp.headers["Content-Security-Policy"] == CSP
    assert "script-src 'self'" in CSP and "unsafe-inline" not in CSP and "unsafe-eval" not in CSP
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Cache-Control"] == "no-store"
    page = scan(resp)
    assert page.inline_script_text.strip() == ""
    assert all(s.get("src", "").startswith("/static/") for s in page.scripts)
    assert page.handlers == [] and page.styles == [] and page.style_elements == 0
    # nothing points off the host: no CDN, no absolute URL but the remote job's own page
    for ref in page.hrefs:
        assert ref.startswith("/") or ref == "https://batch.example/jobs/k-2", ref


def test_error_pages_and_assets_carry_the_csp_too(world: ConsoleWorld) -> None:
    for url, status in [("/runs/nope-1", 404), ("/?status=bogus", 400), ("/static/../handlers.py", 404)]:
        resp = world.get(url)
        assert resp.status == status
        assert resp.headers["Content-Security-Policy"] == CSP
    css = world.get("/static/console.css")
    assert css.status == 200 and css.headers["Content-Type"].startswith("text/css")
    assert css.headers["Content-Security-Policy"] == CSP
    js = world.get("/static/vendor/htmx.min.js")
    assert js.status == 200 and js.headers["Content-Type"].startswith("text/javascript")


def test_outside_values_render_as_text(world: ConsoleWorld) -> None:
    for url in ("/", "/runs/run-failed-1", "/runs/run-running-1"):
        body = html(world.get(url))
        for raw in (XSS_BLOB, XSS_PARAM, XSS_ERROR, "<script>", "<img src=x", "<b>boom"):
            assert raw not in body, (url, raw)
    text = "".join(scan(world.get("/runs/run-failed-1")).text)
    assert XSS_BLOB in text  # shown, as text
    assert XSS_ERROR in text
    assert XSS_PARAM in text  # the step's outputs
    assert XSS_PARAM in "".join(scan(world.get("/runs/run-running-1")).text)  # the manual params


def test_a_step_named_like_markup_is_text_in_the_graph_and_timeline(world: ConsoleWorld) -> None:
    run = failed_run("run-odd-1")
    run.steps[0].name = '"><script>alert(4)</script>'
    world.add(run)
    body = html(world.get("/runs/run-odd-1"))
    assert "<script>alert(4)" not in body
    assert "&lt;script&gt;alert(4)" in body


def test_runs_table_filters_search_counts_and_paging(world: ConsoleWorld) -> None:
    for i in range(30):
        world.add(failed_run(f"bulk-{i:02d}", flow="nightly", created=1000 + i))
    body = html(world.get("/"))
    assert "32 runs" in body
    # counts per status per flow, over every run read
    row = re.search(r'<tr data-flow="nightly">(.*?)</tr>', body, re.S)
    assert row and re.findall(r">(\d+)<", row.group(1)) == ["0", "0", "0", "0", "30", "0", "30"]
    assert 'rel="next"' in body and "page 1 of 2" in body
    assert "bulk-29" in body and "bulk-04" not in body  # newest first, 25 a page
    page2 = html(world.get("/?page=2"))
    assert "bulk-04" in page2 and "bulk-29" not in page2 and 'rel="prev"' in page2
    assert "1 run" in html(world.get("/?status=running"))
    manual = html(world.get("/?trigger=manual"))
    assert "run-running-1" in manual and "run-failed-1" not in manual
    search = html(world.get("/?q=SCRIPT&flow=train"))  # the blob name, case-insensitive
    assert "run-failed-1" in search and "run-running-1" not in search
    assert "run-running-1" in html(world.get("/?q=run-running"))
    assert "nightly" in html(world.get("/?flow=nightly")) and "run-failed-1" not in html(world.get("/?flow=nightly"))


def test_runs_page_polls_its_table_with_the_same_filters(world: ConsoleWorld) -> None:
    page = scan(world.get("/?status=failed&q=x"))
    polled = [h for h in page.hrefs if "fragment=live" in h]
    assert polled and "status=failed" in polled[0] and "q=x" in polled[0]
    fragment = world.get(polled[0])
    assert fragment.status == 200 and html(fragment).startswith('<div id="runs-live"')


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("status=bogus", "status"),
        ("flow=Bad!", "flow"),
        ("trigger=email", "trigger"),
        ("page=0", "page"),
        ("q=" + "x" * 201, "q"),
    ],
)
def test_bad_filters_are_a_400_naming_the_field(world: ConsoleWorld, query: str, field: str) -> None:
    resp = world.get("/?" + query)
    assert resp.status == 400
    assert f"{field}:" in html(resp)


def test_run_page_shows_graph_gantt_steps_gate_lineage(world: ConsoleWorld) -> None:
    run = failed_run("run-gated-1")
    run.gate = {
        "decision": "rejected",
        "metric": "r2",
        "direction": "maximize",
        "candidate": 0.71,
        "champion": 0.82,
        "champion_version": "3",
        "reason": "0.71 is not better than 0.82",
        "version": "4",
    }
    run.steps[1].outputs = {"run_page_url": "javascript:alert(5)"}
    world.add(run)
    body = html(world.get("/runs/run-gated-1"))
    assert 'class="graph"' in body and 'data-node="score"' in body and "state-failed" in body
    assert 'class="gantt"' in body and body.count("attempt-failed") >= 2 and "retry-wait" in body
    assert 'id="gate"' in body and "0.71" in body and "0.82" in body and "(v3)" in body
    assert "lineage" in body and "eTag &#34;0x8D1&#34;" in body
    assert 'href="https://batch.example/jobs/k-2"' in body  # the remote job's page
    assert not [h for h in scan(world.get("/runs/run-gated-1")).hrefs if "javascript" in h]  # never a link
    # the polled part keeps polling while the run runs; a finished run polls slowly
    assert 'hx-trigger="every 10s"' in body
    assert 'hx-trigger="every 2s"' in html(world.get("/runs/run-running-1"))
    assert 'hx-trigger="every 2s"' in html(world.get("/runs/run-gated-1?after=rerun"))


def test_step_picker_offers_exactly_the_valid_rerun_steps(world: ConsoleWorld) -> None:
    page = html(world.get("/runs/run-failed-1"))
    picker = re.search(r'<select name="from_step" id="rerun-step">(.*?)</select>', page, re.S)
    assert picker and re.findall(r'value="([^"]+)"', picker.group(1)) == ["work", "score"]
    assert "rerun-step" not in html(world.get("/runs/run-running-1"))  # a running run: cancel only
    assert 'id="cancel-button"' in html(world.get("/runs/run-running-1"))
    bad = world.get("/runs/run-failed-1/rerun?from_step=deploy")
    assert bad.status == 400 and "from_step:" in html(bad)
    assert world.get("/runs/run-running-1/rerun").status == 409
    assert world.get("/runs/run-failed-1/cancel").status == 409


def _confirm_form(world: ConsoleWorld, url: str) -> tuple[str, dict[str, str], str]:
    page = world.get(url)
    cookie = cookie_of(page)
    forms = scan(page).forms
    assert len(forms) == 1 and forms[0]["method"] == "post"
    fields = {i["name"]: i["value"] for i in scan(page).inputs if i.get("type") == "hidden"}
    return str(forms[0]["action"]), {k: str(v) for k, v in fields.items()}, cookie


def test_rerun_confirmed_with_same_origin_and_token(world: ConsoleWorld) -> None:
    action, fields, cookie = _confirm_form(world, "/runs/run-failed-1/rerun?from_step=score")
    assert fields["from_step"] == "score"
    resp = world.post(action, fields, {**SAME_ORIGIN, "Cookie": cookie})
    assert resp.status == 303 and resp.headers["Location"] == "/runs/run-failed-1?after=rerun"
    [msg] = world.sent("rerun")
    assert msg.run_id == "run-failed-1" and msg.from_step == "score"


def test_cancel_confirmed_with_same_origin_and_token(world: ConsoleWorld) -> None:
    action, fields, cookie = _confirm_form(world, "/runs/run-running-1/cancel")
    resp = world.post(action, fields, {**SAME_ORIGIN, "Cookie": cookie})
    assert resp.status == 303
    assert world.store.get("run-running-1").cancel_requested
    assert [m.kind for m in world.sent()] == ["cancel"]


@pytest.mark.parametrize(
    "change",
    [
        "foreign-origin",
        "cross-site-fetch",
        "no-origin",
        "no-cookie",
        "other-cookie",
        "no-token",
        "token-of-other-run",
        "token-of-other-action",
        "json-body",
    ],
)
def test_cross_site_or_tokenless_posts_change_nothing(world: ConsoleWorld, change: str) -> None:
    world.add(failed_run("run-failed-2"))
    action, fields, cookie = _confirm_form(world, "/runs/run-failed-1/rerun?from_step=score")
    headers = {**SAME_ORIGIN, "Cookie": cookie}
    if change == "foreign-origin":
        headers.update(Origin="http://evil.example", **{"Sec-Fetch-Site": "cross-site"})
    elif change == "cross-site-fetch":
        headers["Sec-Fetch-Site"] = "cross-site"
    elif change == "no-origin":
        del headers["Origin"], headers["Sec-Fetch-Site"]
    elif change == "no-cookie":
        del headers["Cookie"]
    elif change == "other-cookie":
        headers["Cookie"] = "conveyor_csrf=" + "A" * 43
    elif change == "no-token":
        fields.pop("csrf")
    elif change == "token-of-other-run":
        action = "/runs/run-failed-2/rerun"
    elif change == "token-of-other-action":
        action = "/runs/run-failed-1/cancel"
    if change == "json-body":
        from shared.api.http import HttpRequest

        req = HttpRequest(
            "POST", action, headers={**headers, "Content-Type": "application/json"}, body=b'{"csrf": "x"}'
        )
        resp = world.console.handle(req)
    else:
        resp = world.post(action, fields, headers)
    assert resp.status in (400, 403, 409), (change, resp.status)
    assert resp.status != 303
    assert world.sent() == []
    assert not world.store.get("run-failed-1").cancel_requested


def test_cookie_is_set_once_per_browser_and_kept(world: ConsoleWorld) -> None:
    first = world.get("/")
    raw = first.headers["Set-Cookie"]
    assert "HttpOnly" in raw and "SameSite=Strict" in raw and "Path=/" in raw
    again = world.get("/runs/run-failed-1", {"Cookie": cookie_of(first)})
    assert "Set-Cookie" not in again.headers


def test_azure_base_and_function_key_are_carried_on(world: ConsoleWorld) -> None:
    resp = world.get("/api/console/runs/run-failed-1?code=abc_KEY-1==", base="/api/console")
    assert resp.status == 200
    page = scan(resp)
    internal = [h for h in page.hrefs if not h.startswith("https://")]
    assert internal and all(h.startswith("/api/console/") for h in internal), internal
    assert all("code=abc_KEY-1%3D%3D" in h for h in internal), internal
    assert "Path=/api/console" in resp.headers["Set-Cookie"]
    assert resp.headers["Referrer-Policy"] == "same-origin"  # the key never leaves in a Referer
    # the GET forms (filters, rerun picker) carry the key as a field
    rerun = [i for i in page.inputs if i.get("name") == "code"]
    assert rerun and rerun[0]["value"] == "abc_KEY-1=="


def test_fanout_instances_are_summarised_and_listed(world: ConsoleWorld, tmp_path: Path) -> None:
    def graph(run):  # what a DAG flow hands the console
        nodes = chain_graph(run)
        train = GraphNode(
            id="train",
            label="train",
            state="running",
            needs=("work",),
            kind="azureml",
            instances=tuple(
                [Instance(f"train[{i}]", "succeeded") for i in range(18)]
                + [Instance("train[18]", "running"), Instance("train[19]", "running")]
            ),
        )
        return [*nodes, train]

    sources = ConsoleSources.from_services(world.services)
    sources.graph = graph
    w = ConsoleWorld(tmp_path / "other", sources=sources)
    w.add(failed_run())
    body = html(w.get("/runs/run-failed-1"))
    assert "train: 18/20 succeeded, 2 running" in body
    assert '<details class="fanout" data-node="train">' in body and "train[19]" in body


def test_dead_letters_read_only_until_replay_is_wired(world: ConsoleWorld, tmp_path: Path) -> None:
    letter = DeadLetter(
        message_id="m-1",
        reason="MaxDeliveryCountExceeded",
        description="<i>gave up</i>",
        run_id="run-failed-1",
        kind="tick",
        dead_lettered_at="2026-11-30T12:00:00+00:00",
        delivery_count=5,
        body='{"kind": "tick"}',
    )
    replayed: list[str] = []
    sources = ConsoleSources.from_services(world.services)
    sources.dead_letters = lambda: [letter]
    sources.replay = None  # a queue that cannot replay: the page is read-only
    ro = ConsoleWorld(tmp_path / "ro", sources=sources)
    page = html(ro.get("/dead-letters"))
    assert "MaxDeliveryCountExceeded" in page and "&lt;i&gt;gave up&lt;/i&gt;" in page
    assert "Replay" not in page and "Read-only" in page
    assert ro.post("/dead-letters/replay", {"message_id": "m-1"}, SAME_ORIGIN).status == 403

    sources.replay = replayed.append
    rw = ConsoleWorld(tmp_path / "rw", sources=sources)
    first = rw.get("/dead-letters")
    token = next(i["value"] for i in scan(first).inputs if i.get("name") == "csrf")
    bad = rw.post("/dead-letters/replay", {"message_id": "m-1", "csrf": token}, {"Origin": "http://evil.example"})
    assert bad.status == 403 and replayed == []
    ok = rw.post(
        "/dead-letters/replay", {"message_id": "m-1", "csrf": str(token)}, {**SAME_ORIGIN, "Cookie": cookie_of(first)}
    )
    assert ok.status == 303 and replayed == ["m-1"]


def test_the_queue_s_dead_letters_are_listed_and_replayed(world: ConsoleWorld) -> None:
    q = world.queue
    q.send(Message(kind="tick", run_id="run-failed-1", flow="demo", step="train", attempt=1, tick=2))
    (got,) = q.receive()
    q.dead_letter(got, "MaxDeliveryCountExceeded", "delivered 6 times")
    first = world.get("/dead-letters")
    page = html(first)
    assert "MaxDeliveryCountExceeded" in page and 'href="/runs/run-failed-1"' in page and "Replay" in page
    form = {i["name"]: i["value"] for i in scan(first).inputs if i.get("name") in ("csrf", "message_id")}
    ok = world.post("/dead-letters/replay", form, {**SAME_ORIGIN, "Cookie": cookie_of(first)})
    assert ok.status == 303 and q.dead == []  # re-sent with its message id, then removed
    assert q.sent[-1][0].message_id == got.message.message_id


def test_dead_letters_of_a_queue_without_a_listing_say_so(world: ConsoleWorld, tmp_path: Path) -> None:
    def unlisted() -> list[DeadLetter]:
        raise PermanentError("the queue adapter lists no dead letters", service="queue")

    sources = ConsoleSources.from_services(world.services)
    sources.dead_letters = unlisted
    page = html(ConsoleWorld(tmp_path / "x", sources=sources).get("/dead-letters"))
    assert "lists no dead letters" in page


def test_unknown_paths_and_methods(world: ConsoleWorld) -> None:
    assert world.get("/runs/run-failed-1/explode").status == 404
    assert world.get("/dead-letters/replay").status == 405
    assert world.get("/static/nope.js").status == 404
    assert world.get("/runs/%3Cscript%3E").status == 404


def test_console_paths_are_the_ones_the_host_routes() -> None:
    for path in ("/", "", "/runs/abc", "/models", "/models/x", "/dead-letters", "/static/console.css"):
        assert is_console_path(path), path
    for path in ("/api/runs", "/admin/host/status", "/runtime/webhooks/eventgrid", "/favicon.ico", "/runsx"):
        assert not is_console_path(path), path


def test_models_pages_show_versions_gate_decisions_plot_and_runs(world: ConsoleWorld) -> None:
    reg = world.registry
    reg.add("sales-forecaster", {"r2": 0.61, "rmse": 3.0}, **{"gate.decision": "promoted", "conveyor.run_id": "run-a"})
    reg.add(
        "sales-forecaster",
        {"r2": 0.55},
        **{
            "gate.decision": "rejected",
            "gate.reason": "0.55 <= 0.61",
            "gate.candidate": "0.55",
            "gate.champion": "0.61",
            "gate.champion_version": "1",
            "conveyor.run_id": "run-b",
        },
    )
    reg.add("sales-forecaster", {"r2": 0.72}, **{"gate.decision": "promoted", "conveyor.run_id": "run-c"})
    reg.promote("sales-forecaster", "1")
    reg.promote("sales-forecaster", "3")
    reg.add("<b>odd</b>", {"acc": 1.0})
    index = html(world.get("/models"))
    assert 'href="/models/sales-forecaster"' in index and "v3" in index
    assert "&lt;b&gt;odd&lt;/b&gt;" in index and "<b>odd" not in index
    page = world.get("/models/sales-forecaster")
    body = html(page)
    assert page.status == 200
    assert 'id="champion">v3<' in body and "v1" in body  # champion and previous
    assert 'class="plot"' in body and body.count('class="point') == 3
    assert 'class="point promoted champion" data-version="3"' in body
    assert 'class="point rejected" data-version="2"' in body
    assert "0.55 vs 0.61" in body and "0.55 &lt;= 0.61" in body
    assert 'href="/runs/run-b"' in body
    assert world.get("/models/nope!").status == 404


def test_a_registry_that_cannot_list_is_a_note_not_an_error(world: ConsoleWorld) -> None:
    from shared.registry.base import ModelRegistry

    class Bare(ModelRegistry):  # only the abstract methods: the port's listing defaults apply
        def register(self, *a, **k): ...
        def get(self, name, version): ...
        def champion(self, name):
            return None

        def promote(self, name, version): ...
        def record_decision(self, name, version, decision): ...

    world.services.__dict__["registry"] = Bare()
    body = html(world.get("/models"))
    assert "cannot list registered models" in body
    assert world.get("/models/sales-forecaster").status == 400  # versions(): the port's clear PermanentError
