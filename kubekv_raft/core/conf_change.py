"""Membership changes: simple changes, entering and leaving joint consensus, and restore.

A port of etcd-io/raft's confchange package. Every operation works on a copy of the
tracker's config and progress map and returns the new pair, or raises ConfChangeError.
"""

from __future__ import annotations

from etcdproto.raftpb import raft_pb2 as pb
from kubekv_raft.core.errors import RaftError
from kubekv_raft.core.progress import Inflights, Progress
from kubekv_raft.core.quorum import JointConfig
from kubekv_raft.core.tracker import ProgressTracker, TrackerConfig

__all__ = [
    "ConfChangeError",
    "Changer",
    "restore",
    "to_v2",
    "enter_joint",
    "leave_joint",
    "conf_change_to_entry",
]

ProgressMap = dict[int, Progress]


class ConfChangeError(RaftError):
    """The requested membership change is not allowed from the current configuration."""


def to_v2(cc: pb.ConfChange | pb.ConfChangeV2) -> pb.ConfChangeV2:
    """A ConfChange as the equivalent ConfChangeV2 (one change, automatic transition)."""
    if isinstance(cc, pb.ConfChangeV2):
        return cc
    return pb.ConfChangeV2(
        changes=[pb.ConfChangeSingle(type=cc.type, node_id=cc.node_id)], context=cc.context
    )


def enter_joint(cc: pb.ConfChangeV2) -> tuple[bool, bool]:
    """(auto_leave, uses_joint): whether the change goes through joint consensus."""
    if cc.transition != pb.ConfChangeTransitionAuto or len(cc.changes) > 1:
        return cc.transition != pb.ConfChangeTransitionJointExplicit, True
    return False, False


def leave_joint(cc: pb.ConfChangeV2) -> bool:
    """An empty ConfChangeV2 (context aside) means: leave the joint configuration."""
    return cc.transition == pb.ConfChangeTransitionAuto and len(cc.changes) == 0


def conf_change_to_entry(cc: pb.ConfChange | pb.ConfChangeV2) -> pb.Entry:
    """The log entry carrying a membership change."""
    t = pb.EntryConfChangeV2 if isinstance(cc, pb.ConfChangeV2) else pb.EntryConfChange
    return pb.Entry(type=t, data=cc.SerializeToString())


class Changer:
    """Computes a new (config, progress) from the tracker's current one."""

    def __init__(self, tracker: ProgressTracker, last_index: int) -> None:
        self.tracker = tracker
        self.last_index = last_index

    def enter_joint(
        self, auto_leave: bool, changes: list[pb.ConfChangeSingle]
    ) -> tuple[TrackerConfig, ProgressMap]:
        """Enter a joint config: outgoing = current voters, incoming = with changes applied."""
        cfg, prs = self._check_and_copy()
        if cfg.voters.outgoing:
            raise ConfChangeError("config is already joint")
        if not cfg.voters.incoming:
            raise ConfChangeError("can't make a zero-voter config joint")
        cfg.voters = JointConfig(cfg.voters.incoming, cfg.voters.incoming)
        self._apply(cfg, prs, changes)
        cfg.auto_leave = auto_leave
        return _check_and_return(cfg, prs)

    def leave_joint(self) -> tuple[TrackerConfig, ProgressMap]:
        """Leave the joint config: drop outgoing, turn learners_next into learners."""
        cfg, prs = self._check_and_copy()
        if not cfg.voters.outgoing:
            raise ConfChangeError("can't leave a non-joint config")
        for i in cfg.learners_next:
            cfg.learners.add(i)
            prs[i].is_learner = True
        cfg.learners_next = set()
        for i in cfg.voters.outgoing:
            if i not in cfg.voters.incoming and i not in cfg.learners:
                del prs[i]
        cfg.voters = JointConfig(cfg.voters.incoming)
        cfg.auto_leave = False
        return _check_and_return(cfg, prs)

    def simple(self, changes: list[pb.ConfChangeSingle]) -> tuple[TrackerConfig, ProgressMap]:
        """Apply changes that alter at most one voter, without joint consensus."""
        cfg, prs = self._check_and_copy()
        if cfg.voters.outgoing:
            raise ConfChangeError("can't apply simple config change in joint config")
        self._apply(cfg, prs, changes)
        before = self.tracker.config.voters.incoming
        if len(before ^ cfg.voters.incoming) > 1:
            raise ConfChangeError("more than one voter changed without entering joint config")
        return _check_and_return(cfg, prs)

    def _apply(
        self, cfg: TrackerConfig, prs: ProgressMap, changes: list[pb.ConfChangeSingle]
    ) -> None:
        for cc in changes:
            if cc.node_id == 0:
                continue  # etcd ignores id 0 as a convention for "no-op"
            if cc.type == pb.ConfChangeAddNode:
                self._make_voter(cfg, prs, cc.node_id)
            elif cc.type == pb.ConfChangeAddLearnerNode:
                self._make_learner(cfg, prs, cc.node_id)
            elif cc.type == pb.ConfChangeRemoveNode:
                self._remove(cfg, prs, cc.node_id)
            elif cc.type != pb.ConfChangeUpdateNode:
                raise ConfChangeError(f"unexpected conf type {cc.type}")
        if not cfg.voters.incoming:
            raise ConfChangeError("removed all voters")

    def _make_voter(self, cfg: TrackerConfig, prs: ProgressMap, i: int) -> None:
        pr = prs.get(i)
        if pr is None:
            self._init_progress(cfg, prs, i, is_learner=False)
            return
        pr.is_learner = False
        cfg.learners.discard(i)
        cfg.learners_next.discard(i)
        cfg.voters = JointConfig(cfg.voters.incoming | {i}, cfg.voters.outgoing)

    def _make_learner(self, cfg: TrackerConfig, prs: ProgressMap, i: int) -> None:
        pr = prs.get(i)
        if pr is None:
            self._init_progress(cfg, prs, i, is_learner=True)
            return
        if pr.is_learner:
            return
        self._remove(cfg, prs, i)
        prs[i] = pr  # keep the progress
        if i in cfg.voters.outgoing:
            cfg.learners_next.add(i)  # still a voter on the outgoing side; demoted on leave
        else:
            pr.is_learner = True
            cfg.learners.add(i)

    def _remove(self, cfg: TrackerConfig, prs: ProgressMap, i: int) -> None:
        if i not in prs:
            return
        cfg.voters = JointConfig(cfg.voters.incoming - {i}, cfg.voters.outgoing)
        cfg.learners.discard(i)
        cfg.learners_next.discard(i)
        if i not in cfg.voters.outgoing:
            del prs[i]

    def _init_progress(
        self, cfg: TrackerConfig, prs: ProgressMap, i: int, is_learner: bool
    ) -> None:
        if is_learner:
            cfg.learners.add(i)
        else:
            cfg.voters = JointConfig(cfg.voters.incoming | {i}, cfg.voters.outgoing)
        # Start probing at the last index: the peer is most likely new (empty log) or
        # caught up; either way one probe round trip tells. Active so it isn't skipped.
        prs[i] = Progress(
            max(self.last_index, 1),
            Inflights(self.tracker.max_inflight),
            is_learner=is_learner,
            recent_active=True,
        )

    def _check_and_copy(self) -> tuple[TrackerConfig, ProgressMap]:
        cfg = self.tracker.config.copy()
        prs = {i: pr.copy() for i, pr in self.tracker.progress.items()}
        _check_invariants(cfg, prs)
        return cfg, prs


