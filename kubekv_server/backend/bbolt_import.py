"""Start from an etcd backend file: read a bbolt database and load etcd's state from it.

`etcdctl snapshot restore` leaves `<data-dir>/member/snap/db`, an etcd backend
(bbolt). A kubekv member started on such a data directory, with no state of its
own yet, loads it: the `key` bucket's history rows are kubekv's own format, so the
key index and current values are rebuilt from them; the revision, compaction
point and leases come along. The reader walks bbolt's pages (meta, branch, leaf,
inline buckets) in pure Python.
"""

from __future__ import annotations

import struct

import lmdb

from etcdproto.etcdserverpb import rpc_pb2 as pb
from etcdproto.mvccpb import kv_pb2
from kubekv_server.backend.bbolt_export import (
    BRANCH_PAGE,
    BUCKET_LEAF_FLAG,
    LEAF_PAGE,
    MAGIC,
    fnv1a64,
)
from kubekv_server.mvcc import meta as mvcc_meta
from kubekv_server.mvcc.revision import is_tombstone, main_of
from kubekv_server.mvcc.stored_key import stored

_PAGE_HEADER = struct.Struct("<QHHI")
_LEAF = struct.Struct("<IIII")
_BRANCH = struct.Struct("<IIQ")
_META = struct.Struct("<IIIIQQQQQQ")


class BboltError(ValueError):
    """Not a readable bbolt database."""


def _meta(data: bytes, offset: int) -> tuple[int, int, int] | None:
    """(root pgid, page size, txid) of a valid meta page at offset, else None."""
    if len(data) < offset + 16 + _META.size:
        return None
    magic, version, psize, _flags, root, _seq, _free, _pgid, txid, checksum = _META.unpack_from(
        data, offset + 16
    )
    if magic != MAGIC or version != 2:
        return None
    if fnv1a64(data[offset + 16 : offset + 16 + 56]) != checksum:
        return None
    return root, psize, txid


def _elements(page: bytes, base: int = 0):
    """Leaf elements (key, value, flags) or branch children (key, pgid) of a page."""
    _id, flags, count, _overflow = _PAGE_HEADER.unpack_from(page, base)
    at = base + 16
    if flags & LEAF_PAGE:
        for i in range(count):
            eflags, pos, ksize, vsize = _LEAF.unpack_from(page, at + 16 * i)
            k = at + 16 * i + pos
            yield "leaf", page[k : k + ksize], page[k + ksize : k + ksize + vsize], eflags
    elif flags & BRANCH_PAGE:
        for i in range(count):
            pos, ksize, child = _BRANCH.unpack_from(page, at + 16 * i)
            k = at + 16 * i + pos
            yield "branch", page[k : k + ksize], child, 0
    else:
        raise BboltError(f"unexpected page type {flags:#x}")


def read_buckets(path: str) -> dict[bytes, list[tuple[bytes, bytes]]]:
    """Every top-level bucket's (key, value) pairs, in key order."""
    with open(path, "rb") as f:
        data = f.read()
    first = _meta(data, 0)
    if first is None:
        raise BboltError("no valid bbolt meta page")
    psize = first[1]
    metas = [m for m in (first, _meta(data, psize)) if m is not None]
    root = max(metas, key=lambda m: m[2])[0]

    def page(pgid: int) -> bytes:
        return data[pgid * psize : (pgid + 1) * psize + _overflow(pgid) * psize]

    def _overflow(pgid: int) -> int:
        return _PAGE_HEADER.unpack_from(data, pgid * psize)[3]

    def walk(buf: bytes, base: int = 0):
        for kind, k, v, flags in _elements(buf, base):
            if kind == "leaf":
                yield k, v, flags
            else:
                yield from walk(page(v))

    buckets: dict[bytes, list[tuple[bytes, bytes]]] = {}
    for name, value, flags in walk(page(root)):
        if not flags & BUCKET_LEAF_FLAG:
            continue
        broot = struct.unpack_from("<Q", value, 0)[0]
        items = walk(value, 16) if broot == 0 else walk(page(broot))  # inline bucket or tree
        buckets[name] = [(k, v) for k, v, f in items if not f & BUCKET_LEAF_FLAG]
    return buckets


def load(path: str, env: lmdb.Environment, mvcc, leases, backend) -> int:
    """Load an etcd backend into empty kubekv stores; returns the current revision."""
    buckets = read_buckets(path)
    rows = buckets.get(b"key", [])
    dbs = mvcc._dbs  # noqa: SLF001 - the importer writes the store's own tables
    current, live = 1, {}
    with env.begin(write=True) as txn:
        for rev, value in rows:
            txn.put(rev, value, db=dbs.key, append=True)
            kv = kv_pb2.KeyValue.FromString(value)
            sk = stored(kv.key)
            if sk != kv.key:
                txn.put(sk, kv.key, db=dbs.long_keys)
            txn.put(sk, rev, db=dbs.key_index, dupdata=True)
            if is_tombstone(rev):
                live.pop(sk, None)
            else:
                live[sk] = (rev, kv)
            current = max(current, main_of(rev))
        for sk in sorted(live):
            txn.put(sk, live[sk][0], db=dbs.live)
        mvcc_meta.put_current_revision(txn, dbs.meta, current)
        for name in (mvcc_meta.SCHEDULED_COMPACT_REV, mvcc_meta.FINISHED_COMPACT_REV):
            for k, v in buckets.get(b"meta", []):
                if k == name:
                    txn.put(k, v, db=dbs.meta)
        for _k, v in buckets.get(b"lease", []):
            lease = _lease(v)
            if lease is not None:
                leases.grant(txn, pb.LeaseGrantRequest(ID=lease[0], TTL=lease[1]))
        events = [kv_pb2.Event(type=kv_pb2.Event.PUT, kv=kv)
                  for _, kv in live.values() if kv.lease]
        if events:
            leases.track(txn, events)
    return current


def _lease(value: bytes) -> tuple[int, int] | None:
    """(ID, TTL) of a leasepb.Lease."""
    fields, pos = {}, 0
    while pos < len(value):
        tag = value[pos]
        pos += 1
        n, shift = 0, 0
        while True:
            b = value[pos]
            pos += 1
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        fields[tag >> 3] = n
    if 1 not in fields:
        return None
    lid = fields[1] - (1 << 64) if fields[1] >= 1 << 63 else fields[1]
    return lid, fields.get(2, 0)
