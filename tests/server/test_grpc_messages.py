"""gRPC request messages as pure logic (kubekv_server/rpc/grpc_messages.py): the reader's
prefix checks and bounds, gzip decoding, and the statuses and texts grpc-go gives etcd
3.5.1's clients (every expected text here was read off a running etcd 3.5.1)."""

from __future__ import annotations

import gzip
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from etcdproto.etcdserverpb import rpc_pb2 as pb
from kubekv_server.rpc import grpc_messages as gm

MAX = 2 << 20  # etcd's default: --max-request-bytes 1.5 MiB + 512 KiB of gRPC overhead
RANGE = pb.RangeRequest(key=b"a").SerializeToString()
REGISTERED = [b"/etcdserverpb.KV/Range", b"/etcdserverpb.KV/Put", b"/etcdserverpb.Watch/Watch"]


def framed(msg: bytes, flag: int = 0) -> bytes:
    return bytes([flag]) + len(msg).to_bytes(4, "big") + msg


def read_all(wire: bytes, encoding: str | None = None, max_bytes: int = MAX) -> list[bytes]:
    reader = gm.MessageReader(max_bytes, encoding)
    out = reader.feed(wire)
    reader.end()
    return out


def status_of(fn, *args) -> tuple[int, str]:
    with pytest.raises(gm.GrpcStatusError) as err:
        fn(*args)
    return err.value.status()


def gzip_bomb(size: int) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    return c.compress(bytes(size)) + c.flush()


# ------------------------------------------------------------------ the reader


def test_messages_come_out_whole_wherever_the_stream_is_split():
    msgs = [RANGE, b"", b"x" * 70000, pb.PutRequest(key=b"k", value=b"v").SerializeToString()]
    wire = b"".join(framed(m) for m in msgs)
    for cut in [*range(0, 12), 70005, 70010, len(wire) - 1]:
        reader = gm.MessageReader(MAX)
        got = reader.feed(wire[:cut]) + reader.feed(wire[cut:])
        reader.end()
        assert got == msgs


def test_a_unary_reader_takes_one_message_and_ignores_the_rest_unread():
    # etcd 3.5.1 answers a unary call carrying two messages (even a bad second one) OK
    reader = gm.MessageReader(MAX, single=True)
    assert reader.feed(framed(RANGE) + b"\x00\xff\xff\xff\xff") == [RANGE]
    assert reader.feed(b"\x07garbage") == []
    reader.end()


@pytest.mark.parametrize("wire, status", [
    (b"\x00\xff\xff\xff\xff",
     (8, "grpc: received message larger than max (4294967295 vs. 2097152)")),
    (b"\x00" + (MAX + 1).to_bytes(4, "big"),
     (8, "grpc: received message larger than max (2097153 vs. 2097152)")),
    (framed(RANGE, 2), (13, "grpc: received unexpected payload format 2")),
    (framed(RANGE, 255), (13, "grpc: received unexpected payload format 255")),
    (framed(gzip.compress(RANGE), 1),
     (13, "grpc: compressed flag set with identity or empty encoding")),
    (framed(RANGE)[:-1], (2, "unexpected EOF")),
    (b"\x00\x00\x00", (2, "unexpected EOF")),
])
def test_bad_prefixes_flags_and_truncation(wire, status):
    assert status_of(read_all, wire) == status


def test_an_oversize_length_is_refused_on_its_prefix_alone():
    reader = gm.MessageReader(100)
    assert status_of(reader.feed, b"\x00\x00\x00\x00\x65") == (
        8, "grpc: received message larger than max (101 vs. 100)")


def test_a_message_of_exactly_the_max_is_accepted():
    assert read_all(framed(b"y" * 100), max_bytes=100) == [b"y" * 100]


# ------------------------------------------------------------------ gzip


def test_gzip_requests_decode_including_concatenated_members():
    assert read_all(framed(gzip.compress(RANGE), 1), "gzip") == [RANGE]
    assert read_all(framed(RANGE, 0), "gzip") == [RANGE]  # flag 0 under gzip: as is
    two = gzip.compress(RANGE[:2]) + gzip.compress(RANGE[2:])
    assert read_all(framed(two, 1), "gzip") == [RANGE]


GZ = gzip.compress(RANGE)