def _check_invariants(cfg: TrackerConfig, prs: ProgressMap) -> None:
    for i in cfg.voters.ids() | cfg.learners | cfg.learners_next:
        if i not in prs:
            raise ConfChangeError(f"no progress for {i}")
    for i in cfg.learners_next:
        if i not in cfg.voters.outgoing:
            raise ConfChangeError(f"{i} is in learners_next but not outgoing voters")
        if prs[i].is_learner:
            raise ConfChangeError(f"{i} is in learners_next but already a learner")
    for i in cfg.learners:
        if i in cfg.voters.ids():
            raise ConfChangeError(f"{i} is a learner and a voter")
        if not prs[i].is_learner:
            raise ConfChangeError(f"{i} is a learner but its progress is not")
    if not cfg.voters.outgoing:
        if cfg.learners_next:
            raise ConfChangeError("learners_next set outside a joint config")
        if cfg.auto_leave:
            raise ConfChangeError("auto_leave set outside a joint config")


def _check_and_return(cfg: TrackerConfig, prs: ProgressMap) -> tuple[TrackerConfig, ProgressMap]:
    _check_invariants(cfg, prs)
    return cfg, prs


def restore(changer: Changer, cs: pb.ConfState) -> tuple[TrackerConfig, ProgressMap]:
    """Rebuild (config, progress) for a ConfState by replaying equivalent changes.

    Mutates changer.tracker along the way, as etcd does.
    """
    outgoing = [
        pb.ConfChangeSingle(type=pb.ConfChangeAddNode, node_id=i) for i in cs.voters_outgoing
    ]
    incoming = [
        pb.ConfChangeSingle(type=pb.ConfChangeRemoveNode, node_id=i) for i in cs.voters_outgoing
    ]
    incoming += [pb.ConfChangeSingle(type=pb.ConfChangeAddNode, node_id=i) for i in cs.voters]
    incoming += [
        pb.ConfChangeSingle(type=pb.ConfChangeAddLearnerNode, node_id=i) for i in cs.learners
    ]
    incoming += [
        pb.ConfChangeSingle(type=pb.ConfChangeAddLearnerNode, node_id=i) for i in cs.learners_next
    ]
    tracker = changer.tracker

    def adopt(result: tuple[TrackerConfig, ProgressMap]) -> None:
        tracker.config, tracker.progress = result

    if not outgoing:
        for cc in incoming:
            adopt(changer.simple([cc]))
    else:
        for cc in outgoing:
            adopt(changer.simple([cc]))
        adopt(changer.enter_joint(cs.auto_leave, incoming))
    return tracker.config, tracker.progress
