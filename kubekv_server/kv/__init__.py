"""etcd's KV semantics (Range, Put, DeleteRange, Txn) on top of MVCC transactions."""
