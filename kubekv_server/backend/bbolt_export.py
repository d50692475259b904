"""Export the state as an etcd backend file (bbolt) for Maintenance.Snapshot.

`etcdctl snapshot save` writes what this produces; `etcdctl snapshot status` and
`snapshot restore` (and real etcd) then read it as their own: a bbolt database
whose buckets hold etcd's layout (`key`: 17-byte revisions → mvccpb.KeyValue,
`meta`: consistent_index and compaction revisions, `lease`: leasepb.Lease, ...).
kubekv's history rows already use that layout, so they are copied as they are.

The writer builds a fresh, compact B+tree (every node full, no free pages) in
memory; bbolt's page format: 16-byte page headers (id, flags, count, overflow),
leaf elements (flags, pos, ksize, vsize), branch elements (pos, ksize, pgid),
two meta pages checksummed with FNV-1a, and an empty freelist page.
"""

from __future__ import annotations

import struct

PAGE_SIZE = 4096
MAGIC = 0xED0CDAED
VERSION = 2

BRANCH_PAGE = 0x01
LEAF_PAGE = 0x02
META_PAGE = 0x04
FREELIST_PAGE = 0x10
BUCKET_LEAF_FLAG = 0x01

_PAGE_HEADER = struct.Struct("<QHHI")
_LEAF_ELEMENT = struct.Struct("<IIII")
_BRANCH_ELEMENT = struct.Struct("<IIQ")
_META = struct.Struct("<IIIIQQQQQ")  # magic..txid; checksum follows
_ELEMENT_SIZE = 16
_HEADER_SIZE = 16


def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


class _Pages:
    """Sequentially allocated pages of the file being written."""

    def __init__(self) -> None:
        self.pages: list[bytes] = []

    def reserve(self, n: int) -> int:
        first = len(self.pages)
        self.pages.extend([b""] * n)
        return first

    def put(self, pgid: int, data: bytes) -> None:
        n = (len(data) + PAGE_SIZE - 1) // PAGE_SIZE
        data = data.ljust(n * PAGE_SIZE, b"\x00")
        for i in range(n):
            self.pages[pgid + i] = data[i * PAGE_SIZE : (i + 1) * PAGE_SIZE]


def _node_bytes(pgid: int, flags: int, items: list[tuple[bytes, bytes, int]]) -> bytes:
    """A leaf (items: key, value, element flags) or branch (key, b"", child pgid) node."""
    n = len(items)
    body = bytearray()
    elements = bytearray()
    data_start = n * _ELEMENT_SIZE
    for i, (k, v, extra) in enumerate(items):
        pos = data_start + len(body) - i * _ELEMENT_SIZE
        if flags == LEAF_PAGE:
            elements += _LEAF_ELEMENT.pack(extra, pos, len(k), len(v))
            body += k + v
        else:
            elements += _BRANCH_ELEMENT.pack(pos, len(k), extra)
            body += k
    size = _HEADER_SIZE + len(elements) + len(body)
    overflow = (size + PAGE_SIZE - 1) // PAGE_SIZE - 1
    return _PAGE_HEADER.pack(pgid, flags, n, overflow) + bytes(elements) + bytes(body)


def _pack(items: list, size_of) -> list[list]:
    """Split sorted items into nodes of at most one page (an oversized item stands alone)."""
    nodes, cur, cur_size = [], [], _HEADER_SIZE
    for item in items:
        s = _ELEMENT_SIZE + size_of(item)
        if cur and cur_size + s > PAGE_SIZE:
            nodes.append(cur)
            cur, cur_size = [], _HEADER_SIZE
        cur.append(item)
        cur_size += s
    nodes.append(cur)
    return nodes


def _write_tree(pages: _Pages, items: list[tuple[bytes, bytes, int]]) -> int:
    """Write a B+tree of sorted leaf items; returns the root page id."""
    level = []  # (first key, pgid) of each node of the level just written
    for node in _pack(items, lambda it: len(it[0]) + len(it[1])):
        size = _HEADER_SIZE + sum(_ELEMENT_SIZE + len(k) + len(v) for k, v, _ in node)
        pgid = pages.reserve((size + PAGE_SIZE - 1) // PAGE_SIZE)
        pages.put(pgid, _node_bytes(pgid, LEAF_PAGE, node))
        level.append((node[0][0] if node else b"", pgid))
    while len(level) > 1:
        upper = []
        for node in _pack(level, lambda it: len(it[0])):
            size = _HEADER_SIZE + sum(_ELEMENT_SIZE + len(k) for k, _ in node)
            pgid = pages.reserve((size + PAGE_SIZE - 1) // PAGE_SIZE)
            pages.put(pgid, _node_bytes(pgid, BRANCH_PAGE, [(k, b"", c) for k, c in node]))
            upper.append((node[0][0], pgid))
        level = upper
    return level[0][1]


def build(buckets: dict[bytes, list[tuple[bytes, bytes]]], txid: int = 1) -> bytes:
    """A bbolt file holding `buckets` (name → sorted (key, value) pairs)."""
    pages = _Pages()
    pages.reserve(3)  # two meta pages, the freelist
    roots = []
    for name in sorted(buckets):
        root = _write_tree(pages, [(k, v, 0) for k, v in sorted(buckets[name])])
        roots.append((name, struct.pack("<QQ", root, 0), BUCKET_LEAF_FLAG))
    root_bucket = _write_tree(pages, roots)
    pages.put(2, _PAGE_HEADER.pack(2, FREELIST_PAGE, 0, 0))
    high_water = len(pages.pages)
    for pgid, tx in ((0, txid - 1 if txid > 0 else 0), (1, txid)):
        meta = _META.pack(MAGIC, VERSION, PAGE_SIZE, 0, root_bucket, 0, 2, high_water, tx)
        meta += struct.pack("<Q", fnv1a64(meta))
        pages.put(pgid, _PAGE_HEADER.pack(pgid, META_PAGE, 0, 0) + meta)
    return b"".join(pages.pages)


def lease_value(lease_id: int, ttl: int) -> bytes:
    """leasepb.Lease{ID: 1, TTL: 2} in protobuf wire form."""
    return _varint_field(1, lease_id) + _varint_field(2, ttl)


def _varint_field(number: int, value: int) -> bytes:
    if value == 0:
        return b""
    out = bytearray([number << 3])
    v = value & 0xFFFFFFFFFFFFFFFF
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)