@pytest.mark.parametrize("payload, status", [
    (b"", (13, "grpc: failed to decompress the received message EOF")),
    (b"notgzip", (13, "grpc: failed to decompress the received message unexpected EOF")),
    (b"\x1f\x8c" + bytes(20), (13, "grpc: failed to decompress the received message "
                                   "gzip: invalid header")),
    (GZ[:-8] + bytes(4) + GZ[-4:], (13, "grpc: failed to decompress the received message "
                                        "gzip: invalid checksum")),
    (GZ + b"\x00\x00", (13, "grpc: failed to decompress the received message unexpected EOF")),
    (GZ[:10] + b"\xff" * 5 + bytes(8), (13, "grpc: failed to decompress the received message "
                                            "flate: corrupt input before offset 1")),
    # grpc-go trusts the last four bytes (gzip's ISIZE) as the size before inflating
    (GZ[:-6], (8, "grpc: received message larger than max (1011548164 vs. 2097152)")),
    (gzip_bomb(3 << 20), (8, "grpc: received message larger than max (3145728 vs. 2097152)")),
    # a forged ISIZE: inflating stops at max + 1 bytes
    (gzip_bomb(3 << 20)[:-4] + b"\x10\x00\x00\x00",
     (8, "grpc: received message larger than max (2097153 vs. 2097152)")),
])
def test_bad_gzip_as_etcd_reports_it(payload, status):
    assert status_of(read_all, framed(payload, 1), "gzip") == status


def test_deflate_decodes_when_accepted():
    assert gm.decompress(zlib.compress(RANGE), "deflate", MAX) == RANGE
    assert status_of(gm.decompress, zlib.compress(bytes(5000)), "deflate", 100)[0] == 8


# ------------------------------------------------------------------ headers and names


def test_request_encodings():
    assert gm.request_encoding(None) is None
    assert gm.request_encoding(b"") is None
    assert gm.request_encoding(b"identity") is None
    assert gm.request_encoding(b"gzip") == "gzip"
    assert gm.request_encoding(b"deflate") == "deflate"  # served, where etcd 3.5.1 refuses
    for name in (b"br", b"snappy", b"GZIP"):
        assert status_of(gm.request_encoding, name) == (
            12, f'grpc: Decompressor is not installed for grpc-encoding "{name.decode()}"')
    code, message = status_of(gm.request_encoding, b"x" * 100000)
    assert code == 12 and len(message) < gm.MAX_ECHOED_NAME + 100


@pytest.mark.parametrize("path, status", [
    (b"/nope.Svc/Range", (12, "unknown service nope.Svc")),
    (b"/etcdserverpb.KV/Nope", (12, "unknown method Nope for service etcdserverpb.KV")),
    (b"/etcdserverpb.KV/", (12, "unknown method  for service etcdserverpb.KV")),
    (b"//etcdserverpb.KV/Range", (12, "unknown service /etcdserverpb.KV")),
    (b"/a/b/c", (12, "unknown service a/b")),
    (b"etcdserverpb.KV", (8, 'malformed method name: "etcdserverpb.KV"')),
    (b"/", (8, 'malformed method name: "/"')),
    (b"/etcdserverpb.KV", (8, 'malformed method name: "/etcdserverpb.KV"')),
    (b'x\xff\x01"\\\n\xe2\x82\xac', (8, 'malformed method name: "x\\xff\\x01\\"\\\\\\n€"')),
])
def test_unknown_and_malformed_paths(path, status):
    assert gm.unknown_method_status(path, REGISTERED) == status


def test_a_huge_path_is_echoed_bounded():
    for path in (b"/etcdserverpb.KV/" + b"m" * 100000, b"/" + b"s" * 100000 + b"/m",
                 b"p" * 100000, b"/" + b"\xff" * 100000 + b"/x"):
        code, message = gm.unknown_method_status(path, REGISTERED)
        assert code in (8, 12)
        assert len(message.encode()) < 4 * gm.MAX_ECHOED_NAME + 100


def test_invalid_utf8_in_a_name_shows_one_replacement_per_byte_as_go():
    assert gm.unknown_method_status(b"/a\xe2\x82/m", REGISTERED) == (
        12, "unknown service a\ufffd\ufffd")


# ------------------------------------------------------------------ unmarshal errors


