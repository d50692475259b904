"""etcd's Prometheus metrics for one member (the names, types, labels, help texts and
buckets etcd 3.5 exposes at /metrics), read from the member at scrape time or fed by its
hooks: the log's fsyncs, the state db's apply commits, refused proposals, slow applies
and read indexes, gRPC calls and their message bytes, the peer transport's bytes, send
failures, late heartbeats and probe round trips. `--metrics extensive` adds
grpc_server_handling_seconds, as etcd's grpc_prometheus handling-time histogram."""

from __future__ import annotations

import asyncio
import os
import resource
import time

from kubekv_server.metrics.exposition import (
    CONTENT_TYPE,
    Counter,
    Gauge,
    Histogram,
    Registry,
    exponential_buckets,
)

GRPC_CODES = ["OK", "Canceled", "Unknown", "InvalidArgument", "DeadlineExceeded", "NotFound",
              "AlreadyExists", "PermissionDenied", "ResourceExhausted", "FailedPrecondition",
              "Aborted", "OutOfRange", "Unimplemented", "Internal", "Unavailable", "DataLoss",
              "Unauthenticated"]
LEADER_SAMPLE_SECONDS = 0.05
# grpc_prometheus's handling-time buckets: prometheus.DefBuckets
GRPC_HANDLING_BUCKETS = [.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10]
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


class CounterFn(Gauge):
    """A counter whose value is read at scrape time."""

    kind = "counter"


