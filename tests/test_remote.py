"""Stores served over HTTP on loopback: a Range-capable static server (as nginx, Caddy or object storage) serves
info, verify, training and evaluation; one that ignores Range (Python's http.server) is named, never called corrupt."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import assert_same_tensors, serve
from test_faults import _tcfg, train_store  # noqa: F401  (module fixture reused here)
from uav_cache.errors import UavError
from uav_cache.store import Store
from uav_eval.protocol import EvalConfig, evaluate
from uav_train.trainer import train


@pytest.fixture(scope="module")
def site(train_store, tmp_path_factory) -> Path:  # noqa: F811
    """A folder published as a web root: the store copied in, as a team would copy it to a server."""
    root = tmp_path_factory.mktemp("site")
    shutil.copytree(train_store, root / "colours")
    return root


def uav(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from pipelines.cli import main; main()", *args], capture_output=True,
                          text=True, timeout=300)


def test_info_verify_and_reads_over_http_equal_the_local_store(site):
    local = Store(site / "colours")
    with serve(site) as url:
        remote = Store(f"{url}/colours")
        assert remote.committed() == local.committed() and remote.verify() == []
        layer = local.layers[0]
        rows = np.array([0, 5, 9, 17, 23])
        assert np.array_equal(remote.read_rows(layer, rows).numpy(), local.read_rows(layer, rows).numpy())
        assert np.array_equal(remote.read(layer, 3, 20).numpy(), local.read(layer, 3, 20).numpy())
        info = uav("store", "info", f"{url}/colours")
        assert info.returncode == 0 and "committed 3/3  (complete)" in info.stdout
        ok = uav("store", "verify", f"{url}/colours")
        assert ok.returncode == 0 and ok.stdout.startswith("ok: 3 shards"), ok.stderr


def test_a_server_without_range_requests_is_named_not_called_corrupt(site, tiny_llama_dir, tmp_path):
    with serve(site, ranges=False) as url:
        for cmd in (("store", "info"), ("store", "verify")):
            r = uav(*cmd, f"{url}/colours")
            assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
            assert "ignores HTTP Range requests" in r.stderr and "checksum" not in r.stderr
        with pytest.raises(UavError, match="ignores HTTP Range requests"):
            train(_tcfg(f"{url}/colours", tiny_llama_dir, tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_train_and_eval_from_a_store_served_over_http(site, tiny_llama_dir, tmp_path):
    """A run trained from the URL is bit-identical to one trained from the local copy, and evaluates from it."""
    local = train(_tcfg(site / "colours", tiny_llama_dir, tmp_path / "local"))
    with serve(site) as url:
        run = train(_tcfg(f"{url}/colours", tiny_llama_dir, tmp_path / "remote"))
        for f in ("adapter.safetensors", "stage1/adapter.safetensors", "lora/adapter_model.safetensors"):
            assert_same_tensors(local / f, run / f)
        res = evaluate(EvalConfig(run=str(run), split="val", limit=2, methods=["uav"], similarity=False, probe=False, n_boot=10,
                                  progress=False))
        assert res.store == f"{url}/colours" and res.n_items > 0
