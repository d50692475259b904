"""How fast a stage of the write path could go with what follows it removed (a
measuring aid, not product code). With KUBEKV_STAGE_BOUND set and this directory on
PYTHONPATH, a kubekv server cuts every Put's path short once the first
KUBEKV_STAGE_BOUND_AFTER Puts (default 10,000: the preload of `kv_bench.py` and
`cluster_bench.py`, which they count afterwards) went through for real:

  edge         the handler returns the response at once: the HTTP/2 and gRPC edge, the
               request checks and the answer's write alone (a serializable read's path)
  edge-future  the same through a future resolved one loop callback later
  no-apply     proposed, through Raft, written and fsynced to the log, answered; the
               apply stage answers each entry without touching the state db

The store is left behind the log, so only a Put-only load measures anything; a server
run this way is thrown away after. Without KUBEKV_STAGE_BOUND nothing is patched; with
any other value every Python process that loads this file exits at once.
"""

import os
import sys

_MODE = os.environ.get("KUBEKV_STAGE_BOUND")
_MODES = ("edge", "edge-future", "no-apply")
_AFTER = int(os.environ.get("KUBEKV_STAGE_BOUND_AFTER", "10000"))


def _edge(direct: bool) -> None:
    from etcdproto.etcdserverpb import rpc_pb2 as pb
    from kubekv_server.member.member import Member

    real_put = Member.put
    left = _AFTER

    def put(self, r, cost):
        nonlocal left
        if left > 0:
            left -= 1
            return real_put(self, r, cost)
        resp = pb.PutResponse()
        self.header(resp.header, 1)
        if direct:
            return resp
        fut = self.loop.create_future()
        self.loop.call_soon(fut.set_result, resp)
        return fut

    Member.put = put


def _no_apply() -> None:
    from etcdproto.etcdserverpb import rpc_pb2 as pb
    from etcdproto.kubekvpb import internal_pb2
    from etcdproto.raftpb import raft_pb2
    from kubekv_server.apply.applier import Applier, BatchResult

    real_apply, real_inline = Applier.apply, Applier.apply_inline
    left = _AFTER
    normal = raft_pb2.EntryNormal
    parse = internal_pb2.InternalRequest.FromString

    def answered(self, entries):
        out = BatchResult(applied_index=self.applied_index)
        for e in entries:
            if e.index > self.applied_index and e.type == normal and e.data:
                resp = pb.PutResponse()
                resp.header.revision = e.index
                out.results.append((parse(e.data).id, resp))
        if entries:
            self.applied_index = out.applied_index = max(self.applied_index,
                                                         entries[-1].index)
        return out

    def puts(entries) -> int:
        return sum(1 for e in entries if e.type == normal and e.data
                   and parse(e.data).WhichOneof("request") == "put")

    def apply(self, entries):
        nonlocal left
        if left > 0:
            left -= puts(entries)
            return real_apply(self, entries)
        return answered(self, entries)

    def apply_inline(self, entries):
        nonlocal left
        if left > 0:
            out = real_inline(self, entries)
            if out is not None:
                left -= puts(entries)
            return out
        return answered(self, entries)

    Applier.apply, Applier.apply_inline = apply, apply_inline


if _MODE in ("edge", "edge-future"):
    _edge(_MODE == "edge")
elif _MODE == "no-apply":
    _no_apply()
elif _MODE:  # a misspelt mode would otherwise measure the whole path under its name
    sys.exit(f"KUBEKV_STAGE_BOUND={_MODE[:40]!r}: not one of {', '.join(_MODES)}")
