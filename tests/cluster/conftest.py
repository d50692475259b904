"""Fixtures for cluster fault tests: clusters of real kubekv processes, always stopped."""

from __future__ import annotations

import pytest

from kubekv_testing.cluster import Cluster


@pytest.fixture
def make_cluster(tmp_path):
    """make_cluster(size=3, faults=False, **kw) -> a started Cluster, closed after the test."""
    made: list[Cluster] = []

    def make(size: int = 3, *, faults: bool = False, start: bool = True, **kw) -> Cluster:
        c = Cluster(tmp_path / f"c{len(made)}", size, faults=faults, **kw)
        made.append(c)
        (tmp_path / f"c{len(made) - 1}").mkdir(exist_ok=True)
        if start:
            c.start()
        return c

    yield make
    for c in made:
        c.close()
