"""The state database (one LMDB environment) and its copies: Raft snapshots, etcd's bbolt files."""
