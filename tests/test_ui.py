"""The dashboard (``/ui/``): its files served from the package without a key, the status fields
it reads, and the page itself in a real browser — Debian's chromium driven by playwright —
against lkn with the real SmolLM2 (and the fake engine for the admin-key prompt)."""
from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import time
import tomllib
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, Iterator

import pytest

from lkn.gateway.ui_static import CONTENT_TYPES, UI_DIR
from tests.conftest import ROOT, Gateway, http, lua_str, smollm2_path, write_config
from tests.sglang_support import fake_python, hf_dir, sg_config  # noqa: F401

CHROMIUM = (os.environ.get("LKN_CHROMIUM") or shutil.which("chromium")
            or shutil.which("chromium-browser"))
needs_browser = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (scripts/setup.sh --with-test "
                             "installs it; the browser tests drive it with playwright)")
MSG = [{"role": "user", "content": "What is the capital of France?"}]
ADMIN = {"Authorization": "Bearer adm-1"}
# The page reads the event stream. (A function, not an expression: the page's CSP forbids eval.)
LIVE = "() => document.getElementById('connection').textContent === 'live'"


def chat(gw: Gateway, model: str, *, api_key: str = "x", **kw: Any) -> Any:
    """One chat completion through the openai SDK: the raw response (with lkn's headers). The
    client is closed at once: a socket left to the garbage collector is a ResourceWarning."""
    with gw.client(api_key=api_key) as client:
        return client.chat.completions.with_raw_response.create(model=model, messages=MSG,
                                                                **kw)


def fake_lua(binary: str, logs: Path, server: str = "", args: str = "") -> str:
    return f"""
server = {{ engine_start_timeout_s = 20, stop_grace_s = 1, log_dir = {lua_str(str(logs))},
           {server} }}
models = {{
  {{ name = "fake", binary = {lua_str(binary)}, model_file = "/nonexistent/fake.gguf",
    vram_mb = 100, args = {{ {args} }},
    variants = {{ {{ ctx_size = 2048 }}, {{ ctx_size = 4096 }} }},
    homeostasis = {{ mode = "homeostatic", threshold = 0.4, intervention = "verify_prompt" }} }},
}}
"""


# ------------------------------------------------------------------ files and status (no browser)

