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
  apply-process  as no-apply, but the apply stage hands each batch to a child process
               that applies it for real (the server's Applier over a state db of its
               own, committed as the server commits) and sends back what a batch
               produces (responses, events, pending rows), which the server decodes:
               what taking the apply off the server's GIL could give

The store is left behind the log, so only a Put-only load measures anything; a server
run this way is thrown away after. Without KUBEKV_STAGE_BOUND nothing is patched; with
any other value every Python process that loads this file exits at once.
"""

import os
import sys

_MODE = os.environ.get("KUBEKV_STAGE_BOUND")
_MODES = ("edge", "edge-future", "no-apply", "apply-process")
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


def _patch_apply(cut_apply, cut_inline):
    """Applier.apply and apply_inline as they are until the first _AFTER Puts were
    applied, then `cut_apply(applier, entries)` and `cut_inline(applier, entries)`;
    returns a function saying whether the cut was reached."""
    from etcdproto.kubekvpb import internal_pb2
    from etcdproto.raftpb import raft_pb2
    from kubekv_server.apply.applier import Applier

    real_apply, real_inline = Applier.apply, Applier.apply_inline
    left = _AFTER
    normal = raft_pb2.EntryNormal
    parse = internal_pb2.InternalRequest.FromString

    def puts(entries) -> int:
        return sum(1 for e in entries if e.type == normal and e.data
                   and parse(e.data).WhichOneof("request") == "put")

    def apply(self, entries):
        nonlocal left
        if left > 0:
            left -= puts(entries)
            return real_apply(self, entries)
        return cut_apply(self, entries)

    def apply_inline(self, entries):
        nonlocal left
        if left > 0:
            out = real_inline(self, entries)
            if out is not None:
                left -= puts(entries)
            return out
        return cut_inline(self, entries)

    Applier.apply, Applier.apply_inline = apply, apply_inline
    return lambda: left <= 0


def _applied_through(applier, entries, out) -> None:
    """The applier (and its BatchResult `out`) at the last of `entries`."""
    if entries:
        applier.applied_index = out.applied_index = max(applier.applied_index,
                                                        entries[-1].index)


def _no_apply() -> None:
    from etcdproto.etcdserverpb import rpc_pb2 as pb
    from etcdproto.kubekvpb import internal_pb2
    from etcdproto.raftpb import raft_pb2
    from kubekv_server.apply.applier import BatchResult

    normal = raft_pb2.EntryNormal
    parse = internal_pb2.InternalRequest.FromString

    def answered(self, entries):
        out = BatchResult(applied_index=self.applied_index)
        for e in entries:
            if e.index > self.applied_index and e.type == normal and e.data:
                resp = pb.PutResponse()
                resp.header.revision = e.index
                out.results.append((parse(e.data).id, resp))
        _applied_through(self, entries, out)
        return out

    _patch_apply(answered, answered)


def _apply_process() -> None:
    """The apply stage of the server proxied to a child process (`_child`), one batch at
    a time: the entries go out (index, term, type, data; marshal), the child's BatchResult
    comes back as bytes (marshal) and is decoded here as the server would have to: each
    response and event parsed, the pending rows rebuilt as tuples (not published: the
    parent's store stays as of the cut)."""
    import marshal
    import struct
    import subprocess
    import threading

    from etcdproto.etcdserverpb import rpc_pb2 as pb
    from etcdproto.mvccpb import kv_pb2
    from kubekv_raft.driver.runner import Runner
    from kubekv_server.apply.applier import BatchResult
    from kubekv_server.errors import EtcdError

    lock = threading.Lock()
    child: list = []
    length = struct.Struct(">I")
    event = kv_pb2.Event.FromString

    def exchange(payload: bytes) -> bytes:
        if not child:
            env = dict(os.environ, KUBEKV_STAGE_BOUND_CHILD="1")
            child.append(subprocess.Popen([sys.executable, __file__], env=env,
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE))
        proc = child[0]
        _write_all(proc.stdin.fileno(), length.pack(len(payload)) + payload)
        return _read_frame(proc.stdout.fileno(), length)

    def proxied(self, entries):
        out = BatchResult(applied_index=self.applied_index)
        wire = [(e.index, e.term, e.type, e.data) for e in entries]
        with lock:
            reply = exchange(marshal.dumps(wire))
        results, revisions, rows, kinds = marshal.loads(reply)
        for (rid, resp), kind in zip(results, kinds, strict=True):
            # `kind`: the response's message name in etcdserverpb, as the child built it
            out.results.append((rid, getattr(pb, kind).FromString(resp)
                                if isinstance(resp, bytes) else EtcdError(*resp)))
        # the events parsed and the rows rebuilt (marshal.loads) for their cost only: the
        # parent has no watcher, and its store stays as of the cut
        for _rev, evs, _size in revisions:
            for e in evs:
                event(e)
        del rows
        _applied_through(self, entries, out)
        return out

    # every batch goes to the child, through the apply stage: none applied inline
    cut = _patch_apply(proxied, lambda _applier, _entries: None)
    real_here = Runner._apply_here

    def apply_here(self, written):
        # the log thread would wait out the child's round trip before its next write:
        # the batch goes to the apply thread instead, which is the apply process's proxy
        if not cut():
            return real_here(self, written)
        self._start_apply()

    Runner._apply_here = apply_here


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _read_frame(fd: int, length) -> bytes:
    head = b""
    while len(head) < 4:
        more = os.read(fd, 4 - len(head))
        if not more:
            raise EOFError("the other side of the apply pipe closed")
        head += more
    n, = length.unpack(head)
    parts, got = [], 0
    while got < n:
        more = os.read(fd, min(n - got, 1 << 20))
        if not more:
            raise EOFError("the other side of the apply pipe closed")
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _child() -> None:
    """The apply process: a fresh state db in a temp dir, the server's Applier over it;
    batches in on stdin, their results out on stdout, until stdin closes."""
    import marshal
    import shutil
    import struct
    import tempfile
    import time

    from etcdproto.raftpb import raft_pb2
    from kubekv_server.apply.applier import Applier
    from kubekv_server.auth import AuthStore
    from kubekv_server.auth.tokens import provider_from_flags
    from kubekv_server.backend.state_db import Backend
    from kubekv_server.errors import EtcdError
    from kubekv_server.lease import LeaseStore
    from kubekv_server.mvcc import MVCCStore

    length = struct.Struct(">I")
    tmp = tempfile.mkdtemp(prefix="kubekv-apply-child-")
    try:
        backend = Backend(tmp + "/db")
        auth = AuthStore(backend, provider_from_flags("simple", 300), False,
                         applied_index=lambda: 0)
        applier = Applier(backend, MVCCStore(backend.env), LeaseStore(backend, 5), auth=auth)
        fin, fout = sys.stdin.fileno(), sys.stdout.fileno()
        applied = answered = 0
        apply_cpu = 0.0  # thread CPU inside Applier.apply alone
        while True:
            try:
                wire = marshal.loads(_read_frame(fin, length))
            except EOFError:  # the server stopped: say what was done, in its log
                print(f"stage_bound apply-process: {applied} entries applied, {answered} "
                      f"requests answered, {time.process_time():.2f} s CPU in all (start-up "
                      f"included), {apply_cpu:.2f} s in Applier.apply", file=sys.stderr)
                return
            entries = [raft_pb2.Entry(index=i, term=t, type=ty, data=d)
                       for i, t, ty, d in wire]
            t = time.thread_time()
            out = applier.apply(entries)
            apply_cpu += time.thread_time() - t
            applied += len(entries)
            answered += len(out.results)
            results = [(rid, (r.code, r.message) if isinstance(r, EtcdError)
                        else r.SerializeToString()) for rid, r in out.results]
            revisions = [(rev, [ev.SerializeToString() for ev in evs], size)
                         for rev, evs, size in out.revisions]
            reply = marshal.dumps((results, revisions, list(out.rows),
                                   [type(r).__name__ for _, r in out.results]))
            _write_all(fout, length.pack(len(reply)) + reply)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if os.environ.get("KUBEKV_STAGE_BOUND_CHILD"):
    pass  # the apply process itself: nothing patched (it runs `_child` as a script)
elif _MODE in ("edge", "edge-future"):
    _edge(_MODE == "edge")
elif _MODE == "no-apply":
    _no_apply()
elif _MODE == "apply-process":
    _apply_process()
elif _MODE:  # a misspelt mode would otherwise measure the whole path under its name
    sys.exit(f"KUBEKV_STAGE_BOUND={_MODE[:40]!r}: not one of {', '.join(_MODES)}")


if __name__ == "__main__" and os.environ.get("KUBEKV_STAGE_BOUND_CHILD"):
    _child()
