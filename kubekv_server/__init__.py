"""kubekv's server: an etcd v3-compatible member (`python -m kubekv_server`, `kubekv`)."""

# Set by kubekv.embed to its own pid: the server asks Linux to SIGKILL it when that
# process dies (cli.py), so a test process that is SIGKILLed leaves no member behind.
EXIT_WITH_PARENT_ENV = "KUBEKV_EXIT_WITH_PARENT"
