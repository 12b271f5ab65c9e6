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
    POST /api/ask     {"text", "question", "context"?} → {"answer", "no_soft", "shuffled", "score", "n_tokens", "seconds"}
    POST /api/tokens  {"text", "question", "context"?} → {"tokens": [{"position", "token", "answer", "score"}, …], …}

A ``context`` is read by the donor before the text, and the run is shown the text's positions only (a view, with its
read-out pooled over them): what the answer names that the text does not say, the donor carried forward.

Whatever a client sends, it gets JSON back: a request the server cannot take is answered 400 (413 for a body over
``max_body``) with one line saying why, and a bug is answered 500 with one line while the traceback stays on the
console. A client that stops sending mid-request is cut off after ``read_timeout`` seconds, so it cannot hold a thread.
Every flag is checked, and the address bound, before the run is loaded.

The page asks for the answer first (seconds on a CPU) and the per-token strip after it (one answer per token: many
times longer), so the answer never waits for the strip; each request is its own read.
"""

from __future__ import annotations

import copy
import errno
import ipaddress
import json
import os
import socket
import sys
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from uav_cache.errors import UavError

PAGE = Path(__file__).parent / "static" / "explorer.html"
DEFAULT_QUESTIONS = ("What is the topic of this text?", "What is the sentiment of this text?",
                     "What is this text about?")
HOST_FIX = "use --host 127.0.0.1 (this machine only) or --host 0.0.0.0 (every network interface)"


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
    # the longest question answered, in decoder tokens: an answer holds the model for every other client, and its
    # cost grows with the prompt's length
    max_question_tokens: int = 128
    max_body: int = 1 << 20  # bytes of one request: far above any text a donor's token cap lets through
    read_timeout: float = 10.0  # seconds a client has to send its request; a stalled one is answered 400, its thread freed

    def check(self) -> None:
        """Refuse a bad flag with what to pass instead, before anything is loaded or bound."""
        from uav_cache.device import pick_device

        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise UavError(f"--port {self.port} is not a port", "use 0 … 65535 (0: any free one), e.g. --port 8000")
        if not isinstance(self.host, str) or not self.host.strip():
            raise UavError("--host is empty", HOST_FIX)
        for name in ("max_new_tokens", "token_new_tokens", "max_question_tokens", "max_body"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UavError(f"--{name.replace('_', '-')} must be an integer ≥ 1, got {v!r}",
                               f"leave it out (default {ServeConfig.__dataclass_fields__[name].default})")
        if isinstance(self.references, bool) or not isinstance(self.references, int) or self.references < 0:
            raise UavError(f"--references must be an integer ≥ 0, got {self.references!r}", "e.g. 8")
        if isinstance(self.read_timeout, bool) or not isinstance(self.read_timeout, (int, float)) \
                or not 0 < self.read_timeout < float("inf"):
            raise UavError(f"--read-timeout must be a number of seconds > 0, got {self.read_timeout!r}", "e.g. 10")
        pick_device(self.device)  # a device torch does not know, or this machine lacks, is named now
        if self.donor is not None:
            from uav_cache.models import resolve

            resolve(self.donor)


def loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (a loopback address, or a name that resolves to one)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(a[4][0]).is_loopback for a in socket.getaddrinfo(host, None))
        except (OSError, ValueError):
            return False


class Refused(Exception):
    """A request the server does not take: the HTTP status and the one line the client reads."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


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
        # the question's length is checked outside the model lock with a tokenizer of its own (a tokenizer is not
        # safe to share between threads), so a refusal never waits behind another client's answer
        self._tok, self._tok_lock = copy.deepcopy(self.v.lr.tok), threading.Lock()

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

    def _check(self, body: dict) -> tuple[str, str, str | None]:
        """The text, question and context (optional) of a request, refused (before any model work) when missing, not
        strings, empty, or a question over ``max_question_tokens``."""
        text, question, context = body.get("text"), body.get("question"), body.get("context")
        if context is not None and not isinstance(context, str):
            raise UavError(f"the context is a JSON {_json_type(context)}, not a string",
                           "send \"context\" as a string, or leave it out")
        context = context if context and context.strip() else None
        for name, v, fix in (("text", text, "paste a text for the donor to read"),
                             ("question", question, "pick a question or type one")):
            if v is not None and not isinstance(v, str):
                raise UavError(f"the {name} is a JSON {_json_type(v)}, not a string", f"send \"{name}\" as a string")
            if v is None or not v.strip():
                raise UavError(f"the {name} is empty", fix)
        with self._tok_lock:
            n = len(self._tok(question, add_special_tokens=False)["input_ids"])
        if n > self.cfg.max_question_tokens:
            raise UavError(f"the question is {n} tokens long; this server answers at most {self.cfg.max_question_tokens}",
                           "ask a shorter question (or start uav serve with a larger --max-question-tokens)")
        return text, question, context

    def _read(self, text: str, context: str | None):
        """The donor's activations on the text, after the context where there is one (read, freed); a text over the
        donor's token cap is refused."""
        return self.v.read_acts(text, donor=self.cfg.donor, cut=False, context=context)

    def ask(self, body: dict) -> dict:
        """One question about one text: the answer with its controls and score."""
        t0 = time.perf_counter()
        text, question, context = self._check(body)
        with self.lock:
            acts = self._read(text, context)
            a = self.v.ask_acts(acts, [question], max_new_tokens=self.cfg.max_new_tokens)[0]
            n = len(self.v.last_labels)
        return {"question": question, "answer": a.answer, "no_soft": a.no_soft, "shuffled": a.shuffled,
                "score": a.score, "n_tokens": n, "shown": len(acts.positions) if acts.positions is not None else n,
                "seconds": round(time.perf_counter() - t0, 2)}

    def tokens(self, body: dict) -> dict:
        """The per-token strip: the question about each token's vectors alone, with its score."""
        if not self.v.spec.tokens:
            raise UavError("this run reads pooled vectors only: it has no answer per token",
                           "ask about the whole text")
        t0 = time.perf_counter()
        text, question, context = self._check(body)
        with self.lock:
            acts = self._read(text, context)
            strip = [{"position": t.position, "token": t.token, "answer": t.answer, "score": t.score}
                     for t in self.v.per_token_acts(acts, question, labels=self.v.last_labels,
                                                    max_new_tokens=self.cfg.token_new_tokens)]
        return {"question": question, "tokens": strip, "n_tokens": len(strip),
                "per_token_note": self._info["per_token_note"], "seconds": round(time.perf_counter() - t0, 2)}


