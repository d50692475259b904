"""The Txn shapes kube-apiserver's etcd3 store sends, and the per-loop state the `txn`
and `create` bench ops keep so their compares hold.

From k8s.io/apiserver/pkg/storage/etcd3/store.go:
* Create: `Txn.If(ModRevision(key) == 0).Then(OpPut(key, data))`, no Else; a failed
  compare is "key exists".
* GuaranteedUpdate: `Txn.If(ModRevision(key) == origState.rev).Then(OpPut(key, data))
  .Else(OpGet(key))`; on a failed compare the store takes the Else Get's kv as its new
  state and tries again.
"""

from __future__ import annotations

import random

from etcdproto.etcdserverpb import rpc_pb2 as pb

KEY_PREFIX = b"bench/key/"


def create_request(key: bytes, value: bytes) -> pb.TxnRequest:
    """store.Create: put `key` only if it does not exist (mod_revision 0), no Else."""
    return pb.TxnRequest(
        compare=[pb.Compare(key=key, target=pb.Compare.MOD, result=pb.Compare.EQUAL,
                            mod_revision=0)],
        success=[pb.RequestOp(request_put=pb.PutRequest(key=key, value=value))],
    )


def update_request(key: bytes, value: bytes, mod_revision: int) -> pb.TxnRequest:
    """store.GuaranteedUpdate: put `key` if its mod_revision is still the one read
    before, else get it (the caller's fresh state for the retry)."""
    return pb.TxnRequest(
        compare=[pb.Compare(key=key, target=pb.Compare.MOD, result=pb.Compare.EQUAL,
                            mod_revision=mod_revision)],
        success=[pb.RequestOp(request_put=pb.PutRequest(key=key, value=value))],
        failure=[pb.RequestOp(request_range=pb.RangeRequest(key=key))],
    )


def revision_after(resp: pb.TxnResponse) -> int:
    """The key's mod_revision after an update Txn: the Txn's revision when the Put ran
    (a Txn with one Put commits at header.revision), else the Else Get's mod_revision
    (0 if the key is gone)."""
    if resp.succeeded:
        return resp.header.revision
    kvs = resp.responses[0].response_range.kvs if resp.responses else ()
    return kvs[0].mod_revision if kvs else 0


def owned_keys(loop: int, inflight: int, num_keys: int) -> range:
    """Key indices of global loop `loop` of `inflight`: every inflight-th key, so no two
    loops of a cell write the same key and each loop's compares hold."""
    return range(loop, num_keys, inflight)


def revisions_from_range(resp: pb.RangeResponse) -> dict[int, int]:
    """{key index: mod_revision} from a Range over the bench keys (`bench/key/NNNNN`)."""
    return {int(kv.key[len(KEY_PREFIX):]): kv.mod_revision for kv in resp.kvs
            if kv.key.startswith(KEY_PREFIX)}


class UpdateLoop:
    """One closed loop's kube-style updates of its own keys, picked at random. It keeps
    each key's mod_revision from the previous response, as kube-apiserver keeps the
    object's resourceVersion, so the compare holds unless someone else wrote the key."""

    def __init__(self, keys: dict[int, bytes], revisions: dict[int, int], value: bytes,
                 rnd: random.Random) -> None:
        self._ids = list(keys)
        self._reqs = {i: update_request(k, value, revisions.get(i, 0)) for i, k in keys.items()}
        self._rnd = rnd
        self._current = -1

    def next(self) -> pb.TxnRequest:
        """The next update; one at a time (a closed loop has one request in flight)."""
        self._current = self._ids[self._rnd.randrange(len(self._ids))]
        return self._reqs[self._current]

    def done(self, resp: pb.TxnResponse) -> bool:
        """Take the answer to the last `next()`; True if its compare held."""
        self._reqs[self._current].compare[0].mod_revision = revision_after(resp)
        return resp.succeeded


class CreateLoop:
    """One closed loop's kube-style creates, each of a key nobody has written:
    `bench/create/<cell>/<loop>/<n>` (outside the preloaded `bench/key/` range)."""

    def __init__(self, cell: int, loop: int, value: bytes) -> None:
        self._prefix = b"bench/create/%d/%d/" % (cell, loop)
        self._value = value
        self._n = 0

    def next(self) -> pb.TxnRequest:
        self._n += 1
        return create_request(self._prefix + b"%d" % self._n, self._value)

    @staticmethod
    def done(resp: pb.TxnResponse) -> bool:
        return resp.succeeded
