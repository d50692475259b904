"""How a member is configured: etcd's flags, environment variables and config file."""
