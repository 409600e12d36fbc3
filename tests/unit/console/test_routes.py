"""The console behind the local host's router and behind the Azure Functions blueprint."""

from __future__ import annotations

import json
from pathlib import Path

import azure.functions as func
import pytest

from functions import console as console_fn
from shared.console.security import CSP
from shared.host.server import HostApp
from shared.wiring import set_services
from tests.unit.console.support import ConsoleWorld, failed_run


@pytest.fixture
def world(tmp_path: Path) -> ConsoleWorld:
    w = ConsoleWorld(tmp_path)
    w.add(failed_run())
    return w


def test_host_routes_pages_and_assets_to_the_console_and_api_to_the_api(world: ConsoleWorld) -> None:
    app = HostApp(world.services)
    status, body, headers = app.handle("GET", "/?status=failed", {}, b"")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert headers["Content-Security-Policy"] == CSP and b"run-failed-1" in body
    status, body, headers = app.handle("GET", "/runs/run-failed-1", {}, b"")
    assert status == 200 and b'class="gantt"' in body
    status, _, headers = app.handle("GET", "/static/vendor/htmx.min.js", {}, b"")
    assert status == 200 and headers["Content-Type"].startswith("text/javascript")
    status, body, headers = app.handle("GET", "/api/runs", {}, b"")
    assert status == 200 and json.loads(body)["count"] == 1
    status, body, _ = app.handle("GET", "/nope", {}, b"")
    assert status == 404 and json.loads(body)["error"]["code"] == "not_found"
    form = b"csrf=x&from_step=score"
    headers_in = {
        "Origin": "http://evil.example",
        "Host": "127.0.0.1:7071",
        "Content-Type": "application/x-www-form-urlencoded",
    }
    status, _, _ = app.handle("POST", "/runs/run-failed-1/rerun", headers_in, form)
    assert status == 403 and world.sent() == []


def test_function_serves_the_console_with_function_auth_and_carries_the_key(world: ConsoleWorld) -> None:
    fn = console_fn.console.build().get_user_function()
    binding = json.loads(console_fn.console.build().get_function_json())["bindings"][0]
    assert binding["authLevel"] == "FUNCTION" and binding["route"] == "console/{*path}"
    set_services(world.services)
    try:
        req = func.HttpRequest(
            "GET",
            "https://app.azurewebsites.net/api/console/runs/run-failed-1?code=K3y==",
            headers={"Host": "app.azurewebsites.net"},
            params={"code": "K3y=="},
            route_params={"path": "runs/run-failed-1"},
            body=b"",
        )
        resp = fn(req)
    finally:
        set_services(None)
    body = resp.get_body().decode()
    assert resp.status_code == 200 and resp.mimetype == "text/html"
    assert resp.headers["Content-Security-Policy"] == CSP
    assert 'href="/api/console/static/console.css?code=K3y%3D%3D"' in body
    assert 'hx-get="/api/console/runs/run-failed-1?fragment=live&amp;code=K3y%3D%3D"' in body
    cookie = resp.headers["Set-Cookie"]
    assert "Path=/api/console" in cookie and "Secure" in cookie and "HttpOnly" in cookie
