"""The activation store: the one owner of the on-disk format (see docs/store-format.md).

A store is a Zarr v3 group that a harvest fills shard by shard. The unit of commit is a *row shard*: all
arrays for rows ``[s*R, (s+1)*R)`` are written, then ``_commits/sNNNNN.json`` is renamed into place. A
shard without its commit file does not exist for readers, so a killed harvest leaves nothing half-visible,
a re-run redoes exactly the missing shards, and readers can open a store while another process writes it.
Shard ``s`` is owned by writer ``s % world``: ranks never touch the same file.

format.py holds the layout, readouts.py what a store keeps of a text, writer.py and reader.py the two sides, raw.py
the raw codec's shard files. The names other code uses are importable from here.
"""

from uav_cache.store.format import (CODECS, DEFAULT_CODEC, FORMAT, FORMAT_VERSION, FP16_MAX, IDENTITY_KEYS,
                                    OPTIONAL_TABLES, ROOT_FIX, STORAGE_DTYPES, TABLES, UnreadableChunk, codec_of,
                                    damaged_root, from_bits, new_meta, to_bits)
from uav_cache.store.reader import Store, check_compatible, check_range_requests
from uav_cache.store.readouts import (DEFAULT_READOUTS, POSITIONS, READOUTS, parse_positions, pool, readouts_of,
                                      token_layers_of, view_index, window_start)
from uav_cache.store.writer import StoreWriter

__all__ = ["CODECS", "DEFAULT_CODEC", "DEFAULT_READOUTS", "FORMAT", "FORMAT_VERSION", "FP16_MAX", "IDENTITY_KEYS",
           "OPTIONAL_TABLES", "POSITIONS", "READOUTS", "ROOT_FIX", "STORAGE_DTYPES", "TABLES", "Store", "StoreWriter",
           "UnreadableChunk", "check_compatible", "check_range_requests", "codec_of", "damaged_root", "from_bits",
           "new_meta", "parse_positions", "pool", "readouts_of", "to_bits", "token_layers_of", "view_index",
           "window_start"]
