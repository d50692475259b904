from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class PeerHashKVRequest(_message.Message):
    __slots__ = ("revision",)
    REVISION_FIELD_NUMBER: _ClassVar[int]
    revision: int
    def __init__(self, revision: _Optional[int] = ...) -> None: ...

class PeerHashKVResponse(_message.Message):
    __slots__ = ("member_id", "hash", "revision", "compact_revision", "error")
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    COMPACT_REVISION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    member_id: int
    hash: int
    revision: int
    compact_revision: int
    error: str
    def __init__(self, member_id: _Optional[int] = ..., hash: _Optional[int] = ..., revision: _Optional[int] = ..., compact_revision: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...
