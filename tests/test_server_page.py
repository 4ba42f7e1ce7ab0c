"""The chat page at `/` in a real browser, and how `llmkit serve` starts.

Headless Chromium (Debian's package, installed by scripts/setup.sh, as in conformance/tests/test_html.py) is
driven over the DevTools protocol: it loads the page under the page's own Content-Security-Policy, types a
message, presses Send, and the answer it shows must be the engine's own greedy answer to the same conversation,
over two turns."""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

import llmkit

pytest.importorskip("fastapi")

from llmkit.server import ServerSettings, start_in_thread  # noqa: E402

MODEL = llmkit.DEFAULT_MODEL
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--remote-debugging-port=0"]
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (scripts/setup.sh installs it where apt-get can)")


class Browser:
    """Just enough of the Chrome DevTools protocol: evaluate JavaScript in one page."""

    def __init__(self, profile: Path) -> None:
        from websockets.sync.client import connect

        self.proc = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            assert time.monotonic() < deadline and self.proc.poll() is None, "chromium did not start"
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        page = next(t for t in httpx.get(f"http://127.0.0.1:{port}/json/list").json() if t["type"] == "page")
        self.ws = connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=30)
        self.ids = itertools.count(1)
        self.console: list[str] = []

    def call(self, method: str, **params) -> dict:
        request_id = next(self.ids)
        self.ws.send(json.dumps({"id": request_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=60))
            if message.get("method") in ("Runtime.exceptionThrown", "Log.entryAdded", "Runtime.consoleAPICalled"):
                self.console.append(json.dumps(message["params"])[:500])
            if message.get("id") == request_id:
                assert "error" not in message, message
                return message["result"]

    def eval(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.eval(expression)
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {expression}; console: {self.console}")

    def close(self) -> None:
        self.ws.close()
        self.proc.kill()
        self.proc.wait(10)


@needs_chromium
@pytest.mark.smollm2
@pytest.mark.timeout(180)
def test_chat_page_talks_to_the_model_in_a_browser(engine, tmp_path):
    with start_in_thread(engine, ServerSettings(port=0)) as server:
        browser = Browser(tmp_path / "profile")
        try:
            browser.call("Runtime.enable")
            browser.call("Log.enable")
            browser.call("Page.enable")
            browser.call("Page.navigate", url=server.url + "/")
            browser.wait_for("document.body && document.body.dataset.ready === '1'")
            assert MODEL in browser.eval("document.getElementById('model').textContent")
            browser.eval("document.getElementById('temperature').value = '0'; document.getElementById('max-tokens').value = '12'")
            history = []
            for turn, text in enumerate(["Name a fruit.", "And a vegetable?"], start=1):
                browser.eval(f"document.getElementById('prompt').value = {json.dumps(text)}; document.getElementById('send').click()")
                browser.wait_for(f"document.body.dataset.answers === '{turn}' && document.body.dataset.busy === '0'")
                shown = browser.eval(f"document.querySelectorAll('.msg.assistant')[{turn - 1}].firstChild.textContent")
                finish = browser.eval(f"document.querySelectorAll('.msg.assistant')[{turn - 1}].dataset.finish")
                history.append({"role": "user", "content": text})
                expected = engine.chat(history, llmkit.greedy(max_tokens=12))
                assert (shown, finish) == (expected.text, expected.finish_reason)
                history.append({"role": "assistant", "content": expected.text})
            assert browser.eval("document.querySelectorAll('.msg.error').length") == 0
            # Stop: the page aborts its fetch, the server sees the client go and the engine drops the request
            browser.eval("document.getElementById('max-tokens').value = '2000'; "
                         "document.getElementById('prompt').value = 'Write a very long story about a dragon.'; "
                         "document.getElementById('send').click()")
            browser.wait_for("(document.querySelectorAll('.msg.assistant')[2] || {}).textContent")
            assert engine.stats().engine["in_flight"] == 1
            browser.eval("document.getElementById('stop').click()")
            browser.wait_for("document.body.dataset.answers === '3' && document.body.dataset.busy === '0'")
            assert browser.eval("document.querySelectorAll('.msg.assistant')[2].dataset.finish") == "stopped"
            deadline = time.monotonic() + 10
            while engine.stats().engine["in_flight"] and time.monotonic() < deadline:
                time.sleep(0.05)
            assert engine.stats().engine["in_flight"] == 0 and server.served.metrics.disconnects == 1
            violations = [c for c in browser.console if "Content Security Policy" in c or "Refused" in c]
            assert not violations, violations
        finally:
            browser.close()


def test_page_is_self_contained_and_locked_down(tmp_path):
    """Nothing in the page points anywhere but this server, and its policy forbids loading anything else."""
    from llmkit.server.app import chat_page

    page, csp = chat_page()
    text = page.decode()
    assert "http://" not in text and "https://" not in text and "//cdn" not in text
    assert text.count("<script>") == 1 and text.count("<style>") == 1 and "<link" not in text and "<img" not in text
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "'unsafe-inline'" not in csp


def test_import_llmkit_does_not_import_the_web_stack():
    code = "import sys, llmkit, llmkit.cli, llmkit.server; print(sorted(m for m in ('fastapi', 'uvicorn', 'starlette') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_serve_without_the_extra_says_how_to_install_it(monkeypatch):
    import importlib.util

    from typer.testing import CliRunner

    from llmkit.cli import app

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("fastapi", "uvicorn") else real(name, *a))
    result = CliRunner().invoke(app, ["serve", "-b", "llamacpp"])
    assert result.exit_code == 2
    assert "pip install 'llmkit[server]'" in result.output


def test_serve_refuses_to_bind_beyond_loopback_without_a_key(monkeypatch):
    from typer.testing import CliRunner

    from llmkit.cli import app

    monkeypatch.delenv("LLMKIT_API_KEY", raising=False)
    loaded = []
    monkeypatch.setattr(llmkit, "load", lambda *a, **k: loaded.append(a))
    result = CliRunner().invoke(app, ["serve", "-b", "llamacpp", "--host", "0.0.0.0"])
    assert result.exit_code == 2 and "API key" in result.output
    assert loaded == []  # refused before any model was loaded


@pytest.mark.timeout(60)
def test_basic_auth_challenge_lets_a_browser_in(engine):
    """With a key, `/` asks the browser for it (HTTP Basic, the key as password); the page's own requests then
    carry the same credentials."""
    key = "page-key-0123456789"
    with start_in_thread(engine, ServerSettings(port=0, api_key=key)) as server:
        challenge = httpx.get(server.url + "/")
        assert challenge.status_code == 401 and challenge.headers["www-authenticate"].startswith("Basic realm=")
        auth = {"Authorization": "Basic " + base64.b64encode(f"anyone:{key}".encode()).decode()}
        assert httpx.get(server.url + "/", headers=auth).status_code == 200
        assert httpx.get(server.url + "/v1/models", headers=auth).json()["data"][0]["id"] == MODEL
        wrong = {"Authorization": "Basic " + base64.b64encode(b"anyone:nope").decode()}
        assert httpx.get(server.url + "/v1/models", headers=wrong).status_code == 401
