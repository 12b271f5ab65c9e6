"""The application layer: the `uav` command (cli.py), the demo driver (demo.py) and the bench (bench.py).

This is the only code that drives more than one stage; it may import uav_cache, uav_train and uav_eval, and
none of them imports it. Beside it, `recipes/` (demo, adapters …) stays declarative TOML; the donor/decoder registry
is uav_cache's package data (uav_cache/registry/), since the loaders own it.
"""
