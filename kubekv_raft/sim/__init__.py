"""Deterministic simulation of Raft clusters: virtual clock, faulty network, crashes.

Everything is driven by one seed; the same seed replays the same run exactly. Safety
invariants are checked after every event (checker.py). See docs/raft.md.
"""

from kubekv_raft.sim.checker import SafetyChecker, SafetyViolation
from kubekv_raft.sim.cluster import SimCluster, SimulationError
from kubekv_raft.sim.network import SimNetwork

__all__ = ["SafetyChecker", "SafetyViolation", "SimCluster", "SimNetwork", "SimulationError"]
