"""kubekv_raft: Raft as a pure, deterministic library plus its asyncio driver.

- `core/`: the Raft state machine (a port of etcd-io/raft): no I/O, no clock; the
  application persists, sends and applies what `RawNode.ready()` hands it.
- `driver/`: the `Runner` (owns the clock, persists, sends, applies), `WALStorage` and
  `LMDBStorage`.
- `sim/`: a deterministic whole-cluster simulation of the core.

See docs/raft.md.
"""
