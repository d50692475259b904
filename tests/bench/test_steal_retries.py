"""The benches' answer to CPU stolen by the host (bench/loadgen.py): a cell measured
during a burst of steal is measured again, up to a bound, and what was put aside is kept."""

from __future__ import annotations

from bench import loadgen


def _fake_cells(monkeypatch, steals: list[float]) -> list[int]:
    """run_cell returns cells stolen as `steals` says, one per call; the calls made."""
    calls: list[int] = []

    def run_cell(*_args, **_kwargs) -> dict:
        calls.append(len(calls))
        return {"op": "put", "inflight": 16, "ops_per_s": 1000.0 + len(calls),
                "steal_cores": steals[len(calls) - 1], "other_busy_cores": 0.3}

    monkeypatch.setattr(loadgen, "run_cell", run_cell)
    monkeypatch.setattr(loadgen.time, "sleep", lambda _s: None)
    return calls


def test_a_stolen_window_is_measured_again_and_put_aside(monkeypatch):
    calls = _fake_cells(monkeypatch, [0.3, 0.2, 0.02])
    cell = loadgen.run_cell_unstolen(0.1, 3)
    assert len(calls) == 3
    assert cell["steal_cores"] == 0.02 and cell["ops_per_s"] == 1003.0
    assert cell["steal_retried"] == [{"ops_per_s": 1001.0, "steal_cores": 0.3},
                                     {"ops_per_s": 1002.0, "steal_cores": 0.2}]


def test_the_last_window_is_kept_once_the_tries_are_spent(monkeypatch):
    calls = _fake_cells(monkeypatch, [0.3, 0.4, 0.5, 0.0])
    cell = loadgen.run_cell_unstolen(0.1, 3)
    assert len(calls) == 3 and cell["steal_cores"] == 0.5
    assert [w["steal_cores"] for w in cell["steal_retried"]] == [0.3, 0.4]


def test_a_quiet_window_or_no_bound_measures_once(monkeypatch):
    calls = _fake_cells(monkeypatch, [0.05])
    assert loadgen.run_cell_unstolen(0.1, 3)["steal_retried"] == []
    calls = _fake_cells(monkeypatch, [0.9])
    assert loadgen.run_cell_unstolen(0, 3)["steal_retried"] == [] and len(calls) == 1


def test_other_load_shows_the_stolen_part_when_recorded():
    assert loadgen.other_load({"other_busy_cores": 0.24, "steal_cores": 0.23}) == \
        "0.24 (steal 0.23)"
    assert loadgen.other_load({"other_busy_cores": 0.24}) == "0.24"  # a run saved before


def test_machine_cpu_seconds_reads_steal():
    busy, total, stolen = loadgen.machine_cpu_seconds()
    assert 0 <= stolen <= busy <= total
