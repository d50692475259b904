"""An etcd-style in-memory network for unit tests: synchronous delivery with cut/isolate/drop."""

from __future__ import annotations

from etcdproto.raftpb import raft_pb2 as pb
from kubekv_raft.core.errors import RaftError
from kubekv_raft.core.raft import Config, Raft
from kubekv_raft.core.storage import MemoryStorage


def new_raft(i: int, peers: list[int], election: int = 10, heartbeat: int = 1, **kw) -> Raft:
    st = kw.pop("storage", None) or MemoryStorage()
    if not st.conf_state().voters and peers:
        st.set_conf_state(pb.ConfState(voters=peers, learners=kw.pop("learners", [])))
    return Raft(Config(id=i, storage=st, election_tick=election, heartbeat_tick=heartbeat, **kw))


def persist(r: Raft) -> None:
    """Make everything unstable durable, as the application would after a Ready."""
    rl = r.raft_log
    st: MemoryStorage = rl.storage  # type: ignore[assignment]
    if rl.unstable.snapshot is not None:
        st.apply_snapshot(rl.unstable.snapshot)
        rl.stable_snap_to(rl.unstable.snapshot.metadata.index)
    ents = rl.unstable_entries()
    if ents:
        st.append(ents)
        r.persisted(ents[-1].index, ents[-1].term)


def read_messages(r: Raft) -> list[pb.Message]:
    persist(r)
    r.flush_appends()
    r.flush_read_heartbeat()
    msgs, r.msgs = r.msgs, []
    return msgs


class Net:
    """Peers keyed by id; send() delivers until quiet. `cut`, `isolate`, `drop` filter."""

    def __init__(self, peers: dict[int, Raft]) -> None:
        self.peers = peers
        self.dropped: set[tuple[int, int]] = set()
        self.ignored: set[int] = set()

    @classmethod
    def of(cls, n: int, **kw) -> Net:
        ids = list(range(1, n + 1))
        return cls({i: new_raft(i, ids, **kw) for i in ids})

    def send(self, *msgs: pb.Message) -> None:
        q = list(msgs)
        while q:
            m = q.pop(0)
            if (m.from_, m.to) in self.dropped or m.type in self.ignored:
                continue
            p = self.peers.get(m.to)
            if p is None:
                continue
            try:
                p.step(m)
            except RaftError:
                pass
            q.extend(read_messages(p))

    def hup(self, i: int) -> None:
        self.send(pb.Message(from_=i, to=i, type=pb.MsgHup))

    def propose(self, i: int, data: bytes = b"somedata") -> None:
        self.send(pb.Message(from_=i, to=i, type=pb.MsgProp, entries=[pb.Entry(data=data)]))

    def cut(self, a: int, b: int) -> None:
        self.dropped |= {(a, b), (b, a)}

    def isolate(self, i: int) -> None:
        for j in self.peers:
            if j != i:
                self.cut(i, j)

    def recover(self) -> None:
        self.dropped = set()
        self.ignored = set()
