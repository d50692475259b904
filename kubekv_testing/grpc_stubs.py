"""gRPC stubs on a server's client endpoint over one cached channel: what the single-server
harness (tests/harness.py) and the cluster harness (kubekv_testing.cluster) give tests."""

from __future__ import annotations

import grpc

from etcdproto.etcdserverpb import rpc_pb2_grpc


class GrpcStubs:
    """Mixin for an object with an `endpoint` (host:port): `channel` is opened on first use
    and closed by `_close_channel()` (when the server stops, so a restart gets a fresh
    one); `_new_channel()` may be overridden, e.g. for TLS."""

    endpoint: str
    _channel: grpc.Channel | None = None

    def _new_channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.endpoint)

    @property
    def channel(self) -> grpc.Channel:
        if self._channel is None:
            self._channel = self._new_channel()
        return self._channel

    @property
    def kv(self) -> rpc_pb2_grpc.KVStub:
        return rpc_pb2_grpc.KVStub(self.channel)

    @property
    def maintenance(self) -> rpc_pb2_grpc.MaintenanceStub:
        return rpc_pb2_grpc.MaintenanceStub(self.channel)

    @property
    def cluster(self) -> rpc_pb2_grpc.ClusterStub:
        return rpc_pb2_grpc.ClusterStub(self.channel)

    def _close_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
