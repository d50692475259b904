"""Whether a data dir's Raft log and state db can be reconciled at start-up (pure).

A restart replays the log entries after the state db's applied index, so the log must
hold every index from just after the applied one: not compacted past it, and not
ending before it. A member whose identity was once committed (its marker file exists)
must still have it in the state db. When these facts fail, data was lost under the
member (a power cut with --unsafe-no-fsync, a disk restored in part, a wrong --wal-dir)
and starting would serve a store that silently lacks acknowledged writes, or crash
later. etcd refuses to start in these situations ("failed to recover v3 backend from
snapshot", "wal: ..."); so does kubekv, with `unreconcilable` naming what is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

REMEDY = ("restore the member's data dir from a snapshot (etcdctl snapshot restore), or "
          "remove the member (etcdctl member remove) and add it back with an empty data dir")


@dataclass(frozen=True)
class DataDirFacts:
    """What start-up reads from a data dir before writing to it."""

    marker: bool  # the member's identity was committed once (member/identity exists)
    identity: bool  # the state db holds a member id
    applied_index: int  # the state db's applied index
    log_first_index: int  # first entry the log holds (compaction point + 1)
    log_last_index: int  # last entry the log holds (the compaction point if none)


def unreconcilable(data_dir: str, facts: DataDirFacts) -> str | None:
    """The reason a member must not start on `data_dir`, or None if it may."""
    f = facts
    if f.marker and not f.identity:
        return (f"wal: member data lost in {data_dir}: it held a committed member, but the "
                f"state db holds none (applied index {f.applied_index}) and the log ends at "
                f"index {f.log_last_index} (unsynced data lost at a power cut, as under "
                f"--unsafe-no-fsync); {REMEDY}")
    if not f.identity:
        return None  # a new member, or one whose first start ended before it committed
    if f.applied_index > f.log_last_index:
        return (f"wal: log in {data_dir} ends at index {f.log_last_index} but the state db "
                f"is applied up to index {f.applied_index} (the log lost its tail); {REMEDY}")
    if f.applied_index < f.log_first_index - 1:
        return (f"failed to recover v3 backend from snapshot: the log in {data_dir} is "
                f"compacted up to index {f.log_first_index - 1} but the state db is applied "
                f"only up to index {f.applied_index} (the entries in between are gone); "
                f"{REMEDY}")
    return None
