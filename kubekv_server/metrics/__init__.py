"""Prometheus metrics: the text exposition format and the etcd metric families of a member."""
