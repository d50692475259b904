"""Range permissions: which keys a user may read or write (etcd's range_perm_cache.go).

Pure logic over authpb.Permission lists. Keys compare as etcd's "bytes affine"
values: the empty byte string sorts after every other key, so an interval whose
end is empty (a permission or request with range_end "\\x00") runs to infinity.

- A permission with an empty range_end covers the single key: [key, key+"\\x00").
- A request for one key (empty range_end) is allowed when one interval holds it.
- A request for a range must be covered entirely by the union of the intervals
  that overlap it, without gaps (etcd's IntervalTree.Contains).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from etcdproto.authpb import auth_pb2

READ = auth_pb2.Permission.READ
WRITE = auth_pb2.Permission.WRITE
READWRITE = auth_pb2.Permission.READWRITE


def _key(b: bytes) -> tuple[bool, bytes]:
    """Sort key of an affine byte string: empty means +infinity."""
    return (len(b) == 0, b)


def _cmp(a: bytes, b: bytes) -> int:
    ka, kb = _key(a), _key(b)
    return (ka > kb) - (ka < kb)


def point(key: bytes) -> tuple[bytes, bytes]:
    return key, key + b"\x00"


def _overlaps(iv: tuple[bytes, bytes], q: tuple[bytes, bytes]) -> bool:
    """etcd's Interval.Compare == 0: neither left of nor right of the other."""
    (qb, qe), (b, e) = q, iv
    left = _cmp(qb, b) < 0 and _cmp(qe, b) <= 0
    right = _cmp(qb, e) >= 0
    return not (left or right)


@dataclass
class UnifiedPerms:
    """A user's merged permissions: intervals readable and writable."""

    read: list[tuple[bytes, bytes]] = field(default_factory=list)
    write: list[tuple[bytes, bytes]] = field(default_factory=list)

    def add(self, perm: auth_pb2.Permission) -> None:
        end = perm.range_end
        if end:
            ivl = (perm.key, b"" if end == b"\x00" else end)
        else:
            ivl = point(perm.key)
        if perm.permType in (READ, READWRITE):
            self.read.append(ivl)
        if perm.permType in (WRITE, READWRITE):
            self.write.append(ivl)

    def finish(self) -> UnifiedPerms:
        self.read.sort(key=lambda iv: (_key(iv[0]), _key(iv[1])))
        self.write.sort(key=lambda iv: (_key(iv[0]), _key(iv[1])))
        return self

    def permitted(self, key: bytes, range_end: bytes, write: bool) -> bool:
        ivls = self.write if write else self.read
        if not range_end:
            q = point(key)
            return any(_overlaps(iv, q) for iv in ivls)
        if range_end == b"\x00":
            range_end = b""
        return contains(ivls, (key, range_end))


def contains(ivls: list[tuple[bytes, bytes]], q: tuple[bytes, bytes]) -> bool:
    """Whether sorted intervals cover q with no gap (etcd's IntervalTree.Contains)."""
    min_begin = max_end = None
    for iv in ivls:
        if not _overlaps(iv, q):
            continue
        if min_begin is None:
            min_begin, max_end = iv
            continue
        if _cmp(max_end, iv[0]) < 0:
            return False
        if _cmp(iv[1], max_end) > 0:
            max_end = iv[1]
    return min_begin is not None and _cmp(max_end, q[1]) >= 0 and _cmp(min_begin, q[0]) <= 0


def merge(roles: list[auth_pb2.Role]) -> UnifiedPerms:
    """The union of the permissions of a user's roles."""
    out = UnifiedPerms()
    for role in roles:
        for perm in role.keyPermission:
            out.add(perm)
    return out.finish()
