"""Stage stamps of one write across a cluster's processes (a measuring aid, not product
code): with KUBEKV_TRACE=DIR set and this directory on PYTHONPATH, every kubekv server
process patches a few methods at start-up and appends `ns member event fields` lines to
DIR/trace.<pid>. time.perf_counter_ns is CLOCK_MONOTONIC on Linux, shared by every
process, so the files merge into one timeline (bench/latency_trace/analyze.py).
Without KUBEKV_TRACE nothing is patched.
"""

import os

_DIR = os.environ.get("KUBEKV_TRACE")


def _install() -> None:  # noqa: C901 - one patch per stage
    import atexit
    import signal
    import threading
    import time

    from etcdproto.raftpb import raft_pb2 as pb
    from kubekv_raft.driver import runner as runner_mod
    from kubekv_server.peer import sender as sender_mod
    from kubekv_server.peer import stream_client
    from kubekv_server.replication import raft_node

    now = time.perf_counter_ns
    buf: list[str] = []
    lock = threading.Lock()
    path = os.path.join(_DIR, f"trace.{os.getpid()}")
    me = [0]
    name = pb.MessageType.Name

    def stamp(event: str, *fields, at: object = None) -> None:
        line = f"{now() if at is None else at} {me[0]:x} {event} " + \
            " ".join(str(f) for f in fields)
        with lock:
            buf.append(line)
            if len(buf) >= 256:
                flush()

    def flush() -> None:
        if buf:
            with open(path, "a") as f:
                f.write("\n".join(buf) + "\n")
            buf.clear()

    def flush_locked() -> None:
        with lock:
            flush()

    atexit.register(flush_locked)
    prev = signal.getsignal(signal.SIGTERM)

    def on_term(sig, frame):  # the bench stops members with SIGTERM
        flush_locked()
        if callable(prev):
            prev(sig, frame)
        else:
            raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_term)
    import sys

    argv = sys.argv
    client = argv[argv.index("--listen-client-urls") + 1] if "--listen-client-urls" in argv else ""
    stamp("start", f"pid={os.getpid()}", f"client={client.rsplit(':', 1)[-1]}")

    def msg_fields(m) -> tuple:
        last = m.entries[-1].index if m.entries else 0
        return (name(m.type), f"to={m.to:x}", f"from={m.from_:x}", f"idx={m.index}",
                f"last={last}", f"commit={m.commit}", f"n={len(m.entries)}")

    R = runner_mod.Runner
    orig_init = R.__init__

    def init(self, config, *a, **k):
        me[0] = config.id
        orig_init(self, config, *a, **k)

    R.__init__ = init

    orig_step = R.step

    def step(self, m):
        stamp("recv", *msg_fields(m))
        return orig_step(self, m)

    R.step = step

    orig_submit = R.submit

    def submit(self, items):
        stamp("submit", len(items))
        return orig_submit(self, items)

    R.submit = submit

    orig_feed = R._feed

    def feed(self):
        stamp("feed", f"inbox={len(self._inbox)}", f"props={len(self._proposals)}",
              f"ticks={self._ticks}")
        return orig_feed(self)

    R._feed = feed

    orig_handle = R._handle

    async def handle(self, rd):
        ents = rd.entries
        ce = rd.committed_entries
        hs = rd.hard_state
        stamp("ready", f"ents={ents[0].index if ents else 0}-{ents[-1].index if ents else 0}",
              f"committed={ce[0].index if ce else 0}-{ce[-1].index if ce else 0}",
              f"hs_commit={hs.commit if hs is not None else -1}", f"sync={int(rd.must_sync)}",
              "msgs=" + ",".join(name(m.type) for m in rd.messages))
        await orig_handle(self, rd)
        stamp("ready_done")

    R._handle = handle

    orig_persist = R._persist

    def persist(self, snapshot, entries, hs):
        stamp("persist", f"n={len(entries)}")
        orig_persist(self, snapshot, entries, hs)
        stamp("persist_done")

    R._persist = persist

    T = sender_mod.GrpcTransport
    orig_send = T.send

    def send(self, messages):
        for m in messages:
            stamp("send", *msg_fields(m))
        return orig_send(self, messages)

    T.send = send

    P = sender_mod._Peer
    orig_flush_peer = P.flush

    def flush_peer(self):  # whether the stream was idle (a direct write) or the task writes
        if self.queue and not self.closed:
            stamp("peer_flush", f"to={self.id:x}", f"idle={int(self.call is not None)}",
                  f"n={len(self.queue)}")
        return orig_flush_peer(self)

    P.flush = flush_peer

    S = stream_client.StreamCall
    orig_write = S.write

    async def write(self, payload):
        stamp("wire", len(payload))
        await orig_write(self, payload)

    S.write = write
    orig_write_now = getattr(S, "write_now", None)  # absent before the direct write

    def write_now(self, payload):
        stamp("wire", len(payload))
        return orig_write_now(self, payload)

    if orig_write_now is not None:
        S.write_now = write_now

    N = raft_node.RaftNode
    orig_propose = N.propose

    def propose(self, request_id, data):
        stamp("propose", request_id)
        return orig_propose(self, request_id, data)

    N.propose = propose

    orig_applied = N._applied

    def applied(self, result):
        stamp("applied", len(result.results))
        orig_applied(self, result)

    N._applied = applied

    A = raft_node._ApplierAdapter
    orig_apply = A.apply  # plain: runs on the Runner's apply thread

    def apply(self, entries):
        stamp("apply", f"{entries[0].index}-{entries[-1].index}")
        r = orig_apply(self, entries)
        stamp("apply_done")
        return r

    A.apply = apply
    orig_inline = A.apply_inline  # the loop's, while the apply thread is idle

    def apply_inline(self, entries):
        t = now()
        r = orig_inline(self, entries)
        if r is not None:  # (declined: the apply thread stamps its own)
            stamp("apply", f"{entries[0].index}-{entries[-1].index}", "inline", at=t)
            stamp("apply_done")
        return r

    A.apply_inline = apply_inline

    from kubekv_server.rpc import connection

    C = connection.Http2Connection
    orig_rx = C.data_received

    def port_of(conn) -> int:
        p = getattr(conn, "_trace_port", None)
        if p is None:
            try:
                p = conn.transport.get_extra_info("sockname")[1]
            except Exception:
                p = 0
            conn._trace_port = p
        return p

    def rx(self, data):
        stamp("net_rx", port_of(self), len(data))
        return orig_rx(self, data)

    C.data_received = rx
    orig_flush = C.flush

    def cflush(self):
        h = self.h2
        if h is not None and not self.closed and h._out:
            stamp("net_tx", port_of(self), sum(len(b) for b in h._out))
        return orig_flush(self)

    C.flush = cflush


if _DIR:
    _install()
if os.environ.get("KUBEKV_SWITCH_INTERVAL"):  # an experiment: the GIL's switch interval
    import sys

    sys.setswitchinterval(float(os.environ["KUBEKV_SWITCH_INTERVAL"]))
