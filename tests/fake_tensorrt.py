"""A stand-in for TensorRT's runtime and the CUDA runtime, for the CPU machines the tests run on.

Neither TensorRT nor a GPU is on them, so `edge.backends.tensorrt_backend` is run here against
these two modules, which keep to the calls it makes (the names `../shared/tools/trt_api_check.py`
checks against TensorRT 8.6 to 11.4) and to what those calls do:

- device memory is apart from host memory, and a copy or an engine's write past the end of an
  allocation, or into one freed, is an error, where a GPU would corrupt memory or fault;
- an "engine" is a plan file holding an ONNX graph and its profile's largest batch
  (`write_plan`); it runs the graph with ONNX Runtime on the input read from device memory at
  the shape set, and writes each output packed, batch first, at its tensor's address, in the
  graph's own dtypes, as TensorRT does;
- the builder parses a graph ONNX Runtime loads and serialises it into such a plan, refusing a
  build its version would refuse: a network without the creation flag the version needs
  (strong typing from 10, explicit batch on 8), no optimisation profile for the frames input or
  one that does not start at batch 1, FP16 without TensorRT 8's precision constraints. Each
  version has the names its release has: 11 has no explicit batch flag, FP16 builder flag or
  precision constraints.

Install both with `install(monkeypatch)`; a process started with tests/fake_gpu first on its
PYTHONPATH imports them as `tensorrt` and `cuda.bindings.runtime`.
"""

from __future__ import annotations

import ctypes
import enum
import json
import types
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

# The version it says it is: 10.x builds model_fp16.onnx strongly typed, 8.6 model.onnx with the
# FP16 flag (edge.engine_cache.build_mode), so the engine's graph and dtypes follow it.
VERSION = "10.3.0"
_PLAN_MAGIC = b"FAKE-TRT-PLAN\n"


class FakeCudaError(Exception):
    pass


# -- the CUDA runtime ---------------------------------------------------------------------
class _Memory:
    """Host and device allocations by address; every access bounded by its allocation."""

    def __init__(self) -> None:
        self.blocks: dict[int, ctypes.Array] = {}

    def alloc(self, nbytes: int) -> int:
        block = ctypes.create_string_buffer(max(nbytes, 1))
        address = ctypes.addressof(block)
        self.blocks[address] = block
        return address

    def view(self, address: int, nbytes: int) -> memoryview:
        block = self.blocks.get(int(address))
        if block is None:
            raise FakeCudaError(f"address {address:#x} is no allocation's start")
        if nbytes > len(block):
            raise FakeCudaError(f"{nbytes} bytes at {address:#x}, an allocation of {len(block)}")
        return memoryview(block).cast("B")[:nbytes]


def make_cudart() -> types.SimpleNamespace:
    """A `cuda.bindings.runtime` with the calls edge.cuda_memory and the backend make."""
    host, device = _Memory(), _Memory()
    success, invalid = 0, 1
    kinds = types.SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)

    def memcpy_async(dst: int, src: int, nbytes: int, kind: int, _stream: Any) -> tuple[int]:
        to, frm = (device, host) if kind == kinds.cudaMemcpyHostToDevice else (host, device)
        try:
            to.view(dst, nbytes)[:] = frm.view(src, nbytes)
        except FakeCudaError:
            return (invalid,)
        return (success,)

    props = types.SimpleNamespace(name=b"Fake GPU", major=8, minor=7)
    return types.SimpleNamespace(
        cudaError_t=types.SimpleNamespace(cudaSuccess=success),
        cudaMemcpyKind=kinds,
        cudaGetErrorName=lambda err: (success, b"cudaErrorInvalidValue"),
        cudaMallocHost=lambda n: (success, host.alloc(n)),
        cudaMalloc=lambda n: (success, device.alloc(n)),
        cudaFreeHost=lambda ptr: (success,),
        cudaFree=lambda ptr: (success,) if device.blocks.pop(int(ptr), None) is not None else (invalid,),
        cudaMemcpyAsync=memcpy_async,
        cudaStreamCreate=lambda: (success, object()),
        cudaStreamSynchronize=lambda stream: (success,),
        cudaStreamDestroy=lambda stream: (success,),
        cudaGetDeviceProperties=lambda device_index: (success, props),
        device=device,
    )


