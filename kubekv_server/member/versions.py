"""The etcd versions a kubekv member reports (Status, /version, metrics, `--version`)."""

SERVER_VERSION = "3.5.17"
CLUSTER_VERSION = "3.5.0"
