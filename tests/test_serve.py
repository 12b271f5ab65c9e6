"""`uav serve`: the explorer's JSON endpoint, and the page driven in a real headless Chromium as a person would use it.

The browser test needs Debian's chromium and chromium-driver (CI installs them; see .ci/run) and selenium (a dev
extra); without them it is skipped with the reason. Set UAV_SCREENSHOTS=DIR to keep its screenshots."""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from uav_cache.errors import UavError
from uav_eval.verbalizer import Verbalizer
from pipelines.serve import ServeConfig, bind, make_server

TEXT = "Number 7 says the river is here today."
Q = "Which thing is named?"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def servers(tiny_runs):
    """One explorer per tiny run on a free loopback port, serving in a thread."""
    out, running = {}, []
    for kind in ("tokens", "pooled"):
        srv, ex = make_server(ServeConfig(run=str(tiny_runs[kind]), port=0, references=2, max_new_tokens=4,
                                          token_new_tokens=3, max_question_tokens=24, read_timeout=1.0), quiet=True)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        running.append(srv)
        out[kind] = (f"http://127.0.0.1:{srv.server_address[1]}", ex)
    yield out
    for srv in running:
        srv.shutdown()
        srv.server_close()


def post(url: str, body, path: str = "/api/ask") -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_the_endpoint_answers_as_the_verbalizer_does_and_refuses_bad_input_in_one_line(servers, tiny_runs):
    url, ex = servers["tokens"]
    assert ex.cfg.host == "127.0.0.1"
    info = json.loads(urllib.request.urlopen(url + "/api/info", timeout=30).read())
    assert info["per_token"] and info["max_tokens"] == 40 and info["questions"] == [Q]
    assert info["per_token_note"] == ""  # the run trained on single tokens
    code, d = post(url, {"text": TEXT, "question": Q})
    assert code == 200
    fresh = Verbalizer.load(tiny_runs["tokens"], device="cpu", references=2).read(TEXT, Q, max_new_tokens=4)[0]
    assert (d["answer"], d["no_soft"], d["shuffled"]) == (fresh.answer, fresh.no_soft, fresh.shuffled)
    assert d["score"] == pytest.approx(fresh.score, abs=1e-4)
    code, s = post(url, {"text": TEXT, "question": Q}, "/api/tokens")
    assert code == 200 and s["n_tokens"] == d["n_tokens"] == len(s["tokens"])
    assert [t["position"] for t in s["tokens"]] == list(range(d["n_tokens"]))
    assert all(isinstance(t["score"], float) for t in s["tokens"]) and "river" in "".join(t["token"] for t in s["tokens"])
    for body, code_, match in (({"text": "  ", "question": Q}, 400, "the text is empty"),
                               ({"text": TEXT, "question": ""}, 400, "the question is empty"),
                               ({"text": " ".join([TEXT] * 12), "question": Q}, 400,
                                "tokens long; the run's donor reads at most 40"),
                               (b"{not json", 400, "not JSON"), (b"[1]", 400, "not a JSON object")):
        for path in ("/api/ask", "/api/tokens"):
            code, d = post(url, body, path)
            assert code == code_ and match in d["error"] and "\n" not in d["error"], d
    url, ex = servers["pooled"]
    info = json.loads(urllib.request.urlopen(url + "/api/info", timeout=30).read())
    assert not info["per_token"] and "pooled vectors only" in info["per_token_note"]
    code, d = post(url, {"text": TEXT, "question": Q})
    assert code == 200 and d["answer"] is not None and d["score"] is not None
    code, d = post(url, {"text": TEXT, "question": Q}, "/api/tokens")
    assert code == 400 and "reads pooled vectors only" in d["error"]
    with pytest.raises(UavError, match="not a uav run directory"):
        make_server(ServeConfig(run=str(Path(tiny_runs["tokens"]).parent / "nope"), port=0))


