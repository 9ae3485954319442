from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CategoryState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CATEGORY_STATE_UNSPECIFIED: _ClassVar[CategoryState]
    LOADING: _ClassVar[CategoryState]
    READY: _ClassVar[CategoryState]
    UNLOADING: _ClassVar[CategoryState]
    FAILED: _ClassVar[CategoryState]
CATEGORY_STATE_UNSPECIFIED: CategoryState
LOADING: CategoryState
READY: CategoryState
UNLOADING: CategoryState
FAILED: CategoryState

class RawImage(_message.Message):
    __slots__ = ("pixels", "height", "width", "channels")
    PIXELS_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    pixels: bytes
    height: int
    width: int
    channels: int
    def __init__(self, pixels: _Optional[bytes] = ..., height: _Optional[int] = ..., width: _Optional[int] = ..., channels: _Optional[int] = ...) -> None: ...

class Image(_message.Message):
    __slots__ = ("encoded", "raw")
    ENCODED_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    encoded: bytes
    raw: RawImage
    def __init__(self, encoded: _Optional[bytes] = ..., raw: _Optional[_Union[RawImage, _Mapping]] = ...) -> None: ...

class Box(_message.Message):
    __slots__ = ("x0", "y0", "x1", "y1")
    X0_FIELD_NUMBER: _ClassVar[int]
    Y0_FIELD_NUMBER: _ClassVar[int]
    X1_FIELD_NUMBER: _ClassVar[int]
    Y1_FIELD_NUMBER: _ClassVar[int]
    x0: float
    y0: float
    x1: float
    y1: float
    def __init__(self, x0: _Optional[float] = ..., y0: _Optional[float] = ..., x1: _Optional[float] = ..., y1: _Optional[float] = ...) -> None: ...

class DetectRequest(_message.Message):
    __slots__ = ("image", "category", "version", "box")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BOX_FIELD_NUMBER: _ClassVar[int]
    image: Image
    category: str
    version: str
    box: Box
    def __init__(self, image: _Optional[_Union[Image, _Mapping]] = ..., category: _Optional[str] = ..., version: _Optional[str] = ..., box: _Optional[_Union[Box, _Mapping]] = ...) -> None: ...

class Landmark(_message.Message):
    __slots__ = ("x", "y", "confidence", "name")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    x: float
    y: float
    confidence: float
    name: str
    def __init__(self, x: _Optional[float] = ..., y: _Optional[float] = ..., confidence: _Optional[float] = ..., name: _Optional[str] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ("decode_ms", "queue_ms", "compute_ms", "total_ms")
    DECODE_MS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    decode_ms: float
    queue_ms: float
    compute_ms: float
    total_ms: float
    def __init__(self, decode_ms: _Optional[float] = ..., queue_ms: _Optional[float] = ..., compute_ms: _Optional[float] = ..., total_ms: _Optional[float] = ...) -> None: ...

class DetectResponse(_message.Message):
    __slots__ = ("landmarks", "category", "version", "adapter_sha256", "box", "timings")
    LANDMARKS_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_SHA256_FIELD_NUMBER: _ClassVar[int]
    BOX_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    landmarks: _containers.RepeatedCompositeFieldContainer[Landmark]
    category: str
    version: str
    adapter_sha256: str
    box: Box
    timings: Timings
    def __init__(self, landmarks: _Optional[_Iterable[_Union[Landmark, _Mapping]]] = ..., category: _Optional[str] = ..., version: _Optional[str] = ..., adapter_sha256: _Optional[str] = ..., box: _Optional[_Union[Box, _Mapping]] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ...) -> None: ...

class DetectBatchRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[DetectRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[DetectRequest, _Mapping]]] = ...) -> None: ...

class DetectBatchResponse(_message.Message):
    __slots__ = ("responses",)
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    responses: _containers.RepeatedCompositeFieldContainer[DetectResponse]
    def __init__(self, responses: _Optional[_Iterable[_Union[DetectResponse, _Mapping]]] = ...) -> None: ...

