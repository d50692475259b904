"""etcd's data-corruption checks: members compare hashes of their key-value history.

- ``--experimental-initial-corrupt-check``: before serving clients, a restarting
  member hashes its history and asks every peer for its hash at the same revision;
  a different hash at the same compact revision stops it ("found data
  inconsistency with peers").
- ``--experimental-corrupt-check-time``: every interval the leader does the same
  with its followers (etcd's checkHashKV); any inconsistency raises the cluster's
  CORRUPT alarm (member 0, as etcd 3.5.7+), after which writes, compactions and
  lease grants/revokes fail with "etcdserver: corrupt cluster".

Peers answer over the peer port (``HashPeer``; etcd uses its peer HTTP API). The
decisions are pure functions of the hashes, tested without a cluster.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading

import grpc

from etcdproto.etcdserverpb import rpc_pb2 as pb
from etcdproto.kubekvpb import hashpeer_pb2 as hp
from etcdproto.kubekvpb import hashpeer_pb2_grpc as hp_grpc
from kubekv_server import errors
from kubekv_server.mvcc import CompactedError, FutureRevError

log = logging.getLogger("kubekv.corruption")

# Hashes computed at once for peers: each reads the whole key-value history, and the
# leader asks each follower once per check, so a second one at a time only burns CPU.
MAX_CONCURRENT_PEER_HASHES = 1
# Peer hash requests queued for that slot (a cluster's members, restarting at once,
# and the leader's check); more are refused with RESOURCE_EXHAUSTED.
MAX_WAITING_PEER_HASHES = 8


@dataclasses.dataclass
class PeerHash:
    """One peer's answer: its hash response, or the error of the last URL tried."""

    id: int
    urls: list[str]
    resp: hp.PeerHashKVResponse | None = None
    error: str = ""


@dataclasses.dataclass
class LocalHash:
    hash: int
    revision: int
    compact_revision: int


def initial_mismatches(me: int, local: LocalHash, peers: list[PeerHash]) -> int:
    """etcd's CheckInitialHashKV: how many peers have another hash at the same compact
    revision (logging each finding as etcd does)."""
    mismatch = 0
    for p in peers:
        if p.resp is not None:
            fields = (f"local-member-id={me:x} local-member-revision={local.revision} "
                      f"local-member-compact-revision={local.compact_revision} "
                      f"local-member-hash={local.hash} remote-peer-id={p.id:x} "
                      f"remote-peer-revision={p.resp.revision} "
                      f"remote-peer-compact-revision={p.resp.compact_revision} "
                      f"remote-peer-hash={p.resp.hash}")
            if p.resp.hash != local.hash:
                if p.resp.compact_revision == local.compact_revision:
                    log.warning('msg="found different hash values from remote peer" %s', fields)
                    mismatch += 1
                else:
                    log.warning('msg="found different compact revision values from remote '
                                'peer" %s', fields)
        elif p.error == errors.FUTURE_REV.message:
            log.warning('msg="cannot fetch hash from slow remote peer" local-member-id=%x '
                        "remote-peer-id=%x", me, p.id)
        elif p.error == errors.COMPACTED.message:
            log.warning('msg="cannot fetch hash from remote peer; local member is behind" '
                        "local-member-id=%x remote-peer-id=%x", me, p.id)
    return mismatch


def leader_findings(first: LocalHash, second: LocalHash, peers: list[PeerHash]) -> list[str]:
    """etcd's checkHashKV on the leader: the inconsistencies found (empty: none).
    ``first`` is the leader's hash before asking the peers, ``second`` after a
    linearizable read."""
    found = []
    if (second.hash != first.hash and second.revision == first.revision
            and second.compact_revision == first.compact_revision):
        found.append(f'msg="found hash mismatch" revision-1={first.revision} '
                     f"hash-1={first.hash} revision-2={second.revision} hash-2={second.hash}")
    for p in peers:
        if p.resp is None:
            continue
        r = p.resp
        if r.revision > second.revision:
            found.append('msg="revision from follower must be less than or equal to '
                         f'leader\'s" leader-revision={second.revision} '
                         f"follower-revision={r.revision} follower-peer-id={p.id:x}")
        if r.compact_revision > second.compact_revision:
            found.append('msg="compact revision from follower must be less than or equal '
                         f'to leader\'s" leader-compact-revision={second.compact_revision} '
                         f"follower-compact-revision={r.compact_revision} "
                         f"follower-peer-id={p.id:x}")
        if r.compact_revision == first.compact_revision and r.hash != first.hash:
            found.append('msg="same compact revision then hashes must match" '
                         f"leader-compact-revision={second.compact_revision} "
                         f"leader-hash={first.hash} "
                         f"follower-compact-revision={r.compact_revision} "
                         f"follower-hash={r.hash} follower-peer-id={p.id:x}")
    return found


