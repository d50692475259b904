"""etcd's ``--force-new-cluster``: restart a member of a lost cluster as the only member.

Disaster recovery when a quorum is gone for good. As etcd's restartAsStandaloneNode:
the log's uncommitted tail is discarded, and committed configuration changes are
appended that remove every other member (and add this one if it was not a member),
so that once they are applied the member is the only voter, elects itself and keeps
all its data, member ID and cluster ID. New members can then be added as usual.
"""

from __future__ import annotations

import json
import logging

from etcdproto.raftpb import raft_pb2 as pb

log = logging.getLogger("kubekv.member")


def member_ids(conf_state: pb.ConfState, entries: list[pb.Entry]) -> set[int]:
    """etcd's getIDs: the members of ``conf_state`` after the conf changes in ``entries``."""
    ids = set(conf_state.voters) | set(conf_state.learners) | set(conf_state.voters_outgoing)
    for e in entries:
        if e.type != pb.EntryConfChange:
            continue
        cc = pb.ConfChange.FromString(e.data)
        if cc.type in (pb.ConfChangeAddNode, pb.ConfChangeAddLearnerNode):
            ids.add(cc.node_id)
        elif cc.type == pb.ConfChangeRemoveNode:
            ids.discard(cc.node_id)
    return ids


def standalone_entries(ids: set[int], self_id: int, term: int, first_index: int,
                       self_member: dict) -> list[pb.Entry]:
    """etcd's createConfigChangeEnts: add self first if missing (a voter set must never
    be empty), then remove every other member, one entry each from ``first_index``."""
    changes = []
    if self_id not in ids:
        changes.append(pb.ConfChange(type=pb.ConfChangeAddNode, node_id=self_id,
                                     context=json.dumps(self_member).encode()))
    changes += [pb.ConfChange(type=pb.ConfChangeRemoveNode, node_id=i)
                for i in sorted(ids - {self_id})]
    return [pb.Entry(term=term, index=first_index + n, type=pb.EntryConfChange,
                     data=cc.SerializeToString()) for n, cc in enumerate(changes)]


def force_standalone(storage, conf_state: pb.ConfState, applied: int, self_id: int,
                     cluster_id: int, self_member: dict) -> None:
    """Rewrite the tail of ``storage`` (a Raft log restarted at membership ``conf_state``,
    applied up to ``applied``) so that this member restarts as the only one."""
    hs, _ = storage.initial_state()
    commit = max(hs.commit, applied)
    last = storage.last_index()
    if last > commit:
        log.info('msg="discarding uncommitted WAL entries" entry-index=%d '
                 "commit-index-from-wal=%d number-of-discarded-entries=%d",
                 commit + 1, commit, last - commit)
    pending = storage.entries(applied + 1, commit + 1) if commit > applied else []
    ents = standalone_entries(member_ids(conf_state, pending), self_id, hs.term, commit + 1,
                              self_member)
    if not ents and last > commit and commit >= storage.first_index():
        ents = storage.entries(commit, commit + 1)  # rewriting it drops the tail after it
    if ents:
        storage.append(ents, pb.HardState(term=hs.term, vote=hs.vote,
                                          commit=max(commit, ents[-1].index)))
    log.info('msg="forcing restart member" cluster-id=%x local-member-id=%x commit-index=%d',
             cluster_id, self_id, storage.initial_state()[0].commit)
