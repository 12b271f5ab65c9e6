"""Assertions shared by test modules (conftest holds fixtures; this holds plain functions)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file


def assert_same_tensors(a: Path, b: Path) -> None:
    ta, tb = load_file(str(a)), load_file(str(b))
    assert ta.keys() == tb.keys() and ta
    for k in ta:
        assert torch.equal(ta[k], tb[k]), f"{k} differs between {a} and {b}"


def assert_same_run(ref: Path, run: Path) -> None:
    """A resumed run ends exactly like the uninterrupted one: adapters, LoRA, and every log line."""
    assert json.loads((run / "config.json").read_text())["status"] == "complete"
    for f in ("adapter.safetensors", "stage1/adapter.safetensors", "lora/adapter_model.safetensors"):
        if (ref / f).exists() or (run / f).exists() or f == "adapter.safetensors":  # a stage-2-only run has no stage1/
            assert_same_tensors(ref / f, run / f)

    def rows(p: Path) -> list[dict]:
        return [{k: v for k, v in json.loads(x).items() if k != "items_per_s"}
                for x in (p / "metrics.jsonl").read_text().splitlines() if x.strip()]

    assert rows(run) == rows(ref)  # no duplicated or missing log lines either


def serve(root: Path, ranges: bool = True):
    """A static web server over ``root`` on loopback, in a thread: ``ranges`` honours HTTP Range requests (as nginx,
    Caddy or object storage do); without, it is Python's http.server, which answers every request with the whole
    file. A context manager yielding the base URL; the server stops at its end."""
    import contextlib
    import functools
    import http.server
    import os
    import re
    import threading

    class Ranged(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # quiet tests
            pass

        def send_head(self):
            spec = self.headers.get("Range")
            path = self.translate_path(self.path)
            if not spec or os.path.isdir(path):
                return super().send_head()
            try:
                f = open(path, "rb")
            except OSError:
                self.send_error(404)
                return None
            size = os.fstat(f.fileno()).st_size
            m = re.fullmatch(r"bytes=(\d*)-(\d*)", spec.strip())
            if not m or (m[1] == "" and m[2] == ""):
                f.close()
                self.send_error(416)
                return None
            if m[1] == "":  # a suffix: the last N bytes (how zarr reads a shard's index)
                start, end = max(size - int(m[2]), 0), size - 1
            else:
                start, end = int(m[1]), min(int(m[2]) if m[2] else size - 1, size - 1)
            if start >= size or start > end:
                f.close()
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.end_headers()
                return None
            self.send_response(206)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.send_header("Content-Length", str(end - start + 1))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            f.seek(start)
            self.range_left = end - start + 1
            return f

        def copyfile(self, source, outputfile):
            left = getattr(self, "range_left", None)
            if left is None:
                return super().copyfile(source, outputfile)
            outputfile.write(source.read(left))

    class Plain(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    @contextlib.contextmanager
    def running():
        handler = functools.partial(Ranged if ranges else Plain, directory=str(root))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        t = threading.Thread(target=server.serve_forever, daemon=True)
        t.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}"
        finally:
            server.shutdown()
            server.server_close()
            t.join()

    return running()


def run_uav(argv: list[str], capsys) -> tuple[int, str, str]:
    """`uav ARGV` in this process (no interpreter start): (exit code, stdout, stderr)."""
    import sys

    from pipelines.cli import main
    old = sys.argv
    sys.argv = ["uav", *map(str, argv)]
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = old
    out = capsys.readouterr()
    return code, out.out, out.err


def error_lines(err: str) -> list[str]:
    """stderr without progress bars (tqdm redraws with \\r; transformers draws "Loading weights: …%|")."""
    return [ln for ln in err.split("\n") if ln.strip() and "\r" not in ln and "%|" not in ln]


COLOURS, NOUNS = ["red", "green", "blue"], ["cat", "dog", "car", "hat"]


def write_toy_data(p: Path) -> Path:
    """Two classification sources and one fact source, 60 texts; every third example is held out for test."""
    with p.open("w") as f:
        for i in range(60):
            colour, noun = COLOURS[i % 3], NOUNS[i % 4]
            split = "test" if i % 3 == 2 else ("val" if i % 5 == 0 else "train")
            kind = ("colour", "classification", "What colour is it?", colour) if i % 2 else \
                ("noun", "fact", "Which thing is the text about?", noun)
            if i % 4 == 1:
                kind = ("mood", "classification", "What colour is it?", colour)
            src, task, q, a = kind
            f.write(json.dumps({"id": f"ex{i:02d}", "text": f"The {noun} is {colour}, number {i}.", "label": a,
                                "task": task, "source": src, "split": split, "qa": [{"question": q, "answer": a}]}) + "\n")
    return p
