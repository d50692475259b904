"""The simulated network: per-link connectivity, loss, delay, duplication and reordering."""

from __future__ import annotations

import random
from collections.abc import Iterable

__all__ = ["SimNetwork"]


class SimNetwork:
    """Decides when (if ever) each message arrives. Links are directional.

    A message crosses a->b iff both ends are connected and (a, b) is not blocked, checked
    when it is sent and again when it would arrive (a partition cuts messages in flight).
    """

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.connected: set[int] = set()
        self.blocked: set[tuple[int, int]] = set()
        self.reliable = True
        self.drop_rate = 0.1
        self.dup_rate = 0.0
        self.min_delay = 1
        self.max_delay = 5
        self.unreliable_max_delay = 27
        self.long_reordering = False
        self.long_delay_rate = 0.1
        self.long_delay_max = 2000

    # -- topology ------------------------------------------------------------------
    def can_pass(self, a: int, b: int) -> bool:
        """Whether a message from a to b gets through the topology right now."""
        return a in self.connected and b in self.connected and (a, b) not in self.blocked

    def connect(self, i: int) -> None:
        """Plug node i back in (to every other connected node not explicitly blocked)."""
        self.connected.add(i)

    def disconnect(self, i: int) -> None:
        """Unplug node i from everyone."""
        self.connected.discard(i)

    def partition(self, groups: Iterable[Iterable[int]]) -> None:
        """Block every link between different groups (both directions)."""
        gs = [set(g) for g in groups]
        self.blocked = set()
        for x, ga in enumerate(gs):
            for y, gb in enumerate(gs):
                if x != y:
                    self.blocked.update((a, b) for a in ga for b in gb)

    def block(self, a: int, b: int) -> None:
        """Block the one-way link a -> b (asymmetric partition)."""
        self.blocked.add((a, b))

    def heal(self) -> None:
        """Remove every block (connected flags are kept)."""
        self.blocked = set()

    # -- delivery ------------------------------------------------------------------
    def delays(self, a: int, b: int) -> list[int]:
        """Delays (ms) after which copies of a message a -> b arrive; [] if lost."""
        if not self.can_pass(a, b):
            return []
        rng = self.rng
        if self.reliable:
            return [rng.randint(self.min_delay, self.max_delay)]
        if rng.random() < self.drop_rate:
            return []
        d = rng.randint(0, self.unreliable_max_delay)
        if self.long_reordering and rng.random() < self.long_delay_rate:
            d = 200 + rng.randint(0, self.long_delay_max)
        out = [d]
        if self.dup_rate and rng.random() < self.dup_rate:
            out.append(rng.randint(0, self.unreliable_max_delay * 2))
        return out