def raw(url: str, request: bytes, hold: float = 0.0) -> tuple[int, dict | str, float]:
    """Send ``request`` as the bytes it is (a malformed one included) over one connection, keep it open ``hold``
    seconds before reading, and return (status, JSON body or raw text, seconds until the answer)."""
    host, port = url.removeprefix("http://").split(":")
    t0 = time.perf_counter()
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(request)
        time.sleep(hold)
        resp = b""
        while chunk := sock.recv(1 << 16):
            resp += chunk
    head, _, body = resp.partition(b"\r\n\r\n")
    try:
        return int(head.split()[1]), json.loads(body), time.perf_counter() - t0
    except (ValueError, IndexError):
        return (int(head.split()[1]) if head else 0), resp.decode("latin-1"), time.perf_counter() - t0


def http(path: str, body: bytes, length: str | None = None, method: str = "POST") -> bytes:
    cl = str(len(body)) if length is None else length
    return (f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {cl}\r\n\r\n"
            .encode() + body)


GOOD = json.dumps({"text": TEXT, "question": Q}).encode()
MALFORMED = {  # what a client may send → the status and the start of the one line it gets back
    "not UTF-8": (http("/api/ask", b'{"text": "caf\xe9", "question": "q"}'), 400, "the request is not UTF-8"),
    "Content-Length abc": (http("/api/ask", GOOD, "abc"), 400, "Content-Length 'abc' is not a number of bytes"),
    "Content-Length -5": (http("/api/ask", GOOD, "-5"), 400, "Content-Length '-5' is not a number of bytes"),
    "no Content-Length": (b"POST /api/ask HTTP/1.1\r\nHost: x\r\n\r\n", 411, "the request has no Content-Length"),
    "deeply nested": (http("/api/ask", b"[" * 200_000 + b"]" * 200_000), 400, "the request's JSON nests too deeply"),
    "over max body": (http("/api/ask", b"{}", str(2 << 20)), 413, "the request is 2097152 bytes; this server takes"),
    "not JSON": (http("/api/tokens", b"{not json"), 400, "the request is not JSON"),
    "text a number": (http("/api/ask", b'{"text": 5, "question": "q"}'), 400, "the text is a JSON number, not a string"),
    "question a list": (http("/api/ask", json.dumps({"text": TEXT, "question": ["q"]}).encode()), 400,
                        "the question is a JSON array, not a string"),
    "long question": (http("/api/ask", json.dumps({"text": TEXT, "question": "Which thing? " * 1400}).encode()), 400,
                      "the question is "),
    "unknown endpoint": (http("/api/nope", GOOD), 404, "no endpoint /api/nope"),
}


def test_malformed_requests_get_one_json_line_and_never_a_traceback(servers, monkeypatch):
    """Every malformed request is answered 4xx with one line of JSON, fast, without the model lock (the server keeps
    answering others); a query string is ignored; a body shorter than its Content-Length is cut off at the read
    timeout (1 s here), freeing its thread."""
    url, ex = servers["tokens"]
    with ex.lock:  # another client's answer in progress: none of these waits for it, none does model work
        for name, (request, status, start) in MALFORMED.items():
            code, d, secs = raw(url, request)
            assert code == status and isinstance(d, dict) and d["error"].startswith(start), (name, code, d)
            assert "\n" not in d["error"] and "Traceback" not in d["error"] and secs < 5, (name, d, secs)
        code, d, secs = raw(url, http("/api/ask", GOOD, str(len(GOOD) + 100)), hold=0.2)
        assert code == 400 and d["error"].startswith("the request body did not arrive within 1 s") and secs < 5, d
        assert "tokens long; this server answers at most 24" in raw(url, MALFORMED["long question"][0])[1]["error"]
    assert raw(url, http("/api/ask?x=1&y", GOOD))[0] == 200
    assert raw(url, http("/api/info?x=1", b"", method="GET"))[0] == 200

    from uav_eval import verbalizer

    real = verbalizer.load

    def overflowing(spec, **kw):  # a donor whose block 2 output goes beyond fp16
        model, tok = real(spec, **kw)
        model.model.layers[2].register_forward_hook(lambda _m, _a, out: (out[0].fill_(1e5), *out[1:])
                                                    if isinstance(out, tuple) else out.fill_(1e5))
        return model, tok

    monkeypatch.setattr(verbalizer, "load", overflowing)
    for path in ("/api/ask", "/api/tokens"):
        code, d = post(url, {"text": TEXT, "question": Q}, path)
        assert code == 400 and d["error"].startswith("the donor's output at model.layers.2, position 0"), d
        assert "exceeds ±65504" in d["error"]
    monkeypatch.setattr(verbalizer, "load", real)
    assert post(url, {"text": TEXT, "question": Q})[0] == 200  # still serving