class MemberMetrics:
    """The registry of one member's metrics; `render()` is the /metrics body."""

    content_type = CONTENT_TYPE

    def __init__(self, member, server_version: str, cluster_version: str) -> None:
        self.member = m = member
        r = self.registry = Registry()

        def gauge(name: str, help_text: str, fn, labels=()) -> None:
            r.add(Gauge(name, help_text, labels, fn))

        gauge("etcd_server_version", "Which version is running. 1 for 'server_version' label "
              "with current version.", lambda: [((server_version,), 1)], ("server_version",))
        gauge("etcd_cluster_version", "Which version is running. 1 for 'cluster_version' label "
              "with current cluster version", lambda: [((cluster_version,), 1)],
              ("cluster_version",))
        gauge("etcd_server_id", "Server or member ID in hexadecimal format. 1 for 'server_id' "
              "label with current ID.", lambda: [((f"{m.member_id:x}",), 1)], ("server_id",))
        gauge("etcd_server_has_leader", "Whether or not a leader exists. 1 is existence, 0 is "
              "not.", lambda: 1 if m.node.leader_id else 0)
        gauge("etcd_server_is_leader", "Whether or not this member is a leader. 1 if is, 0 "
              "otherwise.", lambda: 1 if m.node.is_leader() else 0)
        gauge("etcd_server_is_learner", "Whether or not this member is a learner. 1 if is, 0 "
              "otherwise.", self._is_learner)
        self.leader_changes = r.add(Counter(
            "etcd_server_leader_changes_seen_total", "The number of leader changes seen."))
        gauge("etcd_server_proposals_committed_total",
              "The total number of consensus proposals committed.", lambda: m.node.commit_index)
        gauge("etcd_server_proposals_applied_total",
              "The total number of consensus proposals applied.", lambda: m.node.applied_index)
        gauge("etcd_server_proposals_pending",
              "The current number of pending proposals to commit.",
              lambda: m.node.pending_proposals)
        r.add(CounterFn("etcd_server_proposals_failed_total",
                        "The total number of failed proposals seen.",
                        fn=lambda: m.node.proposals_failed))
        gauge("etcd_server_quota_backend_bytes", "Current backend storage quota size in bytes.",
              lambda: m.quota_bytes)
        gauge("etcd_mvcc_db_total_size_in_bytes",
              "Total size of the underlying database physically allocated in bytes.",
              lambda: m.backend.size_bytes())
        gauge("etcd_mvcc_db_total_size_in_use_in_bytes",
              "Total size of the underlying database logically in use in bytes.",
              lambda: m.backend.in_use_bytes())
        gauge("etcd_debugging_mvcc_current_revision", "The current revision of store.",
              lambda: m.mvcc.revisions()[0])
        gauge("etcd_debugging_mvcc_compact_revision",
              "The revision of the last compaction in store.",
              lambda: m.mvcc.revisions()[1])  # -1 before any compaction, as etcd
        gauge("etcd_debugging_mvcc_keys_total", "Total number of keys.", m.mvcc.key_count)
        for op, what in (("range", "ranges"), ("put", "puts"), ("delete", "deletes"),
                         ("txn", "txns")):
            r.add(CounterFn(f"etcd_mvcc_{op}_total",
                            f"Total number of {what} seen by this member.",
                            fn=lambda op=op: getattr(m.mvcc.counts, op)))
        hub = m.watch_hub
        gauge("etcd_debugging_mvcc_watcher_total", "Total number of watchers.",
              lambda: len(hub.synced) + len(hub.unsynced))
        gauge("etcd_debugging_mvcc_slow_watcher_total",
              "Total number of unsynced slow watchers.", lambda: len(hub.unsynced))
        self.wal_fsync = r.add(Histogram(
            "etcd_disk_wal_fsync_duration_seconds",
            "The latency distributions of fsync called by WAL.",
            exponential_buckets(0.001, 2, 14)))
        self.backend_commit = r.add(Histogram(
            "etcd_disk_backend_commit_duration_seconds",
            "The latency distributions of commit called by backend.",
            exponential_buckets(0.001, 2, 14)))
        self.grpc_started = r.add(Counter(
            "grpc_server_started_total", "Total number of RPCs started on the server.",
            ("grpc_method", "grpc_service", "grpc_type")))
        self.grpc_handled = r.add(Counter(
            "grpc_server_handled_total",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            ("grpc_code", "grpc_method", "grpc_service", "grpc_type")))
        r.add(CounterFn("etcd_server_heartbeat_send_failures_total",
                        "The total number of leader heartbeat send failures (likely overloaded "
                        "from slow disk).", fn=lambda: getattr(self._transport(),
                                                               "heartbeat_send_failures", 0)))
        r.add(CounterFn("etcd_server_slow_apply_total",
                        "The total number of slow apply requests (likely overloaded from slow "
                        "disk).", fn=lambda: m.applier.slow_applies))
        r.add(CounterFn("etcd_server_slow_read_indexes_total",
                        "The total number of pending read indexes not in sync with leader's or "
                        "timed out read index requests.", fn=lambda: m.node.slow_read_indexes))
        r.add(CounterFn("etcd_server_read_indexes_failed_total",
                        "The total number of failed read indexes seen.",
                        fn=lambda: m.node.read_indexes_failed))
        # the RPC server's calls add each message's encoded size (etcd's codec.go)
        self.received_bytes = 0
        self.sent_bytes = 0
        r.add(CounterFn("etcd_network_client_grpc_received_bytes_total",
                        "The total number of bytes received from grpc clients.",
                        fn=lambda: self.received_bytes))
        r.add(CounterFn("etcd_network_client_grpc_sent_bytes_total",
                        "The total number of bytes sent to grpc clients.",
                        fn=lambda: self.sent_bytes))
        # peers: a series once there is something to count, as etcd's CounterVecs
        r.add(CounterFn("etcd_network_peer_sent_bytes_total",
                        "The total number of bytes sent to peers.",
                        ("To",), fn=lambda: self._peer_counts("bytes_sent")))
        r.add(CounterFn("etcd_network_peer_received_bytes_total",
                        "The total number of bytes received from peers.",
                        ("From",), fn=lambda: self._peer_counts("bytes_received")))
        r.add(CounterFn("etcd_network_peer_sent_failures_total",
                        "The total number of send failures from peers.",
                        ("To",), fn=lambda: self._peer_counts("send_failures")))
        gauge("etcd_network_active_peers", "The current number of active peer connections.",
              self._active_peers, ("Local", "Remote"))
        self.peer_rtt = r.add(Histogram(
            "etcd_network_peer_round_trip_time_seconds", "Round-Trip-Time histogram between "
            "peers", exponential_buckets(0.0001, 2, 16), ("To",)))
        # --metrics extensive (etcd: grpc_prometheus.EnableHandlingTimeHistogram())
        self.timed = m.cfg.metrics == "extensive"
        self.grpc_handling: Histogram | None = None
        if self.timed:
            self.grpc_handling = r.add(Histogram(
                "grpc_server_handling_seconds", "Histogram of response latency (seconds) of "
                "gRPC that had been application-level handled by the server.",
                GRPC_HANDLING_BUCKETS, ("grpc_method", "grpc_service", "grpc_type")))
        r.add(CounterFn("process_cpu_seconds_total",
                        "Total user and system CPU time spent in seconds.", fn=_cpu_seconds))
        gauge("process_resident_memory_bytes", "Resident memory size in bytes.",
              lambda: _statm()[1])
        gauge("process_virtual_memory_bytes", "Virtual memory size in bytes.",
              lambda: _statm()[0])
        gauge("process_open_fds", "Number of open file descriptors.", _open_fds)
        gauge("process_max_fds", "Maximum number of open file descriptors.", _max_fds)
        gauge("process_start_time_seconds",
              "Start time of the process since unix epoch in seconds.", _start_time)
        gauge("os_fd_used", "The number of used file descriptors.", _open_fds)
        gauge("os_fd_limit", "The file descriptor limit.", _max_fds)
        self._leader = 0
        self._task: asyncio.Task | None = None

    # ----------------------------------------------------------------- hooks

    def attach(self, rpc_server) -> None:
        """Feed the metrics from the member and the RPC server; start the leader sampler."""
        m = self.member
        m.storage.on_sync = self.wal_fsync.observe
        m.node.add_listener(lambda batch: self.backend_commit.observe(batch.apply_seconds))
        if getattr(m, "peering", None) is not None:
            m.peering.on_rtt = self._observe_rtt
        rpc_server.observer = self
        for method in rpc_server.methods.values():  # every series present from the start
            self.grpc_started.values.setdefault(method.labels, 0.0)
            self.grpc_handled.values.setdefault(("OK", *method.labels), 0.0)
            if self.grpc_handling is not None:
                self.grpc_handling.ensure(*method.labels)
        self._task = asyncio.get_running_loop().create_task(self._sample_leader())

    def detach(self) -> None:
        if self._task is not None:
            self._task.cancel()

    # started() and handled() are called by the RPC server's calls, on the event loop
    # only (as their received/sent byte counts): the one writer of these two counters'
    # values adds to them directly, without Counter.inc's lock; a scrape reads them.

    def started(self, method) -> None:
        values = self.grpc_started.values
        labels = method.labels
        values[labels] = values.get(labels, 0.0) + 1.0

    def handled(self, method, code: int, started: float = 0.0) -> None:
        """A call ended with `code`; `started`: its perf_counter at start (0: not timed)."""
        name = GRPC_CODES[code] if 0 <= code < len(GRPC_CODES) else "Unknown"
        values = self.grpc_handled.values
        key = (name, *method.labels)
        values[key] = values.get(key, 0.0) + 1.0
        if started and self.grpc_handling is not None:
            self.grpc_handling.observe(time.perf_counter() - started, *method.labels)

    # ------------------------------------------------------------------ peers

    def _transport(self):
        peering = getattr(self.member, "peering", None)
        return peering.transport if peering is not None else None

    def _statuses(self) -> list:
        t = self._transport()
        if t is None:
            return []
        out = []
        for pid in t.peers():
            try:
                out.append(t.status(pid))
            except KeyError:  # removed meanwhile
                continue
        return out

    def _peer_counts(self, field: str) -> list[tuple[tuple[str], int]]:
        return [((f"{st.id:x}",), getattr(st, field)) for st in self._statuses()
                if getattr(st, field)]

    def _active_peers(self) -> list[tuple[tuple[str, str], int]]:
        local = f"{self.member.member_id:x}"
        return [((local, f"{st.id:x}"), int(st.active)) for st in self._statuses()]

    def _observe_rtt(self, peer_id: int, seconds: float) -> None:
        self.peer_rtt.observe(seconds, f"{peer_id:x}")

    def _observe_leader(self) -> None:
        """etcd counts a leader change whenever Raft reports a new, known leader."""
        lead = self.member.node.leader_id
        if lead and lead != self._leader:
            self.leader_changes.inc()
        if lead:
            self._leader = lead

    async def _sample_leader(self) -> None:
        # sampled, and looked at again by every scrape: metrics are attached while the
        # member still waits for its first leader, and a scrape right after the election
        # must count it
        while True:
            self._observe_leader()
            await asyncio.sleep(LEADER_SAMPLE_SECONDS)

    def _is_learner(self) -> int:
        me = self.member.member_id
        return int(any(x["id"] == me and x["isLearner"] for x in self.member.members))

    def render(self) -> bytes:
        self._observe_leader()
        return self.registry.render().encode()


def _cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _statm() -> tuple[int, int]:
    """(virtual, resident) bytes."""
    with open("/proc/self/statm") as f:
        size, rss = f.read().split()[:2]
    return int(size) * _PAGE, int(rss) * _PAGE


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _max_fds() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _start_time() -> float:
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    start_ticks = int(fields[19])  # field 22 of stat, after pid and comm
    with open("/proc/stat") as f:
        btime = next(int(line.split()[1]) for line in f if line.startswith("btime"))
    return btime + start_ticks / _CLK_TCK


__all__ = ["MemberMetrics"]
