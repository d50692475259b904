"""cProfile on a kubekv server's loop thread, for bench/thread_cpu (a measuring aid, not
product code): with KUBEKV_CPROF=DIR set and this directory on PYTHONPATH, a server
process profiles its main thread from start-up; `kill -USR1 PID` writes
DIR/prof.PID.N (pstats format) and starts a new profile. The first file holds start-up
and warm-up: discard it. Without KUBEKV_CPROF nothing happens.
"""

import os
import sys

if os.environ.get("KUBEKV_CPROF") and "kubekv_server" in " ".join(sys.orig_argv):
    import cProfile
    import signal

    _current = [cProfile.Profile()]
    _dumps = [0]

    def _dump(_sig: int, _frame: object) -> None:
        prof = _current[0]
        prof.disable()
        _dumps[0] += 1
        prof.dump_stats(os.path.join(os.environ["KUBEKV_CPROF"], f"prof.{os.getpid()}.{_dumps[0]}"))
        _current[0] = cProfile.Profile()
        _current[0].enable()

    signal.signal(signal.SIGUSR1, _dump)
    _current[0].enable()
