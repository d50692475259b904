"""Tools for testing kubekv clusters from the outside, usable by tests and by bench soak runs.

- `linearizability`: a Wing–Gong/Lowe linearizability checker (porcupine-style) with an
  etcd-like KV model and a register model. Pure: no server, no I/O.
- `recorder`: records client calls with monotonic timestamps as a checker history, and a
  random put/get/delete/CAS workload driver over etcd's gRPC KV API.
- `fault_proxy`: a controllable TCP proxy for member peer links (cut, heal, delay, drop,
  partitions), on 127.0.0.1 only.
- `pki`: throwaway CAs, certificates, keys and CRLs for TLS and JWT tests (no `openssl`
  command-line tool needed).
- `lazyfs`: a FUSE filesystem that keeps written data in memory until it is fsynced and
  loses it at a simulated power cut (needs /dev/fuse, libfuse3 and mfusepy).
- `polling`: `wait_for` (and `wait_for_async`), the one way tests and `kubekv.embed` poll
  for a condition.
- `cluster`: the cluster harness, `kubekv.embed`'s Cluster with gRPC stubs, fault-test
  timings and an optional fault network; `cluster_clients`: a failover KV client and a
  resuming watch over it.
- `grpc_stubs`: KV/Maintenance/Cluster stubs over one cached channel, for any server.
- `raw_socket`: send bytes, read until the server closes (wire-level comparisons).
- `hostile`: hostile-input attacks on a client port, and what they measure.
- `wal_rewrite_gate`: holds the raft log's rewrite at its first sync, so a test writes
  beside it.
"""
