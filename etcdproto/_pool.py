"""The private descriptor pool that every etcdproto module registers into.

etcd client libraries (python-etcd3, aetcd) register their own copies of the
etcdserverpb/mvccpb/authpb symbols in protobuf's default pool; keeping ours in
a pool of their own lets kubekv and those clients share one process.
"""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