def test_ui_files_are_served_without_any_key(tmp_path: Path, fake_binary: str,
                                             gateway_factory: Any) -> None:
    gw = gateway_factory(write_config(tmp_path, fake_lua(
        fake_binary, tmp_path / "logs",
        server='admin_keys = { "adm-1" }, api_keys = { "client-1" }')))
    page = http("GET", gw.base_url + "/ui/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert '<script type="module" src="app.js">' in page.text
    for path in sorted(UI_DIR.iterdir()):
        r = http("GET", f"{gw.base_url}/ui/{path.name}")
        assert r.status_code == 200, path.name
        assert r.headers["content-type"].startswith(CONTENT_TYPES[path.suffix]), path.name
        assert r.content == path.read_bytes()
    assert http("GET", gw.base_url + "/ui").status_code == 200  # redirected to /ui/
    for missing in ("/ui/nope.js", "/ui/.hidden.js", "/ui/README", "/ui/%2e%2e%2fserver.py"):
        assert http("GET", gw.base_url + missing).status_code == 404, missing
    # the data stays behind the admin key
    assert http("GET", gw.base_url + "/status").status_code == 401
    assert http("GET", gw.base_url + "/status", headers=ADMIN).status_code == 200


def test_every_dashboard_file_is_package_data() -> None:
    """A normal install ships only what pyproject's package-data names (an editable one reads
    the source tree): every file the page loads must match one of its patterns."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["lkn.gateway"]
    files = sorted(p.relative_to(UI_DIR.parent).as_posix() for p in UI_DIR.iterdir())
    assert "ui/index.html" in files and "ui/app.js" in files
    assert [f for f in files if not any(fnmatch(f, p) for p in patterns)] == []


def test_status_tells_the_dashboard_each_models_settings(
        tmp_path: Path, fake_binary: str, gateway_factory: Any) -> None:
    gw = gateway_factory(write_config(tmp_path, fake_lua(fake_binary, tmp_path / "logs")))
    model = http("GET", gw.base_url + "/status").json()["models"]["fake"]
    assert model["homeostasis"] == {"mode": "homeostatic", "threshold": 0.4,
                                    "intervention": "verify_prompt"}
    assert model["variants"] == [2048, 4096]
    assert model["can_sleep"] is False and model["pinned"] is False
    assert model["state"] == "unloaded" and "traffic" in model  # the keys it had are kept
    assert http("GET", gw.base_url + "/status/fake").json()["variants"] == [2048, 4096]


# ------------------------------------------------------------------ the browser

@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM)
        yield chromium
        chromium.close()


class Page:
    """A playwright page that records console errors and uncaught exceptions."""

    def __init__(self, browser: Any, **context: Any) -> None:
        self.context = browser.new_context(**context)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(f"console: {m.text}")
                     if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))

    def open(self, gw: Gateway) -> Any:
        self.page.goto(gw.base_url + "/ui/")
        return self.page

    def live(self, gw: Gateway) -> Any:
        page = self.open(gw)
        page.wait_for_function(LIVE)
        return page


@pytest.fixture
def tab(browser: Any) -> Iterator[Page]:
    page = Page(browser)
    yield page
    page.context.close()


def engine_card(page: Any, key: str) -> Any:
    return page.locator(f'article.engine[data-key="{key}"]')


def cell(row: Any, field: str) -> str:
    return str(row.locator(f'td[data-field="{field}"]').inner_text())


@pytest.fixture(scope="module")
def smol(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """lkn with two SmolLM2 models on llama-server, one engine at a time (a change of model is
    a swap); ``smol`` probes every request (homeostatic, threshold 0.5)."""
    tmp = tmp_path_factory.mktemp("ui")
    lua = f"""
server = {{ max_loaded_engines = 1, stop_grace_s = 5, engine_start_timeout_s = 120,
           log_dir = {lua_str(str(tmp / 'logs'))} }}
local smol = {lua_str(smollm2_path())}
models = {{
  {{ name = "smol", model_file = smol, gpu_layers = 0, ctx_size = 512, default_max_tokens = 8,
    args = {{ "--threads", 1 }}, homeostasis = {{ mode = "homeostatic", threshold = 0.5 }} }},
  {{ name = "smol-b", model_file = smol, gpu_layers = 0, ctx_size = 512, default_max_tokens = 8,
    args = {{ "--threads", 1 }} }},
}}
"""
    gateway = Gateway(write_config(tmp, lua))
    yield gateway
    gateway.stop()


@needs_browser
@pytest.mark.engine
def test_the_page_loads_without_console_errors(smol: Gateway, tab: Page) -> None:
    page = tab.live(smol)
    card = engine_card(page, "smol@512")
    card.wait_for()
    assert card.locator(".engine-key").inner_text() == "smol@512"
    assert page.locator("#vram").inner_text().count("8192 MiB") == 2  # summary and bar
    for panel in ("Engines", "Queue", "Swap timeline", "Last requests", "Entropy",
                  "Engine log"):
        assert page.get_by_role("heading", name=panel, exact=True).is_visible(), panel
    assert page.locator("#key-form").is_hidden()
    assert tab.errors == []


@needs_browser
@pytest.mark.engine
def test_a_chat_request_appears_in_the_requests_table_within_two_seconds(
        smol: Gateway, tab: Page) -> None:
    page = tab.live(smol)
    raw = chat(smol, "smol", max_tokens=4)
    row = page.locator(f'#requests-table tr[data-id="{raw.headers["x-request-id"]}"]')
    row.wait_for(timeout=2000)
    assert cell(row, "model") == "smol"
    assert cell(row, "mode") == raw.headers["x-lkn-mode"] in ("FLUID", "ANALYTIC")
    assert cell(row, "variant") == raw.headers["x-lkn-variant"] == "512"
    tokens, _, method = raw.headers["x-lkn-prompt-tokens"].partition(";")
    assert cell(row, "prompt") == f"{tokens} ({method})"
    assert cell(row, "entropy") == f"{float(raw.headers['x-lkn-entropy']):.3f}"
    assert cell(row, "status") == "200 ok" and cell(row, "latency").endswith(" ms")
    # the entropy histogram counts it, with the model's threshold marked
    figure = page.locator('#entropy figure[data-model="smol"]')
    assert figure.locator(".threshold-label").text_content() == "threshold 0.5"
    assert "probed requests" in figure.locator("figcaption").inner_text()
    counts = figure.locator("rect.hist").evaluate_all(
        "rects => rects.map(r => Number(r.dataset.count))")
    assert len(counts) == 10 and sum(counts) >= 1
    assert tab.errors == []


@needs_browser
@pytest.mark.engine
def test_load_and_unload_buttons_drive_the_engine_and_the_panel_says_so(
        smol: Gateway, tab: Page) -> None:
    page = tab.live(smol)
    card = engine_card(page, "smol-b@512")
    card.locator('button[data-action="load"]').click()
    page.locator('article.engine[data-key="smol-b@512"][data-state="ready"]').wait_for()
    assert card.locator(".state").inner_text() == "● ready"
    assert card.locator('button[data-action="load"]').is_disabled()
    card.locator('button[data-action="unload"]').click()
    page.locator('article.engine[data-key="smol-b@512"][data-state="stopped"]').wait_for()
    assert card.locator(".state").inner_text() == "○ stopped"
    engines = http("GET", smol.base_url + "/status").json()["engines"]
    assert {e["key"]: e["state"] for e in engines}["smol-b@512"] == "stopped"
    page.locator("#message", has_text="unload smol-b: done").wait_for()
    assert tab.errors == []


@needs_browser
@pytest.mark.engine
def test_a_swap_shows_on_the_timeline(smol: Gateway, tab: Page) -> None:
    chat(smol, "smol", max_tokens=2)
    chat(smol, "smol-b", max_tokens=2)
    page = tab.live(smol)  # the swap is in the history the page reads on connecting
    swap = page.locator("#swaps li", has_text="smol@512 stopped to make room for smol-b@512")
    swap.first.wait_for()
    assert page.locator('#timeline g[data-key="smol@512"] rect[data-state="ready"]').count() >= 1
    assert page.locator("#timeline line.swap-line").count() >= 1
    assert page.locator('#timeline g[data-key="smol-b@512"] rect').count() >= 1
    assert tab.errors == []


@needs_browser
@pytest.mark.engine
def test_the_log_of_a_selected_engine_and_follow_mode(smol: Gateway, tab: Page) -> None:
    chat(smol, "smol", max_tokens=2)
    page = tab.live(smol)
    page.locator("#logs-engine").select_option("smol@512")
    page.locator("#logs-lines").fill("20")
    page.get_by_role("button", name="Show").click()
    page.locator("#logs-info", has_text="20 lines of smol@512").wait_for()
    assert len(page.locator("#logs").inner_text().splitlines()) >= 20
    page.locator("#logs-follow").check()
    page.locator("#logs-info", has_text="following smol@512").wait_for()
    assert http("POST", smol.base_url + "/admin/models/smol/unload").status_code == 200
    page.wait_for_function(
        "() => document.getElementById('logs').textContent.includes('-> stopping')")
    assert tab.errors == []


@needs_browser
@pytest.mark.engine
def test_phone_width_needs_no_sideways_scrolling(smol: Gateway, browser: Any) -> None:
    phone = Page(browser, viewport={"width": 375, "height": 800}, is_mobile=True,
                 has_touch=True)
    try:
        page = phone.live(smol)
        engine_card(page, "smol@512").wait_for()
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
        assert phone.errors == []
    finally:
        phone.context.close()


@needs_browser
def test_with_admin_keys_the_page_asks_for_the_key_and_keeps_it_for_the_session(
        tmp_path: Path, fake_binary: str, gateway_factory: Any, browser: Any) -> None:
    gw = gateway_factory(write_config(tmp_path, fake_lua(
        fake_binary, tmp_path / "logs",
        server='admin_keys = { "adm-1" }, api_keys = { "client-1" }')))
    tab = Page(browser)
    try:
        page = tab.open(gw)
        page.locator("#key-form").wait_for()
        assert page.locator("#panels").is_hidden()
        # without the key the page's requests fail: lkn's data needs it, the stream too
        for path in ("/status", "/admin/events", "/admin/engines/fake/logs"):
            assert page.evaluate(f"fetch('{path}').then(r => r.status)") == 401, path
        page.locator("#key-input").fill("wrong")
        page.get_by_role("button", name="Use key").click()
        page.locator("#key-message", has_text="lkn refused that key").wait_for()
        assert page.locator("#panels").is_hidden()
        page.locator("#key-input").fill("adm-1")
        page.get_by_role("button", name="Use key").click()
        engine_card(page, "fake@2048").wait_for()
        page.wait_for_function(LIVE)
        assert page.evaluate("sessionStorage.getItem('lkn-admin-key')") == "adm-1"
        assert page.evaluate("localStorage.length") == 0
        assert page.evaluate("document.cookie") == ""
        # the event stream is read with the key: a request shows up
        raw = chat(gw, "fake", api_key="client-1")
        page.locator(f'#requests-table tr[data-id="{raw.headers["x-request-id"]}"]').wait_for()
        engine_card(page, "fake@2048").locator('button[data-action="unload"]').click()
        page.locator('article.engine[data-key="fake@2048"][data-state="stopped"]').wait_for()
        # the same tab keeps the key across a reload; another session asks again
        page.reload()
        engine_card(page, "fake@2048").wait_for()
        assert page.locator("#key-form").is_hidden()
        other = Page(browser)
        try:
            other.open(gw).locator("#key-form").wait_for()
        finally:
            other.context.close()
        page.get_by_role("button", name="Forget key").click()
        page.locator("#key-form").wait_for()
        assert page.evaluate("sessionStorage.getItem('lkn-admin-key')") is None
        assert [e for e in tab.errors if "401" not in e] == []
    finally:
        tab.context.close()


@needs_browser
def test_the_timeline_and_histogram_math_in_the_browser(
        tmp_path: Path, fake_binary: str, gateway_factory: Any, tab: Page) -> None:
    gw = gateway_factory(write_config(tmp_path, fake_lua(fake_binary, tmp_path / "logs")))
    page = tab.live(gw)
    cases = [
        # (events, engines now, start, now) -> intervals per key
        ([], [{"key": "a@1", "state": "ready"}], 0, 10, {"a@1": [[0, 10, "ready"]]}),
        ([], [{"key": "a@1", "state": "stopped"}], 0, 10, {"a@1": []}),
        ([{"key": "a@1", "time": 2, "seq": 1, "previous": "stopped", "state": "starting"},
          {"key": "a@1", "time": 3, "seq": 2, "previous": "starting", "state": "ready"},
          {"key": "a@1", "time": 7, "seq": 3, "previous": "ready", "state": "stopping"},
          {"key": "a@1", "time": 8, "seq": 4, "previous": "stopping", "state": "stopped"}],
         [{"key": "a@1", "state": "stopped"}], 0, 10,
         {"a@1": [[2, 3, "starting"], [3, 7, "ready"], [7, 8, "stopping"]]}),
        # ready before the page's history began: held from the left edge
        ([{"key": "b@2", "time": 5, "seq": 9, "previous": "ready", "state": "asleep"}],
         [{"key": "b@2", "state": "asleep"}], 0, 10,
         {"b@2": [[0, 5, "ready"], [5, 10, "asleep"]]}),
    ]
    for events, engines, start, now, expected in cases:
        got = page.evaluate("""async ([events, engines, start, now]) => {
            const { intervals } = await import('/ui/timeline.js');
            return Object.fromEntries(intervals(events, engines, start, now)
                                      .map(r => [r.key, r.spans]));
        }""", [events, engines, start, now])
        assert got == expected, events
    bins = page.evaluate("""async () => (await import('/ui/entropy.js'))
                            .histogram([0, 0.05, 0.1, 0.5, 0.99, 1.0])""")
    assert bins == [2, 1, 0, 0, 0, 1, 0, 0, 0, 2]
    frames = page.evaluate("""async () => {
        const { SseParser } = await import('/ui/sse.js');
        const p = new SseParser();
        return [p.feed('data: {"a":1}\\n\\n: keep-alive\\n\\ndata: {"b"'),
                p.feed(':2}\\r\\n\\r\\n')];
    }""")
    assert [[json.loads(d) for d in batch] for batch in frames] == [[{"a": 1}], [{"b": 2}]]
    assert page.locator("#keys-panel").is_hidden()  # this lkn has no client keys
    assert tab.errors == []


@needs_browser
def test_the_queue_panel_lists_a_waiting_request_and_cancels_it(
        tmp_path: Path, fake_binary: str, gateway_factory: Any, tab: Page) -> None:
    gw = gateway_factory(write_config(tmp_path, fake_lua(fake_binary, tmp_path / "logs",
                                                         args='"--fake-load-s", 10')))
    page = tab.live(gw)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        answer = pool.submit(http, "POST", gw.base_url + "/v1/chat/completions",
                             json.dumps({"model": "fake", "messages": MSG}),
                             {"x-request-id": "slow-1"})
        row = page.locator('#inflight-table tr[data-id="slow-1"]')
        row.wait_for()  # the engine takes 10 s to start: the request waits for it
        assert row.locator("td").nth(1).inner_text() == "fake"
        page.locator('#models-table tr[data-model="fake"] td[data-field="requests"]',
                     has_text="1").wait_for()
        assert engine_card(page, "fake@2048").locator(".state").inner_text() == "◐ starting"
        row.get_by_role("button", name="cancel request slow-1").click()
        result = answer.result(30)
    assert result.status_code == 503 and result.json()["error"]["code"] == "request_cancelled"
    page.locator("#message", has_text="cancelled 1 request(s) with id slow-1").wait_for()
    page.locator('#requests-table tr[data-id="slow-1"] td[data-field="status"]',
                 has_text="503 error").wait_for()
    assert tab.errors == []


@needs_browser
def test_sleep_and_wake_buttons_of_an_engine_that_can_sleep(
        tmp_path: Path, hf_dir: Path, fake_python: str, fake_binary: str,
        gateway_factory: Any, tab: Page) -> None:
    gw = gateway_factory(sg_config(tmp_path, hf_dir, fake_python, fake_binary,
                                   sg_extra="sleep_when_idle_s = 600, "
                                            "mem_fraction_static = 0.5"))
    page = tab.live(gw)
    card = engine_card(page, "sg@4096")
    assert card.locator('button[data-action="sleep"]').is_disabled()  # not running yet
    card.locator('button[data-action="load"]').click()
    page.locator('article.engine[data-key="sg@4096"][data-state="ready"]').wait_for()
    page.locator("#message", has_text="load sg: done").wait_for()
    card.locator('button[data-action="sleep"]').click()
    page.locator('article.engine[data-key="sg@4096"][data-state="asleep"]').wait_for()
    assert card.locator(".state").inner_text() == "☾ asleep"
    page.locator("#message", has_text="sleep sg: done").wait_for()
    card.locator('button[data-action="wake"]').click()
    page.locator('article.engine[data-key="sg@4096"][data-state="ready"]').wait_for()
    page.locator("#message", has_text="wake sg: done").wait_for()
    # a llama-server engine cannot sleep: its button stays off
    assert engine_card(page, "llama@2048").locator('button[data-action="sleep"]').is_disabled()
    assert tab.errors == []


def keys_lua(binary: str, logs: Path, state_dir: Path) -> str:
    return f"""
server = {{ stop_grace_s = 1, log_dir = {lua_str(str(logs))}, state_dir = {lua_str(str(state_dir))},
  keys = {{
    {{ id = "alice", key = "sk-alice", models = {{ "fake" }}, max_concurrent = 2,
      requests_per_minute = 60 }},
    {{ id = "bob", key = "sk-bob", tokens_per_day = 1000 }},
  }},
}}
models = {{
  {{ name = "fake", binary = {lua_str(binary)}, model_file = "/nonexistent/fake.gguf",
    vram_mb = 100, ctx_size = 2048 }},
}}
"""


@needs_browser
def test_the_keys_panel_shows_each_keys_quota_and_its_last_day(
        tmp_path: Path, fake_binary: str, gateway_factory: Any, tab: Page) -> None:
    gw = gateway_factory(write_config(tmp_path, keys_lua(fake_binary, tmp_path / "logs",
                                                         tmp_path / "state")))
    for key in ("sk-alice", "sk-bob"):
        chat(gw, "fake", api_key=key)
    page = tab.live(gw)
    alice = page.locator('#keys-table tr[data-key="alice"]')
    bob = page.locator('#keys-table tr[data-key="bob"]')
    # the log is written in batches off the request path: the next refresh shows the rows
    alice.locator('td[data-field="requests-24h"]', has_text="1").wait_for()
    bob.locator('td[data-field="requests-24h"]', has_text="1").wait_for()
    keys = {k["id"]: k for k in http("GET", gw.base_url + "/admin/keys").json()["data"]}
    used = keys["bob"]["quota"]["tokens_per_day"]["used"]
    assert used > 0
    assert alice.locator("th").inner_text() == "alice"
    assert cell(alice, "in-flight") == "0 / 0" and cell(alice, "max-concurrent") == "2"
    assert cell(alice, "requests_per_minute") == "1 / 60 (59 left)"
    assert cell(alice, "tokens_per_minute") == cell(alice, "tokens_per_day") == "–"
    assert cell(bob, "max-concurrent") == "–" and cell(bob, "requests_per_minute") == "–"
    assert cell(bob, "tokens_per_day") == f"{used} / 1000 ({1000 - used} left)"
    assert cell(bob, "errors-24h") == "0" and cell(bob, "tokens-24h") == str(used)
    assert "2 client keys, 0 requests waiting" in page.locator("#keys-summary").inner_text()
    assert page.get_by_role("heading", name="Keys", exact=True).is_visible()
    assert tab.errors == []


@needs_browser
def test_the_keys_panel_writes_data_as_text_never_markup(
        tmp_path: Path, fake_binary: str, gateway_factory: Any, tab: Page) -> None:
    gw = gateway_factory(write_config(tmp_path, fake_lua(fake_binary, tmp_path / "logs")))
    page = tab.live(gw)
    evil = '<img src=x onerror="window.pwned=1">'
    got = page.evaluate("""async (evil) => {
        const { renderKeys } = await import('/ui/keys.js');
        const section = document.createElement('section');
        const summary = document.createElement('p');
        const table = document.createElement('table');
        const tbody = table.createTBody();
        const keys = [{ id: evil, models: [evil], max_concurrent: null, priority: null,
                        in_flight: 1, waiting: 2,
                        quota: { requests_per_minute: { limit: 5, used: 5, left: 0,
                                                        reset_s: 42 },
                                 tokens_per_minute: { limit: null, used: 9, left: null,
                                                      reset_s: 0 },
                                 tokens_per_day: { limit: 100, used: 9, left: 91,
                                                   reset_s: 60 } } }];
        renderKeys({ section, summary, tbody }, keys, null, evil);
        await new Promise((resolve) => setTimeout(resolve, 50));
        const row = tbody.rows[0];
        return { hidden: section.hidden, images: table.querySelectorAll('img').length,
                 id: row.querySelector('th').textContent, title: row.querySelector('th').title,
                 key: row.dataset.key, summary: summary.textContent,
                 cells: [...row.querySelectorAll('td')].map((td) => [td.dataset.field,
                                                                      td.textContent,
                                                                      td.className]),
                 pwned: window.pwned === undefined ? null : window.pwned };
    }""", evil)
    assert got["hidden"] is False and got["images"] == 0 and got["pwned"] is None
    assert got["id"] == got["key"] == evil
    assert got["title"] == f"interactive; models: {evil}"
    assert got["summary"].endswith(f"the last 24 h unknown: {evil}")
    assert got["cells"] == [
        ["in-flight", "1 / 2", ""], ["max-concurrent", "–", ""],
        ["requests_per_minute", "5 / 5 (none left, clears in 42 s)", "spent"],
        ["tokens_per_minute", "–", ""], ["tokens_per_day", "9 / 100 (91 left)", ""],
        ["requests-24h", "–", ""], ["errors-24h", "–", ""], ["tokens-24h", "–", ""]]
    assert tab.errors == []
