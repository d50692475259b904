"""bench/sched_delay.py reads `perf sched timehist`: each row counts for the server
process its thread belongs to, nothing else's rows count, and the span recorded is
read from the events' own times (perf records less than it runs)."""

from __future__ import annotations

from bench.sched_delay import parse_timehist, recorded_span

TIMEHIST = """\
           time    cpu  task name                       wait time  sch delay   run time
                        [tid/pid]                          (msec)     (msec)     (msec)
--------------- ------  ------------------------------  ---------  ---------  ---------
    1326.012960 [0000]  perf[8557]                          0.000      0.000      0.000
    1326.013001 [0001]  python3[700]                        0.250      0.040      0.120
    1326.013101 [0000]  python3[712/700]                    1.000      0.060      0.300
    1326.013201 [0001]  etcd[900/800]                       0.100      0.010      0.050
    1326.013301 [0000]  <idle>                              0.000      0.000      0.118
    1326.013401 [0001]  raft log[713/700]                   0.500      0.100      0.200
    1326.013501 [0000]  goload[1000/999]                    0.100      0.500      0.050
"""


def test_rows_count_for_the_process_of_their_thread() -> None:
    per = parse_timehist(TIMEHIST, {700, 800})
    runs, delay, run = per[700]
    assert runs == 3
    assert abs(delay - 0.200) < 1e-9
    assert abs(run - 0.620) < 1e-9
    assert per[800][0] == 1 and abs(per[800][1] - 0.010) < 1e-9


def test_other_processes_and_idle_do_not_count() -> None:
    per = parse_timehist(TIMEHIST, {700})
    assert set(per) == {700}


def test_the_recorded_span_is_first_to_last_event() -> None:
    assert abs(recorded_span(TIMEHIST) - (1326.013501 - 1326.012960)) < 1e-9