def test_flags_are_checked_before_anything_loads(tiny_runs, monkeypatch):
    """A bad flag costs no loading (the run is loaded only after every flag is checked and the address bound), and
    each fix names a value that is accepted."""
    def loads(*a, **kw):
        raise AssertionError("the run was loaded")

    monkeypatch.setattr(Verbalizer, "load", loads)
    run = str(tiny_runs["pooled"])
    for kw, problem in (({"port": 70000}, "--port 70000 is not a port"), ({"port": -1}, "--port -1 is not a port"),
                        ({"host": " "}, "--host is empty"), ({"max_question_tokens": 0}, "--max-question-tokens must"),
                        ({"max_new_tokens": 0}, "--max-new-tokens must"), ({"read_timeout": 0}, "--read-timeout must"),
                        ({"max_body": -1}, "--max-body must"), ({"device": "cuda:7"}, "device 'cuda:7'"),
                        ({"device": "gpu"}, "unknown device 'gpu'"), ({"host": "999.1.1.1"}, "cannot listen on --host"),
                        ({"host": "192.0.2.1"}, "cannot listen on 192.0.2.1")):
        with pytest.raises(UavError, match=problem) as e:
            make_server(ServeConfig(run=run, **{"port": 0, **kw}))
        if "host" in kw:  # the fix names a host that is accepted
            assert "--host 127.0.0.1" in e.value.fix
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(UavError, match="Address already in use") as e:
            make_server(ServeConfig(run=run, port=taken.getsockname()[1]))
        assert "--port 0" in e.value.fix
    for host in ("127.0.0.1", "0.0.0.0"):
        ServeConfig(run=run, host=host, port=0).check()
        srv = bind(ServeConfig(run=run, host=host, port=0))
        srv.server_close()


