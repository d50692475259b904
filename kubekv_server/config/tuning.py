"""kubekv's own tuning knobs: intervals and sizes etcd fixes in code, which kubekv's
tests shorten. etcd's Go tests set them in-process; kubekv's tests start real server
processes, so these are read from ``KUBEKV_*`` environment variables, once, when the
configuration is parsed (not flags: the command line stays etcd's)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping


@dataclasses.dataclass(frozen=True)
class Tuning:
    """The knobs the environment sets; 0 keeps the default of the component concerned."""

    # seconds between lease checkpoints (lease/lessor.py: etcd's 5 minutes)
    lease_checkpoint_interval: float = 0.0
    # seconds between revision-mode auto compactions (member/auto_compaction.py: 5 minutes)
    revision_compaction_interval: float = 0.0
    # revisions kept in memory for watch streams (watch/hub.py)
    watch_recent_revisions: int = 0
    # catch-up and control responses queued per watch stream (watch/hub.py)
    watch_max_pending: int = 0


# variable → (field, parser)
_VARIABLES = {
    "KUBEKV_LEASE_CHECKPOINT_INTERVAL": ("lease_checkpoint_interval", float),
    "KUBEKV_AUTO_COMPACTION_REVISION_INTERVAL": ("revision_compaction_interval", float),
    "KUBEKV_WATCH_RECENT_REVISIONS": ("watch_recent_revisions", int),
    "KUBEKV_WATCH_MAX_PENDING": ("watch_max_pending", int),
}


def from_environment(environ: Mapping[str, str]) -> Tuning:
    """The knobs from the environment; a value that does not parse raises ValueError."""
    return Tuning(**{field: parse(environ[key]) for key, (field, parse) in _VARIABLES.items()
                     if environ.get(key)})
