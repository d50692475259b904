"""Watch: the hub of watchers (pure logic, `hub.py`); stream I/O lives in `api/watch.py`."""

from kubekv_server.watch.hub import INVALID_WATCH_ID, Response, Stream, Watcher, WatchHub

__all__ = ["INVALID_WATCH_ID", "Response", "Stream", "WatchHub", "Watcher"]
