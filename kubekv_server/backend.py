"""The member's state database: one LMDB environment holding everything the log is applied to.

MVCC history, key index, current values, membership and the applied index live
here, written in one transaction per apply batch, so a restart replays exactly
the log entries this database has not seen. Other processes may open it
read-only to serve reads (LMDB readers never block the writer).
"""

from __future__ import annotations

import os
import struct
import zlib

import lmdb

# Address space reserved for the map; pages are only allocated as data grows.
DEFAULT_MAP_SIZE = 64 << 30

_U64 = struct.Struct(">Q")


def encode_u64(n: int) -> bytes:
    return _U64.pack(n)


def decode_u64(b: bytes | None) -> int:
    return _U64.unpack(b)[0] if b else 0


class Backend:
    """Opens the state environment and its `meta` database (applied index, identity)."""

    APPLIED_INDEX = b"applied_index"

    def __init__(self, path: str, map_size: int = DEFAULT_MAP_SIZE, readonly: bool = False):
        os.makedirs(path, exist_ok=True)
        # metasync=False: each commit flushes its data pages but not the meta page,
        # so a power loss can only roll back the newest commits, which the
        # (fully synced) log then replays; a process crash loses nothing.
        self.env = lmdb.open(
            path,
            map_size=map_size,
            max_dbs=32,
            max_readers=2048,
            metasync=False,
            sync=True,
            readahead=False,
            readonly=readonly,
            lock=True,
        )
        self.path = path
        self.readonly = readonly
        self._dbs: dict[bytes, object] = {}
        self.meta = self.open_db(b"meta")

    def open_db(self, name: bytes, **flags) -> object:
        """Open (creating unless read-only) a named sub-database, remembered for size reports."""
        if name not in self._dbs:
            self._dbs[name] = self.env.open_db(name, create=not self.readonly, **flags)
        return self._dbs[name]

    def applied_index(self) -> int:
        with self.env.begin() as txn:
            return decode_u64(txn.get(self.APPLIED_INDEX, db=self.meta))

    def set_applied_index(self, txn: lmdb.Transaction, index: int) -> None:
        txn.put(self.APPLIED_INDEX, encode_u64(index), db=self.meta)

    def get_meta(self, key: bytes) -> bytes | None:
        with self.env.begin() as txn:
            return txn.get(key, db=self.meta)

    def size_bytes(self) -> int:
        """Bytes the database file occupies (etcd's db_size)."""
        info = self.env.info()
        return (info["last_pgno"] + 1) * self.env.stat()["psize"]

    def in_use_bytes(self) -> int:
        """Bytes of pages holding live data (etcd's db_size_in_use), excluding free pages."""
        psize = self.env.stat()["psize"]
        pages = 2  # the two meta pages
        with self.env.begin() as txn:
            main = txn.stat()
            pages += main["branch_pages"] + main["leaf_pages"] + main["overflow_pages"]
            for db in self._dbs.values():
                st = txn.stat(db)
                pages += st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]
        return min(pages * psize, self.size_bytes())

    def hash(self, skip_meta_keys: tuple[bytes, ...] = ()) -> int:
        """CRC-32 over every sub-database's name, keys and values (Maintenance.Hash).

        Members with the same applied state get the same value; keys naming the
        member itself can be skipped so that they do not make members differ.
        """
        h = 0
        with self.env.begin() as txn:
            names = [k for k, _ in txn.cursor()]
            for name in names:
                db = self.env.open_db(name, txn=txn, create=False)
                h = zlib.crc32(name, h)
                for k, v in txn.cursor(db=db):
                    if name == b"meta" and k in skip_meta_keys:
                        continue
                    h = zlib.crc32(v, zlib.crc32(k, h))
        return h

    def sync(self) -> None:
        """Force every committed transaction to disk (before the log is compacted)."""
        self.env.sync(True)

    def close(self) -> None:
        self.env.close()
