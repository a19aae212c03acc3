"""Device memory, one CUDA stream and copies: the little of CUDA the TensorRT backend needs.

pycuda is the default (`pip install merino-edge[device]` installs it);
NVIDIA's cuda-python (`cuda.bindings.runtime`, or the older `cuda.cudart`)
works the same through this adapter.  Both use the device's primary context,
the one TensorRT's runtime API uses, so engines and buffers live in one context.
It is current in the thread that opened it; any other thread (a server's
workers, or the one that closes it) makes it current with `active()`.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator

import numpy as np

from merino_edge.errors import MissingDependencyError

INSTALL_HINT = "on a Jetson: `pip install pycuda` (builds against JetPack's CUDA); on x86: `pip install pycuda` or `pip install cuda-python`"


class CudaMemory(ABC):
    """Allocations, a dedicated stream and host<->device copies on one GPU."""

    name = ""

    @abstractmethod
    def alloc(self, nbytes: int) -> int:
        """Device pointer to `nbytes` (freed by close())."""

    @abstractmethod
    def pinned(self, shape: tuple[int, ...], dtype) -> np.ndarray:
        """A page-locked host array, so async copies really are async."""

    @property
    @abstractmethod
    def stream(self) -> int:
        """The stream handle to pass to TensorRT's execute_async_v3."""

    @abstractmethod
    def to_device(self, ptr: int, array: np.ndarray) -> None:
        """Enqueue a copy of `array` to `ptr` (pinned arrays must stay untouched until synchronize())."""

    @abstractmethod
    def to_host(self, array: np.ndarray, ptr: int) -> None:
        """Enqueue a copy from `ptr` into `array`; read it after synchronize()."""

    @abstractmethod
    def zero(self, ptr: int, nbytes: int) -> None:
        """Enqueue filling `nbytes` at `ptr` with zeros."""

    @abstractmethod
    def copy_2d(self, dst: int, dst_pitch: int, src: int, src_pitch: int, width: int, height: int) -> None:
        """Enqueue a device-to-device copy of `height` runs of `width` bytes, `src_pitch` / `dst_pitch` bytes apart."""

    @abstractmethod
    def synchronize(self) -> None:
        """Wait for everything enqueued on the stream."""

    @abstractmethod
    def gpu(self) -> tuple[str, str]:
        """(device name, compute capability "major.minor")."""

    @abstractmethod
    def active(self) -> contextlib.AbstractContextManager[None]:
        """Make this device current in the calling thread (servers call from worker threads)."""

    @abstractmethod
    def close(self) -> None:
        """Free every allocation, from any thread (idempotent)."""


class _PyCuda(CudaMemory):
    name = "pycuda"

    def __init__(self, device: int) -> None:
        import pycuda.driver as cuda

        self._cuda = cuda
        cuda.init()
        self._device = cuda.Device(device)
        self._context = self._device.retain_primary_context()
        self._context.push()  # current in the opening thread until close()
        self._opener = threading.get_ident()
        self._stream = cuda.Stream()
        self._owned: list = []

    def alloc(self, nbytes: int) -> int:
        block = self._cuda.mem_alloc(max(1, nbytes))
        self._owned.append(block)
        return int(block)

    def pinned(self, shape, dtype) -> np.ndarray:
        return self._cuda.pagelocked_empty(shape, dtype)

    @property
    def stream(self) -> int:
        return self._stream.handle

    def to_device(self, ptr: int, array: np.ndarray) -> None:
        self._cuda.memcpy_htod_async(ptr, array, self._stream)

    def to_host(self, array: np.ndarray, ptr: int) -> None:
        self._cuda.memcpy_dtoh_async(array, ptr, self._stream)

    def zero(self, ptr: int, nbytes: int) -> None:
        if nbytes:
            self._cuda.memset_d8_async(ptr, 0, nbytes, self._stream)

    def copy_2d(self, dst: int, dst_pitch: int, src: int, src_pitch: int, width: int, height: int) -> None:
        if not width:
            return
        copy = self._cuda.Memcpy2D()
        copy.set_src_device(src)
        copy.set_dst_device(dst)
        copy.src_pitch, copy.dst_pitch, copy.width_in_bytes, copy.height = src_pitch, dst_pitch, width, height
        copy(self._stream)

    def synchronize(self) -> None:
        self._stream.synchronize()

    def gpu(self) -> tuple[str, str]:
        major, minor = self._device.compute_capability()
        return self._device.name(), f"{major}.{minor}"

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        self._context.push()
        try:
            yield
        finally:
            self._cuda.Context.pop()

    def close(self) -> None:
        if self._owned is None:
            return
        with self.active():  # pycuda frees only into a context current on the calling thread
            self._stream.synchronize()
            for block in self._owned:
                block.free()
            self._owned, self._stream = None, None
        if threading.get_ident() == self._opener and self._cuda.Context.get_current() == self._context:
            self._cuda.Context.pop()  # the push of __init__
        self._context.push()
        self._context.detach()  # pops it and releases the primary context retained in __init__


