"""The viewer's server guard, without Gradio: unused routes are not served, uploads are rate-limited,
remote addresses are recognised, a port in use is one clear error."""

import socket

import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from flowsdf.cli.view import is_loopback
from flowsdf.errors import FlowSDFError
from flowsdf.viewer.app import Guard, allowed, bind


def _client(rate: int = 3) -> TestClient:
    ok = lambda request: PlainTextResponse("ok")
    inner = Starlette(routes=[Route("/{path:path}", ok, methods=["GET", "POST", "HEAD"])])
    return TestClient(Guard(inner, uploads_per_minute=rate))


@pytest.mark.parametrize("method, path", [
    ("GET", "/"), ("GET", "/config"), ("GET", "/assets/index.js"), ("POST", "/gradio_api/queue/join"),
    ("GET", "/gradio_api/queue/data"), ("GET", "/gradio_api/heartbeat/abc"), ("POST", "/gradio_api/upload"),
    ("GET", "/gradio_api/file=/tmp/x.glb"),
])
def test_the_pages_own_routes_pass(method, path):
    assert allowed(method, path)
    assert _client(rate=100).request(method, path).text == "ok"


@pytest.mark.parametrize("method, path", [
    ("POST", "/gradio_api/call/reconstruct"), ("POST", "/gradio_api/run/predict"), ("POST", "/gradio_api/api/x"),
    ("GET", "/gradio_api/openapi.json"), ("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/monitoring"),
    ("GET", "/gradio_api/proxy=http://example.com/"), ("POST", "/gradio_api/mcp/sse"), ("POST", "/login"),
    ("GET", "/gradio_api/run-history/buckets"), ("POST", "/gradio_api/vibe-edit"), ("GET", "/gradio_api/dev/reload"),
    ("POST", "/gradio_api/component_server"), ("DELETE", "/"), ("POST", "/config"),
])
def test_routes_the_page_does_not_use_are_not_served(method, path):
    assert not allowed(method, path)
    response = _client().request(method, path)
    assert response.status_code == 404 and "not served" in response.json()["error"]


def test_uploads_beyond_the_rate_are_refused_per_client():
    client = _client(rate=3)
    assert [client.post("/gradio_api/upload").status_code for _ in range(4)] == [200, 200, 200, 429]
    assert "at most 3 a minute" in client.post("/gradio_api/upload").json()["error"]
    assert client.get("/config").status_code == 200  # the page itself is still served


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("localhost", True), ("::1", True),
                                            ("127.0.0.2", True), ("0.0.0.0", False), ("192.168.1.5", False),
                                            ("example.com", False)])
def test_loopback_hosts(host, loopback):
    assert is_loopback(host) is loopback


def test_a_port_in_use_is_one_clear_error():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(FlowSDFError, match=f"cannot serve on 127.0.0.1:{port}: the port is in use"):
            bind("127.0.0.1", port)
    sock = bind("127.0.0.1", 0)
    sock.close()
