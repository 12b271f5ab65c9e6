"""`uav serve RUN`: a local explorer page over one run, loaded once.

Paste a text, pick or type a question: the donor reads the text (loaded, read, freed: donor and decoder are never in
memory together for longer than a read), and the page shows the run's answer beside its controls (no activation,
another text's activation) with the score; for runs that read token vectors, a strip of one answer per token
coloured by its score.

The stack is Python's own ``http.server`` (a ThreadingHTTPServer), one JSON endpoint and one static page
(``pipelines/static/explorer.html``, no build step, no framework): nothing to install. The page is for one person on
this machine, every answer holds one lock around the models, so an ASGI stack (starlette + uvicorn) would add
packages and an event loop for nothing it uses.

    GET  /            the page
    GET  /api/info    the run: donor, decoder, what it reads, its token cap, suggested questions
    POST /api/ask     {"text", "question"} → {"answer", "no_soft", "shuffled", "score", "n_tokens", "seconds"}
    POST /api/tokens  {"text", "question"} → {"tokens": [{"position", "token", "answer", "score"}, …], …}

The page asks for the answer first (seconds on a CPU) and the per-token strip after it (one answer per token: many
times longer), so the answer never waits for the strip; each request is its own read.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from uav_cache.errors import UavError

PAGE = Path(__file__).parent / "static" / "explorer.html"
DEFAULT_QUESTIONS = ("What is the topic of this text?", "What is the sentiment of this text?",
                     "What is this text about?")
MAX_BODY = 1 << 20  # bytes of one request: far above any text a donor's cap lets through


@dataclass
class ServeConfig:
    """What `uav serve` takes; every field is a CLI option."""

    run: str  # a finished run folder
    host: str = "127.0.0.1"  # the address to listen on: loopback, so only this machine sees the page
    port: int = 8000  # the port (0: any free one)
    device: str = "cpu"  # where the decoder (and each read's donor) runs
    donor: str | None = None  # the donor (name or folder) when the run's own is not found here
    max_new_tokens: int = 24  # answer length cap for the whole-text answer and its controls
    token_new_tokens: int = 8  # answer length cap in the per-token strip (one answer per token: keep it short)
    references: int = 8  # texts of the run's store behind the shuffled control and the score


class Explorer:
    """The loaded run and what the page asks of it, one request at a time (CPU models gain nothing from two)."""

    def __init__(self, cfg: ServeConfig):
        from uav_eval.verbalizer import Verbalizer
        from uav_train.run import RunInfo

        RunInfo.open(cfg.run)  # an unknown or unfinished run is refused before anything loads
        self.cfg = cfg
        self.v = Verbalizer.load(cfg.run, device=cfg.device, references=cfg.references)
        self.lock = threading.Lock()
        self.v.references()  # the shuffled control's texts, read from the run's store now rather than on the first ask
        self._info = self._describe()

    def _describe(self) -> dict:
        v, rec = self.v, self.v.rec
        spec, src = v.spec, rec.stores[0]
        trained_single = any(f in ("token", "window") and w > 0 for f, w in spec.forms)
        if not spec.tokens:
            note = "This run reads pooled vectors only (one read-out per text): it has no answer per token."
        elif not trained_single:
            note = ("This run was trained on every token of whole texts, never on one token alone: the per-token "
                    "answers are outside its training; read them with their scores.")
        else:
            note = ""
        return {"run": str(Path(self.cfg.run).resolve().name), "donor": rec.donor, "decoder": rec.decoder,
                "adapter": rec.adapter_kind,
                "pooled": f"{spec.readout} read-out of {', '.join(spec.layers)}" if spec.pooled else None,
                "tokens": f"token vectors of {', '.join(spec.token_layers)}" if spec.tokens else None,
                "per_token": spec.tokens, "per_token_note": note,
                "max_tokens": src.max_length, "questions": self._questions()}

    def _questions(self, n: int = 8) -> list[str]:
        """The questions the run's store asks most often (what the run was trained to answer), else a few defaults."""
        store, sources = self.v.store(), set(self.v.rec.train.get("sources") or ())
        counts = Counter()
        try:
            for e, split in zip(store.examples(), store.column("split")) if store else ():
                if split == "train" and (not sources or e.get("source") in sources):
                    counts.update(qa["question"] for qa in e.get("qa") or [])
        except (UavError, OSError, ValueError, KeyError):
            pass
        return [q for q, _ in counts.most_common(n)] or list(DEFAULT_QUESTIONS)

    def info(self) -> dict:
        return self._info

    def _read(self, body: dict):
        """The text and question of a request, checked, and the donor's activations on the text (read, freed)."""
        text, question = body.get("text"), body.get("question")
        if not isinstance(text, str) or not text.strip():
            raise UavError("the text is empty", "paste a text for the donor to read")
        if not isinstance(question, str) or not question.strip():
            raise UavError("the question is empty", "pick a question or type one")
        return self.v.read_acts(text, donor=self.cfg.donor, cut=False), question

    def ask(self, body: dict) -> dict:
        """One question about one text: the answer with its controls and score."""
        t0 = time.perf_counter()
        with self.lock:
            acts, question = self._read(body)
            a = self.v.ask_acts(acts, [question], max_new_tokens=self.cfg.max_new_tokens)[0]
            n = len(self.v.last_labels)
        return {"question": question, "answer": a.answer, "no_soft": a.no_soft, "shuffled": a.shuffled,
                "score": a.score, "n_tokens": n, "seconds": round(time.perf_counter() - t0, 2)}

    def tokens(self, body: dict) -> dict:
        """The per-token strip: the question about each token's vectors alone, with its score."""
        if not self.v.spec.tokens:
            raise UavError("this run reads pooled vectors only: it has no answer per token",
                           "ask about the whole text")
        t0 = time.perf_counter()
        with self.lock:
            acts, question = self._read(body)
            strip = [{"position": t.position, "token": t.token, "answer": t.answer, "score": t.score}
                     for t in self.v.per_token_acts(acts, question, labels=self.v.last_labels,
                                                    max_new_tokens=self.cfg.token_new_tokens)]
        return {"question": question, "tokens": strip, "n_tokens": len(strip),
                "per_token_note": self._info["per_token_note"], "seconds": round(time.perf_counter() - t0, 2)}


