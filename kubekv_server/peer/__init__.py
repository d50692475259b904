"""The peer port: Raft messages and snapshots between members over gRPC, and peer probing."""