class RegisterAdapterRequest(_message.Message):
    __slots__ = ("category", "version", "data", "path", "activate")
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    ACTIVATE_FIELD_NUMBER: _ClassVar[int]
    category: str
    version: str
    data: bytes
    path: str
    activate: bool
    def __init__(self, category: _Optional[str] = ..., version: _Optional[str] = ..., data: _Optional[bytes] = ..., path: _Optional[str] = ..., activate: _Optional[bool] = ...) -> None: ...

class RegisterAdapterResponse(_message.Message):
    __slots__ = ("category", "created")
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    category: CategoryInfo
    created: bool
    def __init__(self, category: _Optional[_Union[CategoryInfo, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class SetActiveVersionRequest(_message.Message):
    __slots__ = ("category", "version")
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    category: str
    version: str
    def __init__(self, category: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class UnregisterAdapterRequest(_message.Message):
    __slots__ = ("category", "version")
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    category: str
    version: str
    def __init__(self, category: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class UnregisterAdapterResponse(_message.Message):
    __slots__ = ("removed_versions",)
    REMOVED_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    removed_versions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, removed_versions: _Optional[_Iterable[str]] = ...) -> None: ...

class ListCategoriesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class VersionInfo(_message.Message):
    __slots__ = ("version", "state", "sha256", "size_bytes", "created", "trained", "landmark_names", "precision", "precision_reason")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    TRAINED_FIELD_NUMBER: _ClassVar[int]
    LANDMARK_NAMES_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    PRECISION_REASON_FIELD_NUMBER: _ClassVar[int]
    version: str
    state: CategoryState
    sha256: str
    size_bytes: int
    created: str
    trained: str
    landmark_names: _containers.RepeatedScalarFieldContainer[str]
    precision: str
    precision_reason: str
    def __init__(self, version: _Optional[str] = ..., state: _Optional[_Union[CategoryState, str]] = ..., sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., created: _Optional[str] = ..., trained: _Optional[str] = ..., landmark_names: _Optional[_Iterable[str]] = ..., precision: _Optional[str] = ..., precision_reason: _Optional[str] = ...) -> None: ...

class CategoryInfo(_message.Message):
    __slots__ = ("name", "state", "num_landmarks", "input_size", "active_version", "active_sha256", "core_sha256", "versions", "error")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    NUM_LANDMARKS_FIELD_NUMBER: _ClassVar[int]
    INPUT_SIZE_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_SHA256_FIELD_NUMBER: _ClassVar[int]
    CORE_SHA256_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    name: str
    state: CategoryState
    num_landmarks: int
    input_size: int
    active_version: str
    active_sha256: str
    core_sha256: str
    versions: _containers.RepeatedCompositeFieldContainer[VersionInfo]
    error: str
    def __init__(self, name: _Optional[str] = ..., state: _Optional[_Union[CategoryState, str]] = ..., num_landmarks: _Optional[int] = ..., input_size: _Optional[int] = ..., active_version: _Optional[str] = ..., active_sha256: _Optional[str] = ..., core_sha256: _Optional[str] = ..., versions: _Optional[_Iterable[_Union[VersionInfo, _Mapping]]] = ..., error: _Optional[str] = ...) -> None: ...

class ListCategoriesResponse(_message.Message):
    __slots__ = ("categories",)
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    categories: _containers.RepeatedCompositeFieldContainer[CategoryInfo]
    def __init__(self, categories: _Optional[_Iterable[_Union[CategoryInfo, _Mapping]]] = ...) -> None: ...

class ServerInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CacheStats(_message.Message):
    __slots__ = ("capacity_bytes", "resident_bytes", "entries", "hits", "misses", "evictions")
    CAPACITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    RESIDENT_BYTES_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    MISSES_FIELD_NUMBER: _ClassVar[int]
    EVICTIONS_FIELD_NUMBER: _ClassVar[int]
    capacity_bytes: int
    resident_bytes: int
    entries: int
    hits: int
    misses: int
    evictions: int
    def __init__(self, capacity_bytes: _Optional[int] = ..., resident_bytes: _Optional[int] = ..., entries: _Optional[int] = ..., hits: _Optional[int] = ..., misses: _Optional[int] = ..., evictions: _Optional[int] = ...) -> None: ...

class ServerInfoResponse(_message.Message):
    __slots__ = ("core_sha256", "device", "backend", "server_version", "api_version", "versions", "input_size", "core_num_landmarks", "ready", "cache", "precision", "forward_threads")
    class VersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CORE_SHA256_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    API_VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    INPUT_SIZE_FIELD_NUMBER: _ClassVar[int]
    CORE_NUM_LANDMARKS_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    FORWARD_THREADS_FIELD_NUMBER: _ClassVar[int]
    core_sha256: str
    device: str
    backend: str
    server_version: str
    api_version: str
    versions: _containers.ScalarMap[str, str]
    input_size: int
    core_num_landmarks: int
    ready: bool
    cache: CacheStats
    precision: str
    forward_threads: int
    def __init__(self, core_sha256: _Optional[str] = ..., device: _Optional[str] = ..., backend: _Optional[str] = ..., server_version: _Optional[str] = ..., api_version: _Optional[str] = ..., versions: _Optional[_Mapping[str, str]] = ..., input_size: _Optional[int] = ..., core_num_landmarks: _Optional[int] = ..., ready: _Optional[bool] = ..., cache: _Optional[_Union[CacheStats, _Mapping]] = ..., precision: _Optional[str] = ..., forward_threads: _Optional[int] = ...) -> None: ...

class AdaptationOptions(_message.Message):
    __slots__ = ("category", "preset", "steps", "activate", "num_landmarks", "names", "image_size", "path")
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    PRESET_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    ACTIVATE_FIELD_NUMBER: _ClassVar[int]
    NUM_LANDMARKS_FIELD_NUMBER: _ClassVar[int]
    NAMES_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    category: str
    preset: str
    steps: int
    activate: bool
    num_landmarks: int
    names: str
    image_size: int
    path: str
    def __init__(self, category: _Optional[str] = ..., preset: _Optional[str] = ..., steps: _Optional[int] = ..., activate: _Optional[bool] = ..., num_landmarks: _Optional[int] = ..., names: _Optional[str] = ..., image_size: _Optional[int] = ..., path: _Optional[str] = ...) -> None: ...

class FileChunk(_message.Message):
    __slots__ = ("name", "data")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    data: bytes
    def __init__(self, name: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class StartAdaptationRequest(_message.Message):
    __slots__ = ("options", "chunk")
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    options: AdaptationOptions
    chunk: FileChunk
    def __init__(self, options: _Optional[_Union[AdaptationOptions, _Mapping]] = ..., chunk: _Optional[_Union[FileChunk, _Mapping]] = ...) -> None: ...

class GetAdaptationRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class CancelAdaptationRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ListAdaptationsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AdaptationJob(_message.Message):
    __slots__ = ("id", "category", "state", "step", "steps", "phase", "validation", "validation_passed", "calibration_accepted", "calibration", "images", "skipped", "version", "activated", "error", "created", "updated")
    class ValidationEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class CalibrationEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class SkippedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_PASSED_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ACTIVATED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    id: str
    category: str
    state: str
    step: int
    steps: int
    phase: str
    validation: _containers.ScalarMap[str, float]
    validation_passed: bool
    calibration_accepted: bool
    calibration: _containers.ScalarMap[str, float]
    images: int
    skipped: _containers.ScalarMap[str, int]
    version: str
    activated: bool
    error: str
    created: float
    updated: float
    def __init__(self, id: _Optional[str] = ..., category: _Optional[str] = ..., state: _Optional[str] = ..., step: _Optional[int] = ..., steps: _Optional[int] = ..., phase: _Optional[str] = ..., validation: _Optional[_Mapping[str, float]] = ..., validation_passed: _Optional[bool] = ..., calibration_accepted: _Optional[bool] = ..., calibration: _Optional[_Mapping[str, float]] = ..., images: _Optional[int] = ..., skipped: _Optional[_Mapping[str, int]] = ..., version: _Optional[str] = ..., activated: _Optional[bool] = ..., error: _Optional[str] = ..., created: _Optional[float] = ..., updated: _Optional[float] = ...) -> None: ...

class ListAdaptationsResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[AdaptationJob]
    def __init__(self, jobs: _Optional[_Iterable[_Union[AdaptationJob, _Mapping]]] = ...) -> None: ...
