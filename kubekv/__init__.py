"""kubekv's public Python API: the names a project imports after `pip install kubekv`.

- `kubekv.embed`: start a kubekv member or a 3-member cluster as real server processes
  on free loopback ports with temporary data dirs, for tests (what Go's
  `go.etcd.io/etcd/server/v3/embed` is to Go programs, but out of process).
- `kubekv.pytest_plugin`: pytest fixtures (`etcd_endpoint`, `etcd_url`, `kubekv_member`,
  `kubekv_cluster`) built on `kubekv.embed`, registered through the `pytest11` entry point.

The server itself lives in `kubekv_server` (run it with the `kubekv` command); nothing is
imported here eagerly, so `import kubekv` stays cheap.
"""