def _json_type(v) -> str:
    return {bool: "boolean", int: "number", float: "number", list: "array", dict: "object"}.get(type(v), type(v).__name__)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def handler(explorer: Explorer, quiet: bool = False) -> type[BaseHTTPRequestHandler]:
    cfg = explorer.cfg

    class Handler(BaseHTTPRequestHandler):
        server_version = "uav-serve"
        timeout = cfg.read_timeout  # the socket's: a client that stops sending mid-request frees its thread

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

        def _answer(self, work) -> None:
            """Send ``work()``'s JSON, or one line saying why not: nothing a client sends gets a traceback back."""
            try:
                self._json(200, work())
            except Refused as e:
                self.close_connection = True  # the rest of a refused request is not read: the connection ends here
                self._json(e.status, {"error": _one_line(e.message)})
            except UavError as e:  # the page shows it as one line
                self._json(400, {"error": _one_line(e.problem + (f" ({e.fix})" if e.fix else ""))})
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client left: nobody to answer
            except Exception as e:  # noqa: BLE001 - a bug: the console keeps the traceback, the client one line
                traceback.print_exc()
                self._json(500, {"error": f"internal error ({e.__class__.__name__}); the server's console has the "
                                          "details"})

        def _body(self) -> dict:
            """The request's JSON object, read within the read timeout and refused with the reason otherwise."""
            given = self.headers.get("Content-Length")
            if given is None or not given.strip().isdigit():
                raise Refused(411 if given is None else 400, "the request has no Content-Length header"
                              if given is None else f"Content-Length {given.strip()[:40]!r} is not a number of bytes")
            n = int(given)
            if n > cfg.max_body:
                raise Refused(413, f"the request is {n} bytes; this server takes at most {cfg.max_body}")
            raw = self._read_body(n)
            try:
                body = json.loads(raw.decode("utf-8")) if raw.strip() else {}
            except UnicodeDecodeError as e:
                raise Refused(400, f"the request is not UTF-8 text (byte 0x{raw[e.start]:02x} at {e.start})") from None
            except json.JSONDecodeError as e:
                raise Refused(400, f"the request is not JSON: {e.msg} (at {e.pos})") from None
            except RecursionError:
                raise Refused(400, "the request's JSON nests too deeply") from None
            if not isinstance(body, dict):
                raise Refused(400, 'the request is not a JSON object: send {"text": …, "question": …}')
            return body

        def _read_body(self, n: int) -> bytes:
            """``n`` bytes of body, all within ``read_timeout`` seconds (a deadline for the whole body, so a client
            that trickles bytes cannot hold the thread either)."""
            deadline, parts, got = time.monotonic() + cfg.read_timeout, [], 0
            try:
                while got < n:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError
                    self.connection.settimeout(left)
                    part = self.rfile.read1(min(n - got, 1 << 16))
                    if not part:
                        raise Refused(400, f"the request body ended after {got} of the {n} bytes its Content-Length "
                                           "says")
                    parts.append(part)
                    got += len(part)
            except (TimeoutError, socket.timeout):
                raise Refused(400, f"the request body did not arrive within {cfg.read_timeout:g} s ({got} of the {n} "
                                   "bytes its Content-Length says)") from None
            finally:
                self.connection.settimeout(cfg.read_timeout)
            return b"".join(parts)

        def do_GET(self):  # noqa: N802 - http.server's naming
            path = urlsplit(self.path).path
            if path in ("/", "/index.html"):
                self._answer_page()
            elif path == "/api/info":
                self._answer(explorer.info)
            else:
                self._json(404, {"error": f"no page {_one_line(path)[:200]}"})

        def _answer_page(self) -> None:
            try:
                self._send(200, PAGE.read_bytes(), "text/html; charset=utf-8")
            except OSError:
                traceback.print_exc()
                self._json(500, {"error": "internal error (the page is missing); the server's console has the details"})

        def do_POST(self):  # noqa: N802
            path = urlsplit(self.path).path  # a query string is not part of the endpoint
            answer = {"/api/ask": explorer.ask, "/api/tokens": explorer.tokens}.get(path)
            if answer is None:
                self.close_connection = True
                self._json(404, {"error": f"no endpoint {_one_line(path)[:200]}"})
                return
            self._answer(lambda: answer(self._body()))

    return Handler


