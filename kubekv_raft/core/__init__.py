"""The pure Raft core: no sockets, clock, disk or unseeded randomness.

tests/raft/test_purity.py checks every module in this folder."""
