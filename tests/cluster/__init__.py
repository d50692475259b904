"""Clusters of real kubekv processes under faults (kill -9, restart, SIGSTOP, partitions
through kubekv_testing's fault proxy, membership changes), with client histories
checked for linearizability, lost acknowledged writes and revisions going backwards,
and member states compared once healed.

    pytest tests/cluster                      # the default set (~2-3 minutes)
    pytest -m soak tests/cluster              # also randomized fault schedules

The harness is `kubekv_testing.cluster`; what every test asserts is in `checks.py`.
Member logs stay in each test's tmp_path (`c0/m1.log`, ...).
"""
