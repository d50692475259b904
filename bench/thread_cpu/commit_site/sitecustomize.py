"""How long the state db's commits stall the apply stage, for bench/thread_cpu (a
measuring aid, not product code): with KUBEKV_COMMIT_STATS=DIR set and this directory
on PYTHONPATH (`EXTRA_PYTHONPATH=.../commit_site members.py start ...`), a server
times every `Backend.commit` (the apply thread waits for it: LMDB has one writer), and
`kill -USR2 PID` appends one line to DIR/commits.PID, then starts counting anew:

    commits=N wall_s=... cpu_s=... max_ms=...

Send USR2 once before a load (to drop start-up) and once after it. Without
KUBEKV_COMMIT_STATS nothing happens.
"""

import os
import signal
import sys
import time

if os.environ.get("KUBEKV_COMMIT_STATS") and "kubekv_server" in " ".join(sys.orig_argv):
    from kubekv_server.backend import state_db

    _stats = {"commits": 0, "wall": 0.0, "cpu": 0.0, "max": 0.0}
    _commit = state_db.Backend.commit

    def _timed_commit(self: state_db.Backend) -> None:
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            _commit(self)
        finally:
            wall = time.perf_counter() - t0
            _stats["commits"] += 1
            _stats["wall"] += wall
            _stats["cpu"] += time.thread_time() - c0
            _stats["max"] = max(_stats["max"], wall)

    state_db.Backend.commit = _timed_commit

    def _dump(_sig: int, _frame: object) -> None:
        path = os.path.join(os.environ["KUBEKV_COMMIT_STATS"], f"commits.{os.getpid()}")
        with open(path, "a") as f:
            f.write(f"commits={_stats['commits']} wall_s={_stats['wall']:.4f} "
                    f"cpu_s={_stats['cpu']:.4f} max_ms={_stats['max'] * 1e3:.2f}\n")
        _stats.update(commits=0, wall=0.0, cpu=0.0, max=0.0)

    signal.signal(signal.SIGUSR2, _dump)
