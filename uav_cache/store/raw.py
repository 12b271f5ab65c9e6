"""The ``raw`` codec's shard files, written and read without zarr's per-chunk machinery: the layout zarr's sharding
codec writes (inner chunks of ``chunk_rows`` rows, each followed by its CRC32C, then an index of (offset, nbytes)
pairs and the index's CRC32C at the end), so plain zarr reads what :func:`encode_shard` writes and
:class:`RawArray` reads what zarr writes.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict

import google_crc32c
import numpy as np
import zarr
from zarr.codecs import BytesCodec, Crc32cCodec

from uav_cache.store.format import CHUNK_FIX, UnreadableChunk, fs_of, is_local

NO_CHUNK = 2**64 - 1  # a shard index entry for an inner chunk that was never written (all fill value)


def encode_shard(bits: np.ndarray, chunk_rows: int, shard_rows: int) -> list[bytes]:
    """The bytes of one shard file of a raw (n, d) uint16 array holding ``bits`` (its rows), in one piece per chunk,
    CRC32C and index: exactly what zarr's sharding codec writes for them, the array's last chunk stored whole with the
    rows past its end at the fill value. Encoding here costs less than zarr's per-chunk machinery on a small CPU."""
    c, d = min(chunk_rows, shard_rows), bits.shape[1]
    index = np.full((-(-shard_rows // c), 2), NO_CHUNK, dtype="<u8")
    parts, offset = [], 0
    for j in range(-(-len(bits) // c)):
        chunk = bits[j * c:(j + 1) * c]
        if len(chunk) < c:
            chunk = np.concatenate([chunk, np.zeros((c - len(chunk), d), np.uint16)])
        data = np.ascontiguousarray(chunk, dtype="<u2").tobytes()
        parts += [data, google_crc32c.value(data).to_bytes(4, "little")]
        index[j] = offset, len(data) + 4
        offset += len(data) + 4
    idx = index.tobytes()
    return parts + [idx, google_crc32c.value(idx).to_bytes(4, "little")]


class RawArray:
    """Rows of one ``raw``-codec activation array of a local store, read straight from its shard files (the layout
    zarr's sharding codec writes: inner chunks, then an index of (offset, nbytes) pairs + CRC32C at the end): no
    decode and no per-call zarr machinery. Each inner chunk's CRC32C is checked the first time it is read
    (committed shards never change). Anything else reads through zarr.

    Two paths, for the two ways stores are read. A span of rows (a streaming reader's chunk) is one ``pread`` per
    inner chunk: nothing mapped, so a streaming reader's memory stays flat however large the store. Scattered rows
    (a random batch) are copied out of the shard files memory-mapped, as Arrow reads its tables: the pages they
    touch are clean page cache, counted in the reader's RSS but reclaimable."""

    MAX_OPEN = 64  # shard files kept open (descriptor, parsed index, map) at once

    def __init__(self, folder: str, arr: zarr.Array):
        self.folder = folder
        self.shard_rows, self.chunk_rows = arr.shards[0], arr.chunks[0]
        self.d = arr.shape[1]
        self.chunk_bytes = self.chunk_rows * self.d * 2
        self.n_inner = -(-self.shard_rows // self.chunk_rows)
        self._open: OrderedDict[int, dict | None] = OrderedDict()
        self._checked: set[tuple[int, int]] = set()

    @classmethod
    def of(cls, path: str, name: str, arr: zarr.Array) -> "RawArray | None":
        fs, root = fs_of(path)
        if not is_local(fs) or arr.shards is None:
            return None
        want = {"name": "sharding_indexed", "configuration": {
            "chunk_shape": list(arr.chunks), "codecs": [BytesCodec().to_dict(), Crc32cCodec().to_dict()],
            "index_codecs": [BytesCodec().to_dict(), Crc32cCodec().to_dict()], "index_location": "end"}}
        codecs = json.loads(json.dumps([c.to_dict() for c in arr.metadata.codecs]))  # tuples → lists
        if arr.dtype != np.uint16 or codecs != [want]:
            return None
        return cls(f"{root}/{name}", arr)

    def _shard(self, i: int) -> dict | None:
        """Shard file ``i``: its descriptor and inner-chunk index (and map, once scattered rows were read);
        None when the file does not exist (the caller's _require_files has decided those rows are fill value)."""
        if i in self._open:
            self._open.move_to_end(i)
            return self._open[i]
        path = f"{self.folder}/c/{i}/0"
        try:
            f = open(path, "rb", buffering=0)  # a file object: closed when dropped, no descriptor leaks
        except FileNotFoundError:
            entry = None
        else:
            size = 16 * self.n_inner + 4
            tail = os.pread(f.fileno(), size, max(os.fstat(f.fileno()).st_size - size, 0))
            if len(tail) != size or google_crc32c.value(tail[:-4]) != int.from_bytes(tail[-4:], "little"):
                f.close()
                raise UnreadableChunk(f"shard file {path} has a corrupt index (CRC32C mismatch)",
                                      CHUNK_FIX)
            entry = {"file": f, "index": np.frombuffer(tail[:-4], dtype="<u8").reshape(self.n_inner, 2), "map": None}
        self._open[i] = entry
        if len(self._open) > self.MAX_OPEN:
            self._open.popitem(last=False)
        return entry

    def _where(self, entry: dict, i: int, j: int) -> tuple[int | None, bytes | None]:
        """Byte offset of inner chunk j of shard i (None for a chunk never written) and, the first time the chunk
        is used, its bytes, read whole to check its CRC32C (a caller that needs rows of it uses them)."""
        off, nbytes = (int(v) for v in entry["index"][j])
        if off == NO_CHUNK or (i, j) in self._checked:
            return (None if off == NO_CHUNK else off), None
        raw = os.pread(entry["file"].fileno(), nbytes, off)
        if nbytes != self.chunk_bytes + 4 or len(raw) != nbytes \
                or google_crc32c.value(raw[:-4]) != int.from_bytes(raw[-4:], "little"):
            raise UnreadableChunk(f"inner chunk {j} of {self.folder}/c/{i}/0 is corrupt (CRC32C mismatch)",
                                  CHUNK_FIX)
        self._checked.add((i, j))
        return off, raw

    def span(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop), one read per inner chunk they cover."""
        out = np.zeros((max(stop - start, 0), self.d), dtype=np.uint16)
        row = start
        while row < stop:
            i, within = divmod(row, self.shard_rows)
            j, lo = divmod(within, self.chunk_rows)
            hi = min(self.chunk_rows, lo + stop - row)
            entry = self._shard(i)
            off, whole = (None, None) if entry is None else self._where(entry, i, j)
            if whole is not None:  # just checked: the rows are in the bytes already read
                out[row - start:row - start + hi - lo] = np.frombuffer(whole, "<u2", self.chunk_rows * self.d) \
                    .reshape(-1, self.d)[lo:hi]
            elif off is not None:
                raw = os.pread(entry["file"].fileno(), (hi - lo) * self.d * 2, off + lo * self.d * 2)
                out[row - start:row - start + hi - lo] = np.frombuffer(raw, dtype="<u2").reshape(-1, self.d)
            row += hi - lo
        return out

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """Scattered rows, in the order given: one numpy gather per shard file, through a (chunk, row, d) view of
        it (inner chunks lie one after another, each followed by its 4-byte CRC32C)."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.zeros((len(rows), self.d), dtype=np.uint16)
        shard, within = np.divmod(rows, self.shard_rows)
        chunk, local = np.divmod(within, self.chunk_rows)
        for i in np.unique(shard).tolist():
            entry = self._shard(i)
            if entry is None:
                continue
            hit = np.flatnonzero(shard == i)
            written = [j for j in np.unique(chunk[hit]).tolist() if self._where(entry, i, j)[0] is not None]
            if entry["map"] is None:
                entry["map"] = self._view(i, entry)
            keep = hit[np.isin(chunk[hit], written)]
            out[keep] = entry["map"][chunk[keep], local[keep]]
        return out

    def _view(self, i: int, entry: dict) -> np.ndarray:
        """Shard file i (the file already open, whose index was read) memory-mapped as (chunks, chunk_rows, d)
        uint16: chunk j starts j·(chunk bytes + 4) in."""
        index, step = entry["index"], self.chunk_bytes + 4
        written = index[:, 0] != NO_CHUNK
        if not np.array_equal(index[written, 0], np.flatnonzero(written) * step):  # not the layout uav writes
            raise UnreadableChunk(f"shard file {self.folder}/c/{i}/0 does not lay its chunks out in order",
                                  "read it through zarr: copy the store with `zarr` or re-harvest the shard")
        raw = np.memmap(entry["file"], dtype=np.uint8, mode="r")
        n = int(np.flatnonzero(written).max()) + 1 if written.any() else 0  # the view ends at the last written chunk
        if n * step > len(raw):
            raise UnreadableChunk(f"shard file {self.folder}/c/{i}/0 is shorter than its index says",
                                  CHUNK_FIX)
        return np.lib.stride_tricks.as_strided(raw[: n * step].view("<u2"), shape=(n, self.chunk_rows, self.d),
                                               strides=(step, 2 * self.d, 2), writeable=False)