def handler(explorer: Explorer, quiet: bool = False) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "uav-serve"

        def log_message(self, fmt, *args):
            if not quiet:
                sys.stderr.write(f"uav serve: {self.address_string()} {fmt % args}\n")

        def _send(self, code: int, body: bytes, kind: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, code: int, obj: dict) -> None:
            self._send(code, json.dumps(obj, ensure_ascii=False).encode(), "application/json; charset=utf-8")

        def do_GET(self):  # noqa: N802 - http.server's naming
            path = self.path.split("?", 1)[0]
            if path in ("/", "/index.html"):
                self._send(200, PAGE.read_bytes(), "text/html; charset=utf-8")
            elif path == "/api/info":
                self._json(200, explorer.info())
            else:
                self._json(404, {"error": f"no page {path}"})

        def do_POST(self):  # noqa: N802
            answer = {"/api/ask": explorer.ask, "/api/tokens": explorer.tokens}.get(self.path)
            if answer is None:
                self._json(404, {"error": f"no endpoint {self.path}"})
                return
            try:
                n = int(self.headers.get("Content-Length") or 0)
                if n > MAX_BODY:
                    raise UavError(f"the request is {n} bytes", f"send at most {MAX_BODY} bytes")
                body = json.loads(self.rfile.read(n) or b"{}")
                if not isinstance(body, dict):
                    raise UavError("the request is not a JSON object", "send {\"text\": …, \"question\": …}")
                self._json(200, answer(body))
            except UavError as e:  # the page shows it as one line
                self._json(400, {"error": f"{e.problem}" + (f" ({e.fix})" if e.fix else "")})
            except json.JSONDecodeError as e:
                self._json(400, {"error": f"the request is not JSON: {e.msg}"})
            except Exception as e:  # noqa: BLE001 - a bug: the page says so, the console keeps the traceback
                traceback.print_exc()
                self._json(500, {"error": f"internal error: {e.__class__.__name__}: {e}"})

    return Handler


def make_server(cfg: ServeConfig, quiet: bool = False) -> tuple[ThreadingHTTPServer, Explorer]:
    """The explorer (run loaded) and a server bound to cfg.host:cfg.port (port 0: a free one); not yet serving."""
    explorer = Explorer(cfg)
    try:
        server = ThreadingHTTPServer((cfg.host, cfg.port), handler(explorer, quiet))
    except OSError as e:
        raise UavError(f"cannot listen on {cfg.host}:{cfg.port}: {e.strerror or e}",
                       "pick another --port (or --port 0 for any free one)") from e
    server.daemon_threads = True
    return server, explorer


def serve(cfg: ServeConfig) -> None:
    """Load the run, print the page's address, answer until Ctrl-C."""
    server, _ = make_server(cfg)
    host, port = server.server_address[:2]
    print(f"uav serve: {cfg.run} on http://{host}:{port}/ (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