@pytest.mark.parametrize("data, cls, text", [
    (b"\xff\xff\xff", pb.RangeRequest, "unexpected EOF"),
    (bytes.fromhex("8f3a99e1c2d70b44"), pb.RangeRequest, "proto: illegal wireType 7"),
    (b"\x08\xff", pb.RangeRequest, "proto: wrong wireType = 0 for field Key"),
    (b"\x0f", pb.RangeRequest, "proto: wrong wireType = 7 for field Key"),
    (b"\xf6\x01", pb.RangeRequest, "proto: illegal wireType 6"),
    (b"\x0c", pb.RangeRequest, "proto: RangeRequest: wiretype end group for non-group"),
    (b"\x00", pb.RangeRequest, "proto: RangeRequest: illegal tag 0 (wire type 0)"),
    (b"\x0a\x10ab", pb.RangeRequest, "unexpected EOF"),
    (b"\x18" + b"\xff" * 10 + b"\x01", pb.RangeRequest, "proto: integer overflow"),
    (b"\x0a" + b"\xff" * 9 + b"\x01", pb.RangeRequest,
     "proto: negative length found during unmarshaling"),
    (b"\xa3\x06", pb.RangeRequest, "unexpected EOF"),
    (b"\x0a\x02\x08\xff", pb.TxnRequest, "unexpected EOF"),
    (b"\xa3\x06\xa4\x06", pb.RangeRequest, None),  # a closed unknown group: accepted
    (b"\x0a\x02\xff\xfe", pb.AuthenticateRequest, None),  # gogo checks no UTF-8
])
def test_unmarshal_errors_as_etcds_gogo_code_words_them(data, cls, text):
    assert gm.unmarshal_error(data, cls.DESCRIPTOR) == text


def test_go_field_names():
    assert gm.go_field_name("range_end") == "RangeEnd"
    assert gm.go_field_name("ID") == "ID"
    assert gm.go_field_name("prev_kv") == "PrevKv"
    assert gm.go_field_name("_my_field_name_2") == "XMyFieldName_2"  # protoc-gen-go's example


# ------------------------------------------------------------------ fuzzing

BOUND = gm.PREFIX_LEN + 4096


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000), st.lists(st.integers(0, 3000), max_size=8),
       st.sampled_from([None, "gzip", "deflate"]), st.booleans())
def test_random_streams_end_in_messages_or_a_status(data, cuts, encoding, single):
    reader = gm.MessageReader(4096, encoding, single)
    points = sorted({c for c in cuts if c <= len(data)} | {0, len(data)})
    try:
        for a, b in zip(points, points[1:], strict=False):
            for msg in reader.feed(data[a:b]):
                assert len(msg) <= 4096
            assert reader.buffered <= BOUND
        reader.end()
    except gm.GrpcStatusError as exc:
        assert exc.code in (2, 8, 12, 13) and exc.message


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=600), st.booleans()), max_size=6),
       st.lists(st.integers(0, 5000), max_size=6))
def test_valid_streams_split_anywhere_give_back_their_messages(msgs, cuts):
    wire = b"".join(framed(gzip.compress(m), 1) if z else framed(m) for m, z in msgs)
    reader = gm.MessageReader(4096, "gzip")
    points = sorted({c for c in cuts if c <= len(wire)} | {0, len(wire)})
    got = []
    for a, b in zip(points, points[1:], strict=False):
        got += reader.feed(wire[a:b])
        assert reader.buffered <= BOUND
    reader.end()
    assert got == [m for m, _ in msgs]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_explaining_random_bytes_never_fails(data):
    for cls in (pb.RangeRequest, pb.TxnRequest, pb.WatchRequest, pb.PutRequest):
        text = gm.unmarshal_error(data, cls.DESCRIPTOR)
        assert text is None or text.startswith(("proto: ", "unexpected EOF"))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=100), st.binary(max_size=100), st.integers(0, 2**63 - 1),
       st.booleans())
def test_well_formed_requests_are_not_explained_as_errors(key, end, rev, serializable):
    msg = pb.TxnRequest(compare=[pb.Compare(key=key, range_end=end, mod_revision=rev)],
                        success=[pb.RequestOp(request_range=pb.RangeRequest(
                            key=key, revision=rev, serializable=serializable))])
    assert gm.unmarshal_error(msg.SerializeToString(), pb.TxnRequest.DESCRIPTOR) is None


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_random_gzip_payloads_decode_or_fail_with_a_status(data):
    for payload in (data, GZ[:10] + data, gzip.compress(data)[: len(data) // 2 + 10]):
        try:
            assert len(gm.decompress(payload, "gzip", 4096)) <= 4096
        except gm.GrpcStatusError as exc:
            assert exc.code in (8, 13)