def make_server(cfg: ServeConfig, quiet: bool = False) -> tuple[ThreadingHTTPServer, Explorer]:
    """The explorer (run loaded) and a server bound to cfg.host:cfg.port (port 0: a free one); not yet serving. The
    flags are checked, the run's record read and the address bound before the run is loaded, so a mistake in any
    costs no loading."""
    from uav_train.run import RunInfo

    cfg.check()
    RunInfo.open(cfg.run)  # an unknown or unfinished run is refused before anything loads
    server = bind(cfg)
    try:
        explorer = Explorer(cfg)
    except BaseException:
        server.server_close()
        raise
    server.RequestHandlerClass = handler(explorer, quiet)
    return server, explorer


def bind(cfg: ServeConfig) -> ThreadingHTTPServer:
    """A server listening on cfg.host:cfg.port that answers nothing until its handler is set (the run loaded)."""
    try:
        server = ThreadingHTTPServer((cfg.host, cfg.port), BaseHTTPRequestHandler)
    except socket.gaierror as e:
        raise UavError(f"cannot listen on --host {cfg.host}: not a name or address this machine resolves "
                       f"({e.strerror or e})", HOST_FIX) from e
    except OverflowError as e:  # what socket says of a port out of range (checked above; kept for a direct caller)
        raise UavError(f"--port {cfg.port} is not a port", "use 0 … 65535 (0: any free one)") from e
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            fix = "another program listens there: pick another --port, or --port 0 for any free one"
        elif e.errno in (errno.EACCES, errno.EPERM):
            fix = "ports below 1024 need privileges: use --port 8000 (or any from 1024 up), or --port 0"
        elif e.errno == errno.EADDRNOTAVAIL:
            fix = f"{cfg.host} is not an address of this machine: " + HOST_FIX
        else:
            fix = HOST_FIX + "; and a free --port (0: any)"
        raise UavError(f"cannot listen on {cfg.host}:{cfg.port}: {e.strerror or e}", fix) from e
    server.daemon_threads = True
    return server


def serve(cfg: ServeConfig) -> None:
    """Load the run, print the page's address, answer until Ctrl-C."""
    server, _ = make_server(cfg)
    host, port = server.server_address[:2]
    if not loopback(cfg.host):
        print(f"uav serve: warning: listening on {cfg.host}, beyond this machine: the page has no authentication, so "
              f"anyone who can reach port {port} can use it and this machine's models (--host 127.0.0.1 keeps it "
              "local)", file=sys.stderr, flush=True)
    print(f"uav serve: {cfg.run} on http://{host}:{port}/ (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.server_close()
        if threading.active_count() > 1:
            # an answer still running in a handler thread is inside torch: the interpreter's shutdown would abort
            # under it (exit 134), so the process ends here, with the line every interrupted uav command prints
            sys.stdout.flush()
            sys.stderr.flush()
            os.write(2, b"uav: interrupted\n")  # straight to the descriptor: no Python buffer a thread may hold
            os._exit(130)
        raise
    finally:
        server.server_close()
