"""etcd's clientv3/concurrency recipes (Mutex, Election) run inside the server.

The Lock and Election services (etcd's v3lock, v3election) are these recipes
over the member's own KV, Lease and Watch: the same keys (`<name>/<lease hex>`),
the same transactions and the same waits, so they interoperate with clients
that run the recipes themselves (`etcdctl lock`, `etcdctl elect`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from etcdproto.etcdserverpb import rpc_pb2 as pb
from etcdproto.mvccpb.kv_pb2 import Event, KeyValue
from kubekv_server import errors
from kubekv_server.api.request_checks import check_txn

# concurrency.defaultSessionTTL: a session without a lease grants one of 60 s
DEFAULT_SESSION_TTL = 60

Alive = Callable[[], bool]


def prefix_end(key: bytes) -> bytes:
    """clientv3.GetPrefixRangeEnd."""
    b = bytearray(key)
    for i in range(len(b) - 1, -1, -1):
        if b[i] < 0xFF:
            b[i] += 1
            return bytes(b[: i + 1])
    return b"\x00"


def _top(pfx: bytes, order, **kw) -> pb.RangeRequest:
    """clientv3's WithFirstCreate / WithLastCreate: one key of a prefix by create revision."""
    return pb.RangeRequest(key=pfx, range_end=prefix_end(pfx), limit=1,
                           sort_target=pb.RangeRequest.CREATE, sort_order=order, **kw)


def _create_rev_is(key: bytes, rev: int) -> pb.Compare:
    return pb.Compare(key=key, target=pb.Compare.CREATE, result=pb.Compare.EQUAL,
                      create_revision=rev)


