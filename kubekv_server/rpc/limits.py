"""Every bound the client port puts on what one peer can make the server hold or do.

Each limit is here with the reason for its value; docs/architecture.md ("The client
edge") lists them. Where etcd (grpc-go) or Go's net/http have a limit, the value and
the answer follow theirs.
"""

from __future__ import annotations

# ------------------------------------------------------------------ framing

# The SETTINGS_MAX_FRAME_SIZE we advertise (RFC 9113's default, as grpc-go's server):
# a larger frame is a FRAME_SIZE_ERROR before its payload is buffered.
MAX_FRAME_SIZE = 16384

# The smallest and largest SETTINGS_MAX_FRAME_SIZE a client may announce (RFC 9113 §6.5.2).
MIN_PEER_MAX_FRAME_SIZE = 16384
MAX_PEER_MAX_FRAME_SIZE = (1 << 24) - 1

# ------------------------------------------------------------------ headers

# A header block (HEADERS + CONTINUATION payloads, still compressed) larger than this
# ends the connection while it accumulates: it bounds the memory and the HPACK work a
# block can cost. A gRPC request's headers are a few hundred bytes (an auth token ~1 KiB);
# this leaves room for unusual metadata (etcd's own limit, grpc-go's, is 16 MiB).
MAX_HEADER_BLOCK_BYTES = 256 << 10

# CONTINUATION frames one header block may have: empty ones cost work without growing
# the block (the 2024 "CONTINUATION flood"); 256 KiB fits in 16 frames of 16 KiB.
MAX_CONTINUATION_FRAMES = 32

# The decoded header list (RFC 9113 §6.5.2 size: name + value + 32 per field) we accept,
# advertised as SETTINGS_MAX_HEADER_LIST_SIZE and enforced while decoding, so that a block
# of one-byte references to a large table entry (an "HPACK bomb") stops early: at most
# a few thousand references (a few ms) are decoded before the connection ends.
MAX_HEADER_LIST_SIZE = 256 << 10

# Header blocks up to this long made only of one-byte table references are decoded by
# direct lookup (a client's repeated calls); longer ones go through the decoder, which
# stops at MAX_HEADER_LIST_SIZE as it goes.
MAX_INDEXED_FAST_PATH = 256

# Distinct all-indexed header blocks whose decoded, validated request is remembered
# until the HPACK table changes (a client repeats a handful of blocks).
MAX_REMEMBERED_HEADER_BLOCKS = 64

# Validated request header lists remembered per connection (their grpc-timeout value
# blanked): a client sends a handful of shapes. Lists longer than the byte bound are
# validated each time rather than kept, so the memo holds at most ~64 KiB.
MAX_REMEMBERED_HEADER_LISTS = 32
MAX_REMEMBERED_LIST_BYTES = 2048

# ------------------------------------------------------------------ streams

# Streams one connection may have open at once, whatever --max-concurrent-streams says
# (etcd's default is 2^32-1): each open stream holds a call and its buffers. Kubernetes'
# apiserver keeps a few hundred watch streams on a connection; this is far above that.
MAX_CONCURRENT_STREAMS_CAP = 10_000

# Streams we closed with RST_STREAM whose late frames are still ignored quietly
# (RFC 9113 §5.1 "closed"); older ones are answered with STREAM_CLOSED.
MAX_RECENTLY_RESET_STREAMS = 1024

# Streams a client may reset (or have us reset for its errors) before they finished,
# per RAPID_RESET_WINDOW seconds, before the connection is closed with
# ENHANCE_YOUR_CALM (CVE-2023-44487 "rapid reset": each reset stream cost us a handler).
MAX_RESETS_PER_WINDOW = 1000
RAPID_RESET_WINDOW = 10.0

# ------------------------------------------------------------------ flow control

# What we advertise: a large initial stream window so that requests up to a few MiB
# never wait for a WINDOW_UPDATE (given back as DATA arrives, once this much came).
INITIAL_STREAM_WINDOW = 4 << 20
STREAM_WINDOW_REFILL = 1 << 20
# The connection window: given back only for request bytes a call has taken (a complete
# message handed to its handler), so it is also the bound on what one connection's calls
# hold incomplete (partial messages, an unended unary request, a plain HTTP body): a
# client that sends partial bodies runs out of window instead of growing our memory.
# At least twice the largest request message (--max-request-bytes + gRPC overhead), so
# one message can always complete. Given back in quarters.
CONNECTION_WINDOW = 16 << 20

# Output waiting for flow-control window beyond which a streaming sender waits for the
# client to read (so a slow watcher falls behind into catch-up instead of buffering here).
STREAM_HIGH_WATER = 64 << 10

# Output the connection may have waiting (socket buffer + streams' queued DATA) before
# it stops reading requests from the client: answers to a client that does not read are
# not produced faster than it takes them.
MAX_CONNECTION_OUTPUT = 16 << 20

# Control frames we owe a client that is not reading (SETTINGS/PING ACKs, RST_STREAMs)
# before the connection is closed with ENHANCE_YOUR_CALM (Go's net/http2 allows 10,000;
# grpc-go stops reading at 50). Counted while our socket buffer is not empty.
MAX_QUEUED_CONTROL_FRAMES = 10_000

# How long a lone PING ACK may wait for an answer the connection is about to write, so
# the two leave in one socket write (`Http2Connection._process`). grpc-go's clients send
# a BDP PING with their next request after every answer (at one call in flight: one per
# call); writing its ACK at once cost a socket write on the event loop between the
# request's arrival and its write's hand-off to the log thread. 2 ms: above a write's
# latency at one call in flight (~0.6 ms), far below any keepalive timeout (seconds).
PING_ACK_DELAY = 0.002

# ------------------------------------------------------------------ fairness and time

# Frames one pass over received bytes handles before the connection yields the event
# loop to others (the rest waits in the buffer, reading paused).
MAX_FRAMES_PER_PASS = 256
# Header-block bytes one pass decodes before yielding (HPACK decoding is the costly part).
MAX_HEADER_BYTES_PER_PASS = 64 << 10

# A connection that has not sent a complete HTTP/2 preface and SETTINGS (or an HTTP/1.1
# request head) within this many seconds is closed (slowloris).
PREFACE_TIMEOUT = 20.0