class _CudaPython(CudaMemory):
    name = "cuda-python"

    def __init__(self, device: int, cudart) -> None:
        self._rt = cudart
        self._device = device
        self._call(cudart.cudaSetDevice(device))
        self._stream = self._call(cudart.cudaStreamCreate())
        self._owned: list[int] = []
        self._hosts: list[int] = []

    def _call(self, result):
        err, *values = result if isinstance(result, tuple) else (result,)
        if err != self._rt.cudaError_t.cudaSuccess:
            raise RuntimeError(f"CUDA error: {err}")
        return values[0] if len(values) == 1 else values

    def alloc(self, nbytes: int) -> int:
        ptr = int(self._call(self._rt.cudaMalloc(max(1, nbytes))))
        self._owned.append(ptr)
        return ptr

    def pinned(self, shape, dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        nbytes = max(1, int(np.prod(shape)) * dtype.itemsize)
        ptr = int(self._call(self._rt.cudaMallocHost(nbytes)))
        self._hosts.append(ptr)
        raw = (ctypes.c_byte * nbytes).from_address(ptr)
        return np.frombuffer(raw, dtype=dtype, count=int(np.prod(shape))).reshape(shape)

    @property
    def stream(self) -> int:
        return int(self._stream)

    def _copy(self, dst: int, src: int, nbytes: int, kind) -> None:
        self._call(self._rt.cudaMemcpyAsync(dst, src, nbytes, kind, self._stream))

    def to_device(self, ptr: int, array: np.ndarray) -> None:
        self._copy(ptr, array.ctypes.data, array.nbytes, self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice)

    def to_host(self, array: np.ndarray, ptr: int) -> None:
        self._copy(array.ctypes.data, ptr, array.nbytes, self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost)

    def zero(self, ptr: int, nbytes: int) -> None:
        if nbytes:
            self._call(self._rt.cudaMemsetAsync(ptr, 0, nbytes, self._stream))

    def copy_2d(self, dst: int, dst_pitch: int, src: int, src_pitch: int, width: int, height: int) -> None:
        if width:
            kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice
            self._call(self._rt.cudaMemcpy2DAsync(dst, dst_pitch, src, src_pitch, width, height, kind, self._stream))

    def synchronize(self) -> None:
        self._call(self._rt.cudaStreamSynchronize(self._stream))

    def gpu(self) -> tuple[str, str]:
        props = self._call(self._rt.cudaGetDeviceProperties(self._device))
        name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
        return name.rstrip("\x00"), f"{props.major}.{props.minor}"

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        self._call(self._rt.cudaSetDevice(self._device))
        yield

    def close(self) -> None:
        if self._owned is None:
            return
        with self.active():  # the calling thread may have another device current
            self.synchronize()
            for ptr in self._owned:
                self._rt.cudaFree(ptr)
            for ptr in self._hosts:
                self._rt.cudaFreeHost(ptr)
            self._rt.cudaStreamDestroy(self._stream)
        self._owned = None


def _cuda_python_runtime():
    try:
        from cuda.bindings import runtime  # cuda-python >= 12.6
    except ImportError:
        from cuda import cudart as runtime  # older cuda-python
    return runtime


def open_cuda(device: int = 0, prefer: str | None = None) -> CudaMemory:
    """CudaMemory on `device` through pycuda, else cuda-python (or the one named by `prefer`)."""
    order = [prefer] if prefer else ["pycuda", "cuda-python"]
    for name in order:
        try:
            return _PyCuda(device) if name == "pycuda" else _CudaPython(device, _cuda_python_runtime())
        except ImportError:
            continue
    raise MissingDependencyError(f"the TensorRT backend needs pycuda or cuda-python: {INSTALL_HINT}")


def available_cuda_bindings() -> list[str]:
    """Which CUDA Python bindings are importable here (no GPU needed)."""
    import importlib.util

    found = []
    if importlib.util.find_spec("pycuda") is not None:
        found.append("pycuda")
    with contextlib.suppress(ImportError, ValueError):
        if importlib.util.find_spec("cuda") is not None and (
            importlib.util.find_spec("cuda.bindings") is not None or importlib.util.find_spec("cuda.cudart") is not None
        ):
            found.append("cuda-python")
    return found