class Recipes:
    def __init__(self, member) -> None:
        self.m = member

    # --------------------------------------------------------------- session

    def session_lease(self, lease: int) -> int:
        """concurrency.NewSession(WithLease(lease)), orphaned: grant 60 s when lease is 0."""
        if lease:
            return lease
        return self.m.lease_grant(pb.LeaseGrantRequest(TTL=DEFAULT_SESSION_TTL)).ID

    # ----------------------------------------------------------------- waits

    def wait_delete(self, key: bytes, rev: int, alive: Alive) -> None:
        """Block until `key` has a DELETE event at or after `rev` (concurrency.waitDelete)."""
        for resp in self.watch(key, None, rev, alive):
            if any(e.type == Event.DELETE for e in resp.events):
                return

    def wait_deletes(self, pfx: bytes, max_create_rev: int, alive: Alive) -> pb.ResponseHeader:
        """concurrency.waitDeletes: until no key under pfx was created at or before the rev."""
        while True:
            resp = self.m.range(_top(pfx, pb.RangeRequest.DESCEND,
                                     max_create_revision=max_create_rev))
            if not resp.kvs:
                return resp.header
            self.wait_delete(resp.kvs[0].key, resp.header.revision, alive)

    def watch(self, key: bytes, end: bytes | None, rev: int, alive: Alive
              ) -> Iterator[pb.WatchResponse]:
        """Watch responses with events (headers filled) until the caller stops or `alive`
        turns false (then raises the canceled error)."""
        hub = self.m.watch_hub
        stream = hub.new_stream()
        try:
            w = hub.watch(stream, 0, key, end, rev)
            if w is None:
                raise errors.WATCH_CANCELED
            while True:
                out = stream.pop(0.2)
                if out is None:
                    if not alive():
                        raise errors.WATCH_CANCELED
                    continue
                if out.compact_revision:
                    raise errors.COMPACTED
                if not out.events:
                    continue
                resp = pb.WatchResponse(watch_id=out.watch_id)
                self.m.header(resp.header, out.revision)
                resp.events.extend(out.events)
                yield resp
        finally:
            hub.close_stream(stream)

    def _txn(self, r: pb.TxnRequest) -> pb.TxnResponse:
        """A recipe's writing Txn, proposed as a client's would be (its quota cost is
        counted as etcd's v3lock/v3election servers' clientv3 Txns are)."""
        _, cost = check_txn(r, self.m.cfg.max_txn_ops)
        return self.m.blocking(self.m.txn, r, cost)

    # ------------------------------------------------------------------ lock

    def lock(self, name: bytes, lease: int, alive: Alive) -> tuple[pb.ResponseHeader, bytes]:
        """concurrency.Mutex.Lock; returns (header, lock key)."""
        lease = self.session_lease(lease)
        pfx = name + b"/"
        my_key = pfx + b"%x" % lease
        resp = self._txn(pb.TxnRequest(
            compare=[_create_rev_is(my_key, 0)],
            success=[pb.RequestOp(request_put=pb.PutRequest(key=my_key, lease=lease)),
                     pb.RequestOp(request_range=_top(pfx, pb.RangeRequest.ASCEND))],
            failure=[pb.RequestOp(request_range=pb.RangeRequest(key=my_key)),
                     pb.RequestOp(request_range=_top(pfx, pb.RangeRequest.ASCEND))],
        ))
        my_rev = resp.header.revision
        if not resp.succeeded:
            my_rev = resp.responses[0].response_range.kvs[0].create_revision
        owner = resp.responses[1].response_range.kvs
        if not owner or owner[0].create_revision == my_rev:
            return resp.header, my_key
        try:
            hdr = self.wait_deletes(pfx, my_rev - 1, alive)
        except BaseException:
            self.m.blocking(self.m.delete_range, pb.DeleteRangeRequest(key=my_key))  # Mutex.Unlock
            raise
        return hdr, my_key

    # -------------------------------------------------------------- election

    def campaign(self, name: bytes, lease: int, value: bytes, alive: Alive
                 ) -> tuple[pb.ResponseHeader, bytes, int, int]:
        """concurrency.Election.Campaign; returns (header, leader key, leader rev, lease)."""
        lease = self.session_lease(lease)
        pfx = name + b"/"
        key = pfx + b"%x" % lease
        resp = self._txn(pb.TxnRequest(
            compare=[_create_rev_is(key, 0)],
            success=[pb.RequestOp(request_put=pb.PutRequest(key=key, value=value, lease=lease))],
            failure=[pb.RequestOp(request_range=pb.RangeRequest(key=key))],
        ))
        rev = resp.header.revision
        if not resp.succeeded:
            kv = resp.responses[0].response_range.kvs[0]
            rev = kv.create_revision
            if kv.value != value:
                try:
                    self.proclaim(key, rev, lease, value)
                except BaseException:
                    self.resign(key, rev)
                    raise
        try:
            self.wait_deletes(pfx, rev - 1, alive)
        except BaseException:
            if not alive():
                self.resign(key, rev)
            raise
        return resp.header, key, rev, lease

    def proclaim(self, key: bytes, rev: int, lease: int, value: bytes) -> pb.ResponseHeader:
        resp = self._txn(pb.TxnRequest(
            compare=[_create_rev_is(key, rev)],
            success=[pb.RequestOp(request_put=pb.PutRequest(key=key, value=value, lease=lease))],
        ))
        if not resp.succeeded:
            raise errors.ELECTION_NOT_LEADER
        return resp.header

    def resign(self, key: bytes, rev: int) -> pb.ResponseHeader:
        resp = self._txn(pb.TxnRequest(
            compare=[_create_rev_is(key, rev)],
            success=[pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=key))],
        ))
        return resp.header

    def leader(self, name: bytes) -> tuple[pb.ResponseHeader, KeyValue]:
        self.m.wait_linearizable()
        resp = self.m.range(_top(name + b"/", pb.RangeRequest.ASCEND))
        if not resp.kvs:
            raise errors.ELECTION_NO_LEADER
        return resp.header, resp.kvs[0]

    def observe(self, name: bytes, alive: Alive) -> Iterator[tuple[pb.ResponseHeader, KeyValue]]:
        """concurrency.Election.Observe: the leader, then each of its changes, then the next."""
        pfx = name + b"/"
        while alive():
            resp = self.m.range(_top(pfx, pb.RangeRequest.ASCEND))
            if resp.kvs:
                hdr, kv = resp.header, resp.kvs[0]
            else:
                hdr = kv = None
                for wr in self.watch(pfx, prefix_end(pfx), resp.header.revision, alive):
                    puts = [e for e in wr.events if e.type == Event.PUT]
                    if puts:
                        hdr, kv = wr.header, puts[0].kv
                        hdr.revision = kv.mod_revision
                        break
            yield hdr, kv
            for wr in self.watch(kv.key, None, hdr.revision + 1, alive):
                deleted = False
                for e in wr.events:
                    if e.type == Event.DELETE:
                        deleted = True
                        break
                    yield wr.header, e.kv
                if deleted:
                    break
