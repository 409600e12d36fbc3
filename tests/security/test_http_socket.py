"""Issue 6, observation 5: the local host's HTTP layer, through the real socket of a running host.

Each case sends raw bytes (``tests.security.wire``) because client libraries normalise exactly
what these tests need to get wrong: lowercase and unknown methods, a bad or negative
Content-Length, a body shorter than declared, chunked framing, a foreign Origin, a Host that
is not the bound address. Every answer must be JSON (never Python's HTML error page), every
refusal must leave the store and the queue untouched, and nothing may hang.
"""

from __future__ import annotations

import json
import socket

import pytest

from tests.security.conftest import SocketHost
from tests.security.wire import chunked, exchange, is_json_error, read_reply, request

RUNS = "/api/flows/nightly/runs"
JSON = {"Content-Type": "application/json"}


def post_json(host: SocketHost, path: str, body: bytes, **headers: str) -> bytes:
    return request("POST", path, host.port, body=body, headers={**JSON, **headers})


# ---------------------------------------------------------------- every method is answered, in JSON


def test_options_handshake_grants_the_origin(socket_host: SocketHost) -> None:
    raw = request(
        "OPTIONS", "/api/events/blob", socket_host.port, headers={"WebHook-Request-Origin": "eventgrid.azure.net"}
    )
    reply = exchange(socket_host.port, raw)
    assert reply.status == 200, reply.raw
    assert reply.headers.get("webhook-allowed-origin") == "eventgrid.azure.net"


def test_options_handshake_without_origin_is_a_json_400(socket_host: SocketHost, nothing_created: None) -> None:
    reply = exchange(socket_host.port, request("OPTIONS", "/api/events/blob", socket_host.port))
    assert reply.status == 400 and is_json_error(reply), reply.raw
    assert reply.json()["error"]["field"] == "WebHook-Request-Origin"


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("BREW", "/api/runs", "GET"),
        ("PROPFIND", "/admin/host/status", "GET"),
        ("DELETE", "/api/runs/abc", "GET"),
        ("PUT", RUNS, "POST"),
    ],
)
def test_unknown_methods_are_a_json_405_with_allow(
    socket_host: SocketHost, nothing_created: None, method: str, path: str, allow: str
) -> None:
    reply = exchange(socket_host.port, request(method, path, socket_host.port, headers=JSON))
    assert reply.status == 405 and is_json_error(reply), reply.raw
    assert allow in reply.headers.get("allow", ""), reply.headers


def test_lowercase_method_is_answered_in_json(socket_host: SocketHost) -> None:
    reply = exchange(socket_host.port, request("get", "/api/runs", socket_host.port))
    assert reply.status is not None and reply.content_type.startswith("application/json"), reply.raw
    assert reply.status < 500


def test_unknown_path_is_a_json_404(socket_host: SocketHost) -> None:
    reply = exchange(socket_host.port, request("GET", "/index.php", socket_host.port))
    assert reply.status == 404 and is_json_error(reply), reply.raw


def test_head_answers_without_a_body(socket_host: SocketHost) -> None:
    reply = exchange(socket_host.port, request("HEAD", "/admin/host/status", socket_host.port))
    assert reply.status == 200 and reply.body == b""


# ---------------------------------------------------------------- framing


@pytest.mark.parametrize("value", ["abc", "-5", "1e3", "12, 13"])
def test_bad_content_length_is_a_400_not_a_dropped_connection(
    socket_host: SocketHost, nothing_created: None, value: str
) -> None:
    raw = post_json(socket_host, RUNS, b"{}", **{"Content-Length": value})
    reply = exchange(socket_host.port, raw)
    assert not reply.hung
    assert reply.status == 400, reply.raw


def test_short_body_times_out_instead_of_holding_the_connection(socket_host: SocketHost, nothing_created: None) -> None:
    raw = post_json(socket_host, RUNS, b'{"params": {', **{"Content-Length": "100"})
    reply = exchange(socket_host.port, raw)
    assert not reply.hung, "the server held a connection whose body never arrived"
    assert reply.status in (None, 408), reply.raw
    if reply.status is not None:
        assert is_json_error(reply)


def test_silent_connection_is_closed(socket_host: SocketHost) -> None:
    with socket.create_connection(("127.0.0.1", socket_host.port), timeout=20) as sock:
        sock.sendall(b"POST /api/runs HTTP/1.1\r\nHost: 127.0.0.1")  # and then nothing
        reply = read_reply(sock)
    assert not reply.hung, "the server held a connection whose request line never ended"


def test_chunked_body_is_read(socket_host: SocketHost) -> None:
    body = json.dumps({"params": {"who": "chunked", "n": 3}}).encode()
    raw = request("POST", RUNS, socket_host.port, body=chunked(body), headers={**JSON, "Transfer-Encoding": "chunked"})
    reply = exchange(socket_host.port, raw)
    assert reply.status == 202, reply.raw
    run = socket_host.services.store.get(reply.json()["run_id"])
    assert run.trigger.params == {"who": "chunked", "n": 3}


def test_body_larger_than_the_limit_is_a_json_413(socket_host: SocketHost, nothing_created: None) -> None:
    raw = post_json(socket_host, RUNS, b"", **{"Content-Length": str(64 * 1024 * 1024)})
    reply = exchange(socket_host.port, raw)
    assert reply.status == 413 and is_json_error(reply), reply.raw


def test_chunked_body_larger_than_the_limit_is_a_413(socket_host: SocketHost, nothing_created: None) -> None:
    body = b'{"params": {"x": "' + b"a" * (2 * 1024 * 1024) + b'"}}'
    raw = request(
        "POST", RUNS, socket_host.port, body=chunked(body, 65536), headers={**JSON, "Transfer-Encoding": "chunked"}
    )
    try:
        reply = exchange(socket_host.port, raw)
    except (BrokenPipeError, ConnectionResetError):
        return  # refused before the whole body was sent: nothing was created either
    assert reply.status == 413, reply.raw


