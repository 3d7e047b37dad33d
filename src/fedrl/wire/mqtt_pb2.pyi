from fedrl.wire import fedrl_pb2 as _fedrl_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Sealed(_message.Message):
    __slots__ = ("frame", "mac")
    FRAME_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    frame: bytes
    mac: bytes
    def __init__(self, frame: _Optional[bytes] = ..., mac: _Optional[bytes] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("message_id", "whole", "manifest", "chunk", "resend")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    WHOLE_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    RESEND_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    whole: bytes
    manifest: Manifest
    chunk: Chunk
    resend: Resend
    def __init__(self, message_id: _Optional[str] = ..., whole: _Optional[bytes] = ..., manifest: _Optional[_Union[Manifest, _Mapping]] = ..., chunk: _Optional[_Union[Chunk, _Mapping]] = ..., resend: _Optional[_Union[Resend, _Mapping]] = ...) -> None: ...

class Manifest(_message.Message):
    __slots__ = ("size", "sha256", "chunk_bytes", "chunk_sha256")
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SHA256_FIELD_NUMBER: _ClassVar[int]
    size: int
    sha256: bytes
    chunk_bytes: int
    chunk_sha256: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, size: _Optional[int] = ..., sha256: _Optional[bytes] = ..., chunk_bytes: _Optional[int] = ..., chunk_sha256: _Optional[_Iterable[bytes]] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("index", "data")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    index: int
    data: bytes
    def __init__(self, index: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class Resend(_message.Message):
    __slots__ = ("indices",)
    INDICES_FIELD_NUMBER: _ClassVar[int]
    indices: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, indices: _Optional[_Iterable[int]] = ...) -> None: ...

class Request(_message.Message):
    __slots__ = ("register", "heartbeat", "task", "pull", "push", "secure")
    REGISTER_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    PULL_FIELD_NUMBER: _ClassVar[int]
    PUSH_FIELD_NUMBER: _ClassVar[int]
    SECURE_FIELD_NUMBER: _ClassVar[int]
    register: _fedrl_pb2.RegisterRequest
    heartbeat: _fedrl_pb2.HeartbeatRequest
    task: _fedrl_pb2.TaskRequest
    pull: _fedrl_pb2.PullRequest
    push: UpdateStream
    secure: _fedrl_pb2.SecureRequest
    def __init__(self, register: _Optional[_Union[_fedrl_pb2.RegisterRequest, _Mapping]] = ..., heartbeat: _Optional[_Union[_fedrl_pb2.HeartbeatRequest, _Mapping]] = ..., task: _Optional[_Union[_fedrl_pb2.TaskRequest, _Mapping]] = ..., pull: _Optional[_Union[_fedrl_pb2.PullRequest, _Mapping]] = ..., push: _Optional[_Union[UpdateStream, _Mapping]] = ..., secure: _Optional[_Union[_fedrl_pb2.SecureRequest, _Mapping]] = ...) -> None: ...

class UpdateStream(_message.Message):
    __slots__ = ("parts",)
    PARTS_FIELD_NUMBER: _ClassVar[int]
    parts: _containers.RepeatedCompositeFieldContainer[_fedrl_pb2.UpdatePart]
    def __init__(self, parts: _Optional[_Iterable[_Union[_fedrl_pb2.UpdatePart, _Mapping]]] = ...) -> None: ...

class TaskStream(_message.Message):
    __slots__ = ("parts",)
    PARTS_FIELD_NUMBER: _ClassVar[int]
    parts: _containers.RepeatedCompositeFieldContainer[_fedrl_pb2.TaskPart]
    def __init__(self, parts: _Optional[_Iterable[_Union[_fedrl_pb2.TaskPart, _Mapping]]] = ...) -> None: ...

class ModelStream(_message.Message):
    __slots__ = ("parts",)
    PARTS_FIELD_NUMBER: _ClassVar[int]
    parts: _containers.RepeatedCompositeFieldContainer[_fedrl_pb2.ModelPart]
    def __init__(self, parts: _Optional[_Iterable[_Union[_fedrl_pb2.ModelPart, _Mapping]]] = ...) -> None: ...

class Refusal(_message.Message):
    __slots__ = ("reason", "message")
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    reason: str
    message: str
    def __init__(self, reason: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class Reply(_message.Message):
    __slots__ = ("registration", "task", "model", "ack", "refusal", "secure")
    REGISTRATION_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    REFUSAL_FIELD_NUMBER: _ClassVar[int]
    SECURE_FIELD_NUMBER: _ClassVar[int]
    registration: _fedrl_pb2.Registration
    task: TaskStream
    model: ModelStream
    ack: _fedrl_pb2.Ack
    refusal: Refusal
    secure: _fedrl_pb2.SecureReply
    def __init__(self, registration: _Optional[_Union[_fedrl_pb2.Registration, _Mapping]] = ..., task: _Optional[_Union[TaskStream, _Mapping]] = ..., model: _Optional[_Union[ModelStream, _Mapping]] = ..., ack: _Optional[_Union[_fedrl_pb2.Ack, _Mapping]] = ..., refusal: _Optional[_Union[Refusal, _Mapping]] = ..., secure: _Optional[_Union[_fedrl_pb2.SecureReply, _Mapping]] = ...) -> None: ...
