"""Member and cluster IDs derived from the initial cluster configuration, as etcd does.

The same flags give the same IDs on every member and across restarts (and the
same IDs real etcd would pick), so tools that compare IDs across members or
print them in hex see a stable cluster.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable


def member_id(peer_urls: Iterable[str], cluster_token: str, now: int | None = None) -> int:
    """etcd's NewMember ID: first 8 bytes of sha1(sorted peer URLs + token [+ time])."""
    data = "".join(sorted(peer_urls)) + cluster_token
    if now is not None:
        data += str(now)
    return struct.unpack(">Q", hashlib.sha1(data.encode()).digest()[:8])[0]


def cluster_id(member_ids: Iterable[int]) -> int:
    """etcd's RaftCluster.genID: sha1 over the sorted member IDs as 8-byte big-endian words."""
    blob = b"".join(struct.pack(">Q", m) for m in sorted(member_ids))
    return struct.unpack(">Q", hashlib.sha1(blob).digest()[:8])[0]