# ------------------------------------------------------------------ peer side


def local_hash(member, rev: int = 0) -> LocalHash:
    h, compacted, current = member.mvcc.hash_kv(rev)
    return LocalHash(h, current, compacted)


class HashPeerServicer(hp_grpc.HashPeerServicer):
    """Answers a peer's hash request off the event loop (hashing reads the history)."""

    def __init__(self, member) -> None:
        self.member = member
        self._slots: asyncio.Semaphore | None = None
        self._queued = 0  # requests waiting for or holding a slot

    async def HashKV(self, request, context):  # noqa: N802 - gRPC method name
        loop = asyncio.get_running_loop()
        out = hp.PeerHashKVResponse(member_id=self.member.member_id)
        if self._slots is None:
            self._slots = asyncio.Semaphore(MAX_CONCURRENT_PEER_HASHES)
        if self._queued >= MAX_CONCURRENT_PEER_HASHES + MAX_WAITING_PEER_HASHES:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                "too many hash requests in flight")
        self._queued += 1
        try:
            async with self._slots:
                h = await loop.run_in_executor(None, local_hash, self.member, request.revision)
        except CompactedError:
            out.error = errors.COMPACTED.message
            return out
        except FutureRevError:
            out.error = errors.FUTURE_REV.message
            return out
        finally:
            self._queued -= 1
        out.hash, out.revision, out.compact_revision = h.hash, h.revision, h.compact_revision
        return out


async def peer_hashes(member, rev: int, timeout: float) -> list[PeerHash]:
    """etcd's getPeerHashKVs: every other member's hash at ``rev``, trying its URLs."""
    out = []
    for m in member.members:
        if m["id"] == member.member_id or not m.get("peerURLs"):
            continue
        p = PeerHash(m["id"], list(m["peerURLs"]))
        for url in p.urls:
            ch = None
            try:
                ch = await member.peering.dial(url)
                resp = await hp_grpc.HashPeerStub(ch).HashKV(
                    hp.PeerHashKVRequest(revision=rev), timeout=timeout)
            except (grpc.RpcError, OSError, asyncio.TimeoutError) as exc:
                p.error = str(exc)
                log.warning('msg="failed hash kv request" local-member-id=%x '
                            'requested-revision=%d remote-peer-endpoint=%s error="%s"',
                            member.member_id, rev, url, exc)
                continue
            finally:
                if ch is not None:
                    await ch.close()
            if resp.error:
                p.error = resp.error
            else:
                p.resp = resp
            break
        out.append(p)
    return out


async def initial_check(member, timeout: float) -> None:
    """--experimental-initial-corrupt-check; raises RuntimeError on an inconsistency."""
    log.info('msg="starting initial corruption check" local-member-id=%x', member.member_id)
    loop = asyncio.get_running_loop()
    local = await loop.run_in_executor(None, local_hash, member)
    peers = await peer_hashes(member, local.revision, timeout)
    if initial_mismatches(member.member_id, local, peers):
        raise RuntimeError(f"{member.member_id:x} found data inconsistency with peers")
    log.info('msg="initial corruption checking passed; no corruption" local-member-id=%x',
             member.member_id)


class CorruptionMonitor:
    """--experimental-corrupt-check-time: the leader's periodic check, in a thread."""

    def __init__(self, member, interval: float, stopping: threading.Event) -> None:
        self.member = member
        self.interval = interval
        self._stopping = stopping
        self._thread = threading.Thread(target=self._run, name="kubekv-corrupt-check",
                                        daemon=True)

    def start(self) -> None:
        log.info('msg="enabled corruption checking" local-member-id=%x interval=%ss',
                 self.member.member_id, self.interval)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.wait(self.interval):
            if not self.member.is_leader():
                continue
            try:
                self.check()
            except Exception as exc:  # noqa: BLE001 - the next round tries again
                log.warning('msg="failed to check hash KV" error="%s"', exc)

    def check(self) -> bool:
        """One round; True when it raised the CORRUPT alarm."""
        m = self.member
        first = local_hash(m)
        peers = asyncio.run_coroutine_threadsafe(
            peer_hashes(m, first.revision, m.request_timeout), m.loop
        ).result(m.request_timeout * (len(m.members) + 1))
        m.wait_linearizable()
        second = local_hash(m)
        found = leader_findings(first, second, peers)
        for line in found:
            log.warning(line)
        log.info('msg="finished peer corruption check" number-of-peers-checked=%d',
                 sum(p.resp is not None for p in peers))
        if not found:
            return False
        m.propose("alarm", pb.AlarmRequest(action=pb.AlarmRequest.ACTIVATE, memberID=0,
                                           alarm=pb.CORRUPT))
        return True