@pytest.mark.parametrize("size", [20 * 1024, 200 * 1024])
def test_oversized_headers_are_refused(socket_host: SocketHost, nothing_created: None, size: int) -> None:
    raw = post_json(socket_host, RUNS, b"{}", **{"X-Padding": "a" * size})
    reply = exchange(socket_host.port, raw)
    assert not reply.hung and reply.status == 431, reply.raw


def test_too_many_headers_are_refused(socket_host: SocketHost, nothing_created: None) -> None:
    many = {f"X-H{i}": "v" for i in range(300)}
    reply = exchange(socket_host.port, post_json(socket_host, RUNS, b"{}", **many))
    assert not reply.hung and reply.status == 431, reply.raw


def test_keep_alive_serves_two_requests_then_closes_an_idle_connection(socket_host: SocketHost) -> None:
    one = f"GET /admin/host/status HTTP/1.1\r\nHost: 127.0.0.1:{socket_host.port}\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", socket_host.port), timeout=20) as sock:
        for _ in range(2):
            sock.sendall(one)
            reply = read_reply(sock)
            assert reply.status == 200 and reply.json() == {"state": "Running"}
        idle = read_reply(sock)  # nothing more is sent: the server ends the idle connection
    assert not idle.hung and idle.status is None


# ---------------------------------------------------------------- cross-site requests and DNS rebinding


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None],
)
def test_state_changing_request_needs_json(
    socket_host: SocketHost, nothing_created: None, content_type: str | None
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    raw = request("POST", RUNS, socket_host.port, body=b'{"params": {}}', headers=headers)
    reply = exchange(socket_host.port, raw)
    assert reply.status == 415 and is_json_error(reply), reply.raw
    assert reply.json()["error"]["field"] == "Content-Type"


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://127.0.0.1:1", "https://127.0.0.1"])
def test_foreign_origin_is_refused(socket_host: SocketHost, nothing_created: None, origin: str) -> None:
    reply = exchange(socket_host.port, post_json(socket_host, RUNS, b"{}", Origin=origin))
    assert reply.status == 403 and is_json_error(reply), reply.raw
    assert reply.json()["error"]["field"] == "Origin"


def test_same_origin_is_accepted(socket_host: SocketHost) -> None:
    raw = post_json(socket_host, RUNS, b"{}", Origin=f"http://127.0.0.1:{socket_host.port}")
    assert exchange(socket_host.port, raw).status == 202


@pytest.mark.parametrize("host_header", ["evil.example", "evil.example:{port}", "127.0.0.1:1", "localhost.evil:{port}"])
@pytest.mark.parametrize("method", ["POST", "GET"])
def test_host_other_than_the_bound_address_is_refused(
    socket_host: SocketHost, nothing_created: None, host_header: str, method: str
) -> None:
    path = RUNS if method == "POST" else "/api/runs"
    raw = request(
        method,
        path,
        socket_host.port,
        body=b"{}" if method == "POST" else b"",
        headers=JSON,
        host_header=host_header.format(port=socket_host.port),
    )
    reply = exchange(socket_host.port, raw)
    assert reply.status == 400 and is_json_error(reply), reply.raw
    assert reply.json()["error"]["field"] == "Host"


@pytest.mark.parametrize("host_header", ["127.0.0.1:{port}", "localhost:{port}"])
def test_bound_address_is_accepted(socket_host: SocketHost, host_header: str) -> None:
    raw = request("GET", "/api/runs", socket_host.port, host_header=host_header.format(port=socket_host.port))
    assert exchange(socket_host.port, raw).status == 200


# ---------------------------------------------------------------- room for a console on the same host


def test_extra_routes_get_their_own_policy_and_the_api_keeps_its_own() -> None:
    """What issue 8's console will do: pages at /console with form posts, CSP, same Host/Origin rules."""
    from starlette.responses import HTMLResponse
    from starlette.routing import Route

    from shared.api.guard import FORM_MEDIA_TYPES, RequestPolicy
    from shared.api.http import json_response
    from shared.host.asgi import HostServer
    from shared.host.server import HostApp

    class Api:
        def dispatch(self, req):  # type: ignore[no-untyped-def]
            return json_response(200, {"api": True})

    async def page(request):  # type: ignore[no-untyped-def]
        return HTMLResponse("<p>runs</p>")

    probe = HostServer(HostApp(None, api=Api()), port=0).start()
    port = probe.port
    probe.stop()
    policy = RequestPolicy.for_address("127.0.0.1", port).with_media_types(*FORM_MEDIA_TYPES)
    policy = RequestPolicy(
        policy.hosts,
        policy.origins,
        policy.media_types,
        response_headers=(("Content-Security-Policy", "default-src 'self'"),),
    )
    server = HostServer(
        HostApp(None, api=Api()),
        port=port,
        extra_routes=[Route("/console", page, methods=["GET", "POST"])],
        extra_policies=[("/console", policy)],
    ).start()
    try:
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        got = exchange(port, request("GET", "/console", port))
        assert got.status == 200 and got.headers["content-security-policy"] == "default-src 'self'"
        assert exchange(port, request("POST", "/console", port, body=b"a=1", headers=form)).status == 200
        foreign = exchange(port, request("POST", "/console", port, body=b"a=1", headers={**form, "Origin": "http://x"}))
        assert foreign.status == 403
        assert exchange(port, request("POST", "/api/runs", port, body=b"a=1", headers=form)).status == 415
        assert exchange(port, request("GET", "/console", port, host_header="evil.example")).status == 400
    finally:
        server.stop()