# -- TensorRT's runtime -------------------------------------------------------------------
class TensorIOMode(enum.Enum):
    INPUT = 1
    OUTPUT = 2


class DataType(enum.Enum):
    FLOAT = np.float32
    HALF = np.float16
    UINT8 = np.uint8
    INT32 = np.int32
    INT64 = np.int64


# ONNX Runtime's names of the graph's element types (the stand-in needs no `onnx`, which a
# Jetson installed with `vqad[edge]` does not have).
_ORT_TYPES = {
    "tensor(float)": DataType.FLOAT,
    "tensor(float16)": DataType.HALF,
    "tensor(uint8)": DataType.UINT8,
    "tensor(int32)": DataType.INT32,
    "tensor(int64)": DataType.INT64,
}


def write_plan(path: Path, onnx_path: Path, max_batch: int) -> None:
    """A plan file this module's runtime deserialises: the graph, run with batches up to `max_batch`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = json.dumps({"max_batch": max_batch}).encode() + b"\n"
    path.write_bytes(_PLAN_MAGIC + header + onnx_path.read_bytes())


class _Engine:
    def __init__(self, graph: bytes, max_batch: int, device: _Memory):
        self.session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
        self.max_batch, self.device = max_batch, device
        self.io: list[tuple[str, TensorIOMode, DataType, tuple[int, ...]]] = []
        for mode, values in ((TensorIOMode.INPUT, self.session.get_inputs()),
                             (TensorIOMode.OUTPUT, self.session.get_outputs())):  # fmt: skip
            for v in values:
                dims = tuple(d if isinstance(d, int) else -1 for d in v.shape)  # a named dim is dynamic
                self.io.append((v.name, mode, _ORT_TYPES[v.type], dims))

    def _entry(self, name: str) -> tuple[str, TensorIOMode, DataType, tuple[int, ...]]:
        return next(e for e in self.io if e[0] == name)

    @property
    def num_io_tensors(self) -> int:
        return len(self.io)

    def get_tensor_name(self, i: int) -> str:
        return self.io[i][0]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return self._entry(name)[1]

    def get_tensor_dtype(self, name: str) -> DataType:
        return self._entry(name)[2]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self._entry(name)[3]

    def get_tensor_profile_shape(self, name: str, profile: int) -> tuple[tuple[int, ...], ...]:
        _, mode, _, dims = self._entry(name)
        if mode is not TensorIOMode.INPUT or profile != 0:
            raise ValueError(f"no profile shape for {name!r} in profile {profile}")
        return (1, *dims[1:]), (self.max_batch, *dims[1:]), (self.max_batch, *dims[1:])

    def create_execution_context(self) -> _Context:
        return _Context(self)


class _Context:
    def __init__(self, engine: _Engine):
        self.engine = engine
        self.addresses: dict[str, int] = {}
        self.input_shapes: dict[str, tuple[int, ...]] = {}

    def set_tensor_address(self, name: str, address: int) -> bool:
        self.addresses[name] = int(address)
        return True

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        dims = self.engine.get_tensor_shape(name)
        if len(shape) != len(dims) or any(d not in (-1, s) for d, s in zip(dims, shape, strict=True)):
            return False
        if not 1 <= shape[0] <= self.engine.max_batch:
            return False
        self.input_shapes[name] = tuple(shape)
        return True

    def execute_async_v3(self, _stream: Any) -> bool:
        e = self.engine
        feeds = {}
        for name, mode, dtype, _ in e.io:
            if mode is TensorIOMode.INPUT:
                shape = self.input_shapes[name]
                nbytes = int(np.prod(shape)) * np.dtype(dtype.value).itemsize
                feeds[name] = np.frombuffer(e.device.view(self.addresses[name], nbytes), dtype.value).reshape(shape)
        outputs = e.session.run(None, feeds)
        produced = [(name, dtype) for name, mode, dtype, _ in e.io if mode is TensorIOMode.OUTPUT]
        for (name, dtype), value in zip(produced, outputs, strict=True):
            data = np.ascontiguousarray(value, dtype=dtype.value).tobytes()
            e.device.view(self.addresses[name], len(data))[:] = data  # FakeCudaError past the allocation
        return True


class _Runtime:
    def __init__(self, _logger: Any, device: _Memory):
        self.device = device

    def deserialize_cuda_engine(self, plan: bytes) -> _Engine | None:
        if not plan.startswith(_PLAN_MAGIC):
            return None
        header, graph = plan[len(_PLAN_MAGIC) :].split(b"\n", 1)
        return _Engine(graph, json.loads(header)["max_batch"], self.device)


# -- TensorRT's builder ---------------------------------------------------------------------
class _Layer:
    """One node of the parsed graph, its outputs FP32 until pinned otherwise."""

    def __init__(self, name: str, num_outputs: int):
        self.name, self.num_outputs, self.precision = name, num_outputs, None
        self.output_types = [DataType.FLOAT] * num_outputs

    def get_output(self, j: int) -> types.SimpleNamespace:
        return types.SimpleNamespace(dtype=self.output_types[j])

    def set_output_type(self, j: int, dtype: DataType) -> None:
        self.output_types[j] = dtype


class _Network:
    def __init__(self, flags: int):
        self.flags, self.graph, self.layers = flags, b"", []

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def get_layer(self, i: int) -> _Layer:
        return self.layers[i]


class _OnnxParser:
    def __init__(self, network: _Network, _logger: Any):
        self.network, self.errors = network, []

    def parse(self, graph: bytes) -> bool:
        try:
            import onnx  # on the test machines; the graph's node names are TensorRT's layer names
        except ImportError:
            onnx = None
        try:
            ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime's errors share no base but Exception
            self.errors = [f"In node -1: {exc}"]
            return False
        self.network.graph = graph
        if onnx is not None:
            nodes = onnx.load_from_string(graph).graph.node
            self.network.layers = [_Layer(n.name, len(n.output)) for n in nodes]
        return True

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, i: int) -> str:
        return self.errors[i]


class _Profile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple[tuple[int, ...], ...]] = {}

    def set_shape(self, name: str, low: tuple, opt: tuple, high: tuple) -> None:
        self.shapes[name] = (tuple(low), tuple(opt), tuple(high))


class _TimingCache:
    def __init__(self, data: bytes):
        self.data = bytes(data) or b"FAKE-TIMING-CACHE"

    def serialize(self) -> memoryview:
        return memoryview(self.data)


class _BuilderConfig:
    def __init__(self) -> None:
        self.flags: set[Any] = set()
        self.pools: dict[Any, int] = {}
        self.profiles: list[_Profile] = []
        self.cache: _TimingCache | None = None

    def set_flag(self, flag: Any) -> None:
        self.flags.add(flag)

    def set_memory_pool_limit(self, pool: Any, nbytes: int) -> None:
        self.pools[pool] = nbytes

    def add_optimization_profile(self, profile: _Profile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, data: bytes) -> _TimingCache:
        return _TimingCache(data)

    def set_timing_cache(self, cache: _TimingCache, ignore_mismatch: bool) -> bool:
        self.cache = cache
        return True

    def get_timing_cache(self) -> _TimingCache:
        return self.cache or _TimingCache(b"")


class _Builder:
    def __init__(self, trt: types.ModuleType):
        self.trt = trt

    def create_network(self, flags: int) -> _Network:
        return _Network(flags)

    def create_builder_config(self) -> _BuilderConfig:
        return _BuilderConfig()

    def create_optimization_profile(self) -> _Profile:
        return _Profile()

    def build_serialized_network(self, network: _Network, config: _BuilderConfig) -> memoryview | None:
        """The plan, or None (with the reason printed, as TensorRT logs it) for a build this
        version refuses."""
        refused = _refusal(self.trt, network, config)
        if refused:
            print(f"[fake TensorRT] {refused}")
            return None
        _, _, high = config.profiles[0].shapes["frames"]
        header = json.dumps({"max_batch": high[0]}).encode() + b"\n"
        return memoryview(_PLAN_MAGIC + header + network.graph)


def _refusal(trt: types.ModuleType, network: _Network, config: _BuilderConfig) -> str:
    """Why TensorRT `trt.__version__` would not build `network` with `config` ("" if it would)."""
    major = int(trt.__version__.split(".")[0])
    flag = trt.NetworkDefinitionCreationFlag
    needed = flag.STRONGLY_TYPED if major >= 10 else flag.EXPLICIT_BATCH
    if not network.flags & (1 << int(needed)):
        return f"the network lacks {needed.name}"
    if not network.graph:
        return "no graph parsed into the network"
    if len(config.profiles) != 1 or "frames" not in config.profiles[0].shapes:
        return "one optimisation profile for the input 'frames' is needed"
    low, opt, high = config.profiles[0].shapes["frames"]
    if low[0] != 1 or not low[1:] == opt[1:] == high[1:] or not 1 <= opt[0] <= high[0]:
        return f"profile shapes {low}, {opt}, {high} are not batches 1..N of one frame shape"
    if trt.MemoryPoolType.WORKSPACE not in config.pools:
        return "no workspace limit"
    if (
        major < 10
        and trt.BuilderFlag.FP16 in config.flags
        and trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS not in config.flags
    ):
        return "FP16 without precision constraints: the VQ argmin would run in FP16"
    return ""


def make_tensorrt(cudart: types.SimpleNamespace, version: str = VERSION) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    major = int(version.split(".")[0])
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, severity=2: None})
    trt.Runtime = lambda logger: _Runtime(logger, cudart.device)
    trt.TensorIOMode = TensorIOMode
    trt.DataType = DataType
    trt.float32 = DataType.FLOAT
    trt.Builder = lambda logger: _Builder(trt)
    trt.OnnxParser = _OnnxParser
    creation = {"EXPLICIT_BATCH": 0} if major < 11 else {}
    trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", {**creation, "STRONGLY_TYPED": 5})
    builder_flags = {"FP16": 0, "OBEY_PRECISION_CONSTRAINTS": 12} if major < 11 else {"TF32": 1}
    trt.BuilderFlag = enum.IntEnum("BuilderFlag", builder_flags)
    trt.MemoryPoolType = enum.IntEnum("MemoryPoolType", {"WORKSPACE": 0})
    return trt


_SHARED: tuple[types.ModuleType, types.SimpleNamespace] | None = None


def shared() -> tuple[types.ModuleType, types.SimpleNamespace]:
    """This process's one (tensorrt, cudart) pair, for the import shims of tests/fake_gpu."""
    global _SHARED
    if _SHARED is None:
        cudart = make_cudart()
        _SHARED = make_tensorrt(cudart), cudart
    return _SHARED


def install(monkeypatch: Any, version: str = VERSION) -> tuple[types.ModuleType, types.SimpleNamespace]:
    """Put the two stand-ins where `import tensorrt` and edge.cuda_memory.load_cudart look,
    the first saying it is TensorRT `version`. -> (tensorrt, cudart)."""
    import sys

    cudart = make_cudart()
    trt = make_tensorrt(cudart, version)
    cuda, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
    bindings.runtime = cudart
    cuda.bindings = bindings
    for name, module in (("tensorrt", trt), ("cuda", cuda), ("cuda.bindings", bindings),
                         ("cuda.bindings.runtime", cudart)):  # fmt: skip
        monkeypatch.setitem(sys.modules, name, module)
    return trt, cudart
