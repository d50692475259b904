"""Cluster membership as the state machine sees it: members and the Raft ConfState.

Pure functions over plain data. Members are dicts {id, name, peerURLs,
clientURLs, isLearner} (the JSON kept in the state database and served by
MemberList); a ConfChange carries the member it adds or updates as JSON in its
context, as etcd's does.
"""

from __future__ import annotations

import copy
import json

from etcdproto.raftpb import raft_pb2


def member_from_context(cc: raft_pb2.ConfChange) -> dict | None:
    if not cc.context:
        return None
    try:
        m = json.loads(cc.context)
    except ValueError:
        return None
    return m if isinstance(m, dict) else None


def apply_conf_change(
    members: list[dict], cs: raft_pb2.ConfState, cc: raft_pb2.ConfChange
) -> tuple[list[dict], raft_pb2.ConfState]:
    """The members and ConfState after a (simple, v1) conf change, as etcd applies them.

    AddNode adds a voter, or promotes the learner with that id; AddLearnerNode adds
    a learner; RemoveNode removes either; UpdateNode replaces the peer URLs.
    """
    members = copy.deepcopy(members)
    voters, learners = list(cs.voters), list(cs.learners)
    by_id = {m["id"]: m for m in members}
    node = cc.node_id
    ctx = member_from_context(cc)
    if cc.type == raft_pb2.ConfChangeAddNode:
        if node in learners:
            learners.remove(node)
        if node not in voters:
            voters.append(node)
        if node in by_id:
            by_id[node]["isLearner"] = False
        elif ctx is not None:
            members.append(_member(node, ctx, learner=False))
    elif cc.type == raft_pb2.ConfChangeAddLearnerNode:
        if node not in voters and node not in learners:
            learners.append(node)
        if node not in by_id and ctx is not None:
            members.append(_member(node, ctx, learner=True))
    elif cc.type == raft_pb2.ConfChangeRemoveNode:
        voters = [v for v in voters if v != node]
        learners = [v for v in learners if v != node]
        members = [m for m in members if m["id"] != node]
    elif cc.type == raft_pb2.ConfChangeUpdateNode:
        if node in by_id and ctx is not None and ctx.get("peerURLs"):
            by_id[node]["peerURLs"] = sorted(ctx["peerURLs"])
    members.sort(key=lambda m: m["id"])
    return members, raft_pb2.ConfState(voters=sorted(voters), learners=sorted(learners))


def _member(node: int, ctx: dict, learner: bool) -> dict:
    return {
        "id": node,
        "name": ctx.get("name", ""),
        "peerURLs": sorted(ctx.get("peerURLs", [])),
        "clientURLs": list(ctx.get("clientURLs", [])),
        "isLearner": learner,
    }


def set_attributes(members: list[dict], member_id: int, name: str,
                   client_urls: list[str]) -> list[dict]:
    """Record a member's published name and client URLs."""
    members = copy.deepcopy(members)
    for m in members:
        if m["id"] == member_id:
            m["name"] = name
            m["clientURLs"] = list(client_urls)
    return members


def conf_change(kind: int, node_id: int, member: dict | None = None) -> raft_pb2.ConfChange:
    """A ConfChange with the member as its JSON context."""
    ctx = json.dumps(member, sort_keys=True).encode() if member is not None else b""
    return raft_pb2.ConfChange(type=kind, node_id=node_id, context=ctx)