def test_many_clients_with_malformed_requests_among_them_all_get_answers(tiny_runs):
    """8 clients, 200 requests, a third of them malformed (a body that never arrives among them): every well-formed
    request is answered 200, no request gets a 5xx, and no handler thread is left once the clients are done."""
    from concurrent.futures import ThreadPoolExecutor

    srv, _ = make_server(ServeConfig(run=str(tiny_runs["pooled"]), port=0, references=2, max_new_tokens=2,
                                     max_question_tokens=24, read_timeout=0.5), quiet=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}"
    bad = [m[0] for m in MALFORMED.values()] + [http("/api/ask", GOOD, str(len(GOOD) + 50))]
    asks = [http("/api/ask", GOOD), http("/api/ask?from=page", json.dumps({"text": "The river.", "question": Q}).encode())]
    plan = []
    for i in range(200):
        if i % 3 == 0:
            plan.append(("bad", bad[(i // 3) % len(bad)]))
        elif i % 10 == 1:
            plan.append(("ask", asks[i % 2]))
        else:
            plan.append(("info", http("/api/info", b"", method="GET")))
    try:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda kr: (kr[0], raw(url, kr[1])), plan))
        secs = time.perf_counter() - t0
        assert len(got) == 200 and not [c for _, (c, _, _) in got if c >= 500 or c == 0]
        assert all(c == 200 for kind, (c, _, _) in got if kind != "bad")
        assert all(400 <= c < 500 and "\n" not in d["error"] for kind, (c, d, _) in got if kind == "bad")
        assert sum(kind == "ask" for kind, _ in got) == sum(kind == "ask" for kind, _ in plan) > 10 and secs < 60
        deadline = time.monotonic() + 5
        while [t for t in threading.enumerate() if "process_request_thread" in t.name] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [t for t in threading.enumerate() if "process_request_thread" in t.name]
        assert post(url, {"text": TEXT, "question": Q})[0] == 200
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    if missing:
        pytest.skip(f"no headless browser: {', '.join(missing)} not installed (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium')}", "--window-size=1200,900"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    yield driver
    driver.quit()


def shot(driver, tmp_path: Path, name: str) -> Path:
    folder = Path(os.environ.get("UAV_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(folder / name))
    return folder / name


def test_a_person_asks_on_the_page_and_reads_the_answer(servers, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, _ = servers["tokens"]
    expected = post(url, {"text": TEXT, "question": Q})[1]
    strip = post(url, {"text": TEXT, "question": Q}, "/api/tokens")[1]["tokens"]
    d = browser
    d.get(url)
    wait = WebDriverWait(d, 60)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#chips button"))
    assert "reads mean read-out of model.layers.2 + token vectors of model.layers.1" in d.find_element(By.ID, "run").text
    d.find_element(By.ID, "ask").click()  # an empty text: refused in one line, no result shown
    wait.until(lambda d: d.find_element(By.ID, "error").text)
    assert d.find_element(By.ID, "error").text.startswith("the text is empty")
    assert not d.find_element(By.ID, "result").is_displayed()
    d.find_element(By.ID, "text").send_keys(TEXT)
    d.find_element(By.ID, "question").clear()
    d.find_element(By.CSS_SELECTOR, "#chips button").click()  # pick the run's own question
    assert d.find_element(By.ID, "question").get_attribute("value") == Q
    d.find_element(By.ID, "ask").click()
    wait.until(lambda d: d.find_element(By.ID, "result").is_displayed() and d.find_element(By.ID, "ask").is_enabled())
    assert d.find_element(By.ID, "error").text == ""
    assert d.find_element(By.ID, "answer").text == (expected["answer"] or "(empty)")
    assert d.find_element(By.ID, "no-soft").text == (expected["no_soft"] or "(empty)")
    assert d.find_element(By.ID, "score").text == f"{expected['score']:+.2f}"
    cells = d.find_elements(By.CSS_SELECTOR, "#strip .tok")
    assert len(cells) == expected["n_tokens"]
    assert [c.find_element(By.CLASS_NAME, "a").text for c in cells] == [t["answer"] or "–" for t in strip]
    assert "strip in" in d.find_element(By.ID, "status").text
    path = shot(d, tmp_path, "serve-tokens.png")
    assert path.stat().st_size > 10_000

    url, _ = servers["pooled"]  # a pooled-only run: the page says so, with no strip
    d.get(url)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#chips button"))
    assert not d.find_element(By.ID, "per-token").is_enabled()
    d.find_element(By.ID, "text").send_keys(TEXT)
    d.find_element(By.ID, "ask").click()
    wait.until(lambda d: d.find_element(By.ID, "result").is_displayed() and d.find_element(By.ID, "ask").is_enabled())
    assert "reads pooled vectors only" in d.find_element(By.ID, "note").text
    assert not d.find_elements(By.CSS_SELECTOR, "#strip .tok")
    shot(d, tmp_path, "serve-pooled.png")


def test_uav_serve_listens_on_loopback_and_refuses_an_unknown_run(tiny_runs, tmp_path):
    """The console script: an unknown run or a bad flag is one line and exit 2, before anything loads; a run is served
    on 127.0.0.1, with no warning, until Ctrl-C."""
    import signal
    import subprocess
    import sys

    uav = Path(sys.executable).parent / "uav"
    if not uav.exists():
        pytest.skip(f"no console script at {uav}")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    for argv, problem in (([str(tmp_path / "nope")], "not a uav run directory"),
                          ([str(tiny_runs["pooled"]), "--port", "70000"], "--port 70000 is not a port")):
        r = subprocess.run([str(uav), "serve", *argv], env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and problem in r.stderr, r.stderr
    p = subprocess.Popen([str(uav), "serve", str(tiny_runs["pooled"]), "--port", "0"], env=env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = p.stdout.readline()
        assert line.startswith("uav serve: ") and " on http://127.0.0.1:" in line, (line, p.stderr.read())
        url = line.split(" on ", 1)[1].split()[0].rstrip("/")
        assert json.loads(urllib.request.urlopen(url + "/api/info", timeout=30).read())["per_token"] is False
        assert b"uav explorer" in urllib.request.urlopen(url + "/", timeout=30).read()
    finally:
        p.send_signal(signal.SIGINT)
        assert p.wait(timeout=60) == 130
    assert "warning" not in p.stderr.read()


def test_uav_serve_beyond_localhost_warns_and_ctrl_c_during_an_answer_exits_130(tiny_runs):
    """--host 0.0.0.0 says the page has no authentication; Ctrl-C while answers are being computed ends the process
    with exit 130 and one line (not an abort from a thread still inside torch)."""
    import signal
    import subprocess
    import sys

    uav = Path(sys.executable).parent / "uav"
    if not uav.exists():
        pytest.skip(f"no console script at {uav}")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([str(uav), "serve", str(tiny_runs["tokens"]), "--host", "0.0.0.0", "--port", "0"], env=env,
                         text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = p.stdout.readline()
        port = int(line.split(" on http://", 1)[1].split("/")[0].rsplit(":", 1)[1])
        url = f"http://127.0.0.1:{port}"
        assert json.loads(urllib.request.urlopen(url + "/api/info", timeout=30).read())["per_token"]
        done = []

        def strips():  # asks again and again, so the model is always busy when the signal comes
            try:
                while True:
                    post(url, {"text": TEXT, "question": Q}, "/api/tokens")
                    done.append(1)
            except OSError:  # the server stopped under it: what this test does
                pass

        busy = [threading.Thread(target=strips, daemon=True) for _ in range(3)]
        for t in busy:
            t.start()
        deadline = time.monotonic() + 120
        while not done and time.monotonic() < deadline:  # one strip answered: the others are queued or computing
            time.sleep(0.05)
        assert done and all(t.is_alive() for t in busy)
    finally:
        p.send_signal(signal.SIGINT)
        code = p.wait(timeout=60)
    err = [ln for ln in p.stderr.read().splitlines() if ln.startswith(("uav", "terminate"))]
    assert err[0].startswith("uav serve: warning: listening on 0.0.0.0, beyond this machine: the page has no "
                             "authentication"), err
    # a handler thread may log its request in the instant before the exit, so the line is found, not taken as last
    said = [ln for ln in err if not ln.startswith("uav serve: ")]
    assert code == 130 and said == ["uav: interrupted"], (code, err)


def test_a_context_is_read_first_and_the_run_shown_only_the_text_after_it(servers, tiny_runs):
    """The page's context box: the donor reads context + text, the run sees the text's positions only, as
    Verbalizer.read(context=) shows them; the strip covers those positions alone."""
    url, _ = servers["tokens"]
    body = {"context": "Number 7 says the river is here.", "text": "It came up at dinner.", "question": Q}
    code, d = post(url, body)
    assert code == 200 and d["shown"] < d["n_tokens"]
    fresh = Verbalizer.load(tiny_runs["tokens"], device="cpu", references=2)
    want = fresh.read(body["text"], Q, context=body["context"], max_new_tokens=4)[0]
    assert d["answer"] == want.answer
    code, s = post(url, body, "/api/tokens")
    assert code == 200 and len(s["tokens"]) == d["shown"] and s["tokens"][0]["position"] == d["n_tokens"] - d["shown"]
    code, bad = post(url, {**body, "context": 3})
    assert code == 400 and "context is a JSON number" in bad["error"]
