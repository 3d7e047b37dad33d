from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SecureStepKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SECURE_STEP_UNSPECIFIED: _ClassVar[SecureStepKind]
    ADVERTISE: _ClassVar[SecureStepKind]
    SHARE: _ClassVar[SecureStepKind]
    MASK: _ClassVar[SecureStepKind]
    UNMASK: _ClassVar[SecureStepKind]
SECURE_STEP_UNSPECIFIED: SecureStepKind
ADVERTISE: SecureStepKind
SHARE: SecureStepKind
MASK: SecureStepKind
UNMASK: SecureStepKind

class VectorHeader(_message.Message):
    __slots__ = ("dtype", "length", "sha256")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    dtype: str
    length: int
    sha256: str
    def __init__(self, dtype: _Optional[str] = ..., length: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("client",)
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    client: str
    def __init__(self, client: _Optional[str] = ...) -> None: ...

class Registration(_message.Message):
    __slots__ = ("client", "experiment_yaml", "deployed_version", "heartbeat_s")
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_YAML_FIELD_NUMBER: _ClassVar[int]
    DEPLOYED_VERSION_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_S_FIELD_NUMBER: _ClassVar[int]
    client: str
    experiment_yaml: str
    deployed_version: int
    heartbeat_s: float
    def __init__(self, client: _Optional[str] = ..., experiment_yaml: _Optional[str] = ..., deployed_version: _Optional[int] = ..., heartbeat_s: _Optional[float] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("acting_version",)
    ACTING_VERSION_FIELD_NUMBER: _ClassVar[int]
    acting_version: int
    def __init__(self, acting_version: _Optional[int] = ...) -> None: ...

class HeartbeatReply(_message.Message):
    __slots__ = ("deployed_version",)
    DEPLOYED_VERSION_FIELD_NUMBER: _ClassVar[int]
    deployed_version: int
    def __init__(self, deployed_version: _Optional[int] = ...) -> None: ...

class TaskRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Train(_message.Message):
    __slots__ = ("round", "base_version", "deadline_s", "server_control", "norm")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_S_FIELD_NUMBER: _ClassVar[int]
    SERVER_CONTROL_FIELD_NUMBER: _ClassVar[int]
    NORM_FIELD_NUMBER: _ClassVar[int]
    round: int
    base_version: int
    deadline_s: float
    server_control: VectorHeader
    norm: NormStats
    def __init__(self, round: _Optional[int] = ..., base_version: _Optional[int] = ..., deadline_s: _Optional[float] = ..., server_control: _Optional[_Union[VectorHeader, _Mapping]] = ..., norm: _Optional[_Union[NormStats, _Mapping]] = ...) -> None: ...

class Wait(_message.Message):
    __slots__ = ("retry_after_s", "reason", "finished")
    RETRY_AFTER_S_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    retry_after_s: float
    reason: str
    finished: bool
    def __init__(self, retry_after_s: _Optional[float] = ..., reason: _Optional[str] = ..., finished: _Optional[bool] = ...) -> None: ...

class TaskHeader(_message.Message):
    __slots__ = ("train", "wait")
    TRAIN_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    train: Train
    wait: Wait
    def __init__(self, train: _Optional[_Union[Train, _Mapping]] = ..., wait: _Optional[_Union[Wait, _Mapping]] = ...) -> None: ...

class TaskPart(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: TaskHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[TaskHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class PullRequest(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: int
    def __init__(self, version: _Optional[int] = ...) -> None: ...

class ModelHeader(_message.Message):
    __slots__ = ("version", "round", "eval_return", "params", "norm")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    EVAL_RETURN_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    NORM_FIELD_NUMBER: _ClassVar[int]
    version: int
    round: int
    eval_return: float
    params: VectorHeader
    norm: NormStats
    def __init__(self, version: _Optional[int] = ..., round: _Optional[int] = ..., eval_return: _Optional[float] = ..., params: _Optional[_Union[VectorHeader, _Mapping]] = ..., norm: _Optional[_Union[NormStats, _Mapping]] = ...) -> None: ...

class ModelPart(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: ModelHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[ModelHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class UpdateHeader(_message.Message):
    __slots__ = ("update_id", "client", "round", "base_version", "env_steps", "metrics", "delta", "control_delta", "payload", "norm", "clients")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    UPDATE_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    ENV_STEPS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    CONTROL_DELTA_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    NORM_FIELD_NUMBER: _ClassVar[int]
    CLIENTS_FIELD_NUMBER: _ClassVar[int]
    update_id: str
    client: str
    round: int
    base_version: int
    env_steps: int
    metrics: _containers.ScalarMap[str, float]
    delta: VectorHeader
    control_delta: VectorHeader
    payload: EncodedHeader
    norm: NormStats
    clients: int
    def __init__(self, update_id: _Optional[str] = ..., client: _Optional[str] = ..., round: _Optional[int] = ..., base_version: _Optional[int] = ..., env_steps: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., delta: _Optional[_Union[VectorHeader, _Mapping]] = ..., control_delta: _Optional[_Union[VectorHeader, _Mapping]] = ..., payload: _Optional[_Union[EncodedHeader, _Mapping]] = ..., norm: _Optional[_Union[NormStats, _Mapping]] = ..., clients: _Optional[int] = ...) -> None: ...

class Moments(_message.Message):
    __slots__ = ("count", "mean", "m2")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    M2_FIELD_NUMBER: _ClassVar[int]
    count: float
    mean: _containers.RepeatedScalarFieldContainer[float]
    m2: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, count: _Optional[float] = ..., mean: _Optional[_Iterable[float]] = ..., m2: _Optional[_Iterable[float]] = ...) -> None: ...

class NormStats(_message.Message):
    __slots__ = ("obs", "returns")
    OBS_FIELD_NUMBER: _ClassVar[int]
    RETURNS_FIELD_NUMBER: _ClassVar[int]
    obs: Moments
    returns: Moments
    def __init__(self, obs: _Optional[_Union[Moments, _Mapping]] = ..., returns: _Optional[_Union[Moments, _Mapping]] = ...) -> None: ...

class EncodedHeader(_message.Message):
    __slots__ = ("encoding", "length", "sha256")
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    encoding: str
    length: int
    sha256: str
    def __init__(self, encoding: _Optional[str] = ..., length: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class UpdatePart(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: UpdateHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[UpdateHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("update_id", "round", "accepted_at", "duplicate")
    UPDATE_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_AT_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    update_id: str
    round: int
    accepted_at: float
    duplicate: bool
    def __init__(self, update_id: _Optional[str] = ..., round: _Optional[int] = ..., accepted_at: _Optional[float] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class SecureRequest(_message.Message):
    __slots__ = ("round", "step", "payload")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    round: int
    step: SecureStepKind
    payload: bytes
    def __init__(self, round: _Optional[int] = ..., step: _Optional[_Union[SecureStepKind, str]] = ..., payload: _Optional[bytes] = ...) -> None: ...

class SecureReply(_message.Message):
    __slots__ = ("client", "retry_after_s", "payload", "threshold", "done")
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_S_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    client: int
    retry_after_s: float
    payload: bytes
    threshold: int
    done: bool
    def __init__(self, client: _Optional[int] = ..., retry_after_s: _Optional[float] = ..., payload: _Optional[bytes] = ..., threshold: _Optional[int] = ..., done: _Optional[bool] = ...) -> None: ...
