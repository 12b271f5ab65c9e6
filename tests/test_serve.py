"""`uav serve`: the explorer's JSON endpoint, and the page driven in a real headless Chromium as a person would use it.

The browser test needs Debian's chromium and chromium-driver (CI installs them; see .ci/run) and selenium (a dev
extra); without them it is skipped with the reason. Set UAV_SCREENSHOTS=DIR to keep its screenshots."""

from __future__ import annotations

import json
import os
import shutil
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from uav_cache.errors import UavError
from uav_eval.verbalizer import Verbalizer
from pipelines.serve import ServeConfig, make_server

TEXT = "Number 7 says the river is here today."
Q = "Which thing is named?"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def servers(tiny_runs):
    """One explorer per tiny run on a free loopback port, serving in a thread."""
    out, running = {}, []
    for kind in ("tokens", "pooled"):
        srv, ex = make_server(ServeConfig(run=str(tiny_runs[kind]), port=0, references=2, max_new_tokens=4,
                                          token_new_tokens=3), quiet=True)
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
    """The console script: an unknown run is one line and exit 2; a run is served on 127.0.0.1 until Ctrl-C."""
    import signal
    import subprocess
    import sys

    uav = Path(sys.executable).parent / "uav"
    if not uav.exists():
        pytest.skip(f"no console script at {uav}")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    r = subprocess.run([str(uav), "serve", str(tmp_path / "nope")], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "not a uav run directory" in r.stderr, r.stderr
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
