"""What a TensorRT engine was built for, and whether this machine may load it.

TensorRT-free and torch-free: `merino-edge build` writes an `EngineRecord` into
the bundle manifest, the runtime reads it back and calls `check_compatible`
before it deserializes anything.  The optimization-profile shapes are derived
here too, from the bundle limits, so they can be tested without a GPU.

One engine holds two optimization profiles over the graph of `export/onnx.py`:

- ``context``: the prompt, sequence 1..max_prompt with an empty cache (past 0);
- ``generation``: one new token per step, past 1..max_context-1, so that past
  plus the new token never exceeds max_context.

Batch is 1..max_batch in both.  The builder tunes kernels for the `opt` shape:
batch 1 (a board serves one user at a time) and the middle of each range.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from merino_edge.arch import ArchSpec
from merino_edge.errors import IncompatibleError, InputError
from merino_edge.fileio import check_schema

SCHEMA_VERSION = 1

ENGINE_NAME = "tensorrt-fp16"  # its key in the manifest's engines
ENGINE_FILE = "engines/model.fp16.engine"
TIMING_CACHE_FILE = "engines/tensorrt.timing.cache"
CONTEXT, GENERATION = "context", "generation"

Shape = tuple[int, ...]


@dataclass(frozen=True)
class TensorRange:
    """min / opt / max shape of one input tensor in one optimization profile."""

    name: str
    min: Shape
    opt: Shape
    max: Shape

    def to_json(self) -> dict:
        return {"name": self.name, "min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_json(cls, data: dict) -> TensorRange:
        return cls(data["name"], tuple(data["min"]), tuple(data["opt"]), tuple(data["max"]))


@dataclass(frozen=True)
class Profile:
    """One optimization profile: its name and the range of every dynamic input."""

    name: str
    inputs: tuple[TensorRange, ...]

    def __getitem__(self, tensor: str) -> TensorRange:
        for rng in self.inputs:
            if rng.name == tensor:
                return rng
        raise KeyError(tensor)

    def to_json(self) -> dict:
        return {"name": self.name, "inputs": [r.to_json() for r in self.inputs]}

    @classmethod
    def from_json(cls, data: dict) -> Profile:
        return cls(data["name"], tuple(TensorRange.from_json(r) for r in data["inputs"]))


def cache_tensor_names(arch: ArchSpec) -> list[tuple[str, str, int]]:
    """(past name, present name, heads) of every K and V cache tensor, in graph order."""
    names = []
    for i, heads in enumerate(arch.layer_heads()):
        for kind in ("key", "value"):
            names.append((f"past.{i}.{kind}", f"present.{i}.{kind}", heads))
    return names


def check_limits(arch: ArchSpec, *, max_batch: int, max_prompt: int, max_context: int) -> None:
    """Raise InputError unless 1 <= max_prompt <= max_context <= max_positions and max_batch >= 1."""
    for name, value in (("max_batch", max_batch), ("max_prompt", max_prompt), ("max_context", max_context)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InputError(f"engine limits: {name} must be a positive integer, got {value!r}")
    if max_context < 2:
        raise InputError(f"engine limits: max_context {max_context} leaves no room to generate (needs >= 2)")
    if max_prompt > max_context:
        raise InputError(f"engine limits: max_prompt {max_prompt} is larger than max_context {max_context}")
    if max_context > arch.max_positions:
        raise InputError(f"engine limits: max_context {max_context} is larger than the model's {arch.max_positions} positions")


def profile_shapes(arch: ArchSpec, *, max_batch: int, max_prompt: int, max_context: int) -> tuple[Profile, Profile]:
    """The context and generation profiles (in engine profile order) for these limits."""
    check_limits(arch, max_batch=max_batch, max_prompt=max_prompt, max_context=max_context)
    batch = (1, 1, max_batch)

    def shapes(*dims) -> tuple[Shape, Shape, Shape]:
        """min, opt and max shapes from per-dimension (min, opt, max) triples or constants."""
        return tuple(tuple(d if isinstance(d, int) else d[k] for d in dims) for k in range(3))

    def profile(name: str, seq: Shape, past: Shape) -> Profile:
        total = tuple(p + s for p, s in zip(past, seq, strict=True))
        inputs = [
            TensorRange("input_ids", *shapes(batch, seq)),
            TensorRange("position_ids", *shapes(batch, seq)),
            TensorRange("attention_mask", *shapes(batch, total)),
            TensorRange("logits_to_keep", *shapes((1, 1, seq[2]))),  # generation keeps one column, scoring every one
        ]
        for past_name, _, heads in cache_tensor_names(arch):
            inputs.append(TensorRange(past_name, *shapes(batch, heads, past, arch.head_dim)))
        return Profile(name, tuple(inputs))

    context = profile(CONTEXT, seq=(1, max(1, max_prompt // 2), max_prompt), past=(0, 0, 0))
    top = max_context - 1
    generation = profile(GENERATION, seq=(1, 1, 1), past=(1, max(1, top // 2), top))
    return context, generation


def manifest_profiles(manifest, max_batch: int | None = None) -> tuple[Profile, Profile]:
    """`profile_shapes` from a bundle `Manifest`'s arch and limits (`max_batch` overrides the manifest's)."""
    return profile_shapes(
        manifest.arch,
        max_batch=manifest.max_batch if max_batch is None else max_batch,
        max_prompt=manifest.max_prompt,
        max_context=manifest.max_context,
    )


@dataclass(frozen=True)
class HostInfo:
    """What an engine is tied to: the TensorRT build and the GPU (and, on a Jetson, the board model and L4T).

    Every Jetson Orin module reports compute capability 8.7 and they may share
    an L4T release, so only the board model tells an AGX Orin from an Orin Nano.
    """

    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "8.7"
    l4t: str | None = None
    jetpack: str | None = None
    board: str | None = None  # the Jetson model, e.g. "NVIDIA Jetson Orin Nano Developer Kit"

    def describe(self) -> str:
        where = f" on {self.board or 'a Jetson'}, L4T {self.l4t}" if self.l4t else ""
        return f"TensorRT {self.tensorrt_version}, {self.gpu_name} (sm {self.compute_capability}){where}"

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> HostInfo:
        return cls(
            tensorrt_version=str(data["tensorrt_version"]),
            gpu_name=str(data["gpu_name"]),
            compute_capability=str(data["compute_capability"]),
            l4t=data.get("l4t"),
            jetpack=data.get("jetpack"),
            board=data.get("board"),
        )


@dataclass(frozen=True)
class EngineRecord:
    """The build record of the bundle's engine (stored in manifest.json beside the engine's file and sha256)."""

    onnx_file: str
    onnx_sha256: str
    host: HostInfo
    workspace_mib: int
    max_batch: int
    max_prompt: int
    max_context: int
    profiles: tuple[Profile, ...]
    build_seconds: float
    built_at: str  # ISO 8601, UTC
    precision: str = "fp16"
    timing_cache: str | None = None
    schema_version: int = field(default=SCHEMA_VERSION)

    def profile_index(self, name: str) -> int:
        for i, prof in enumerate(self.profiles):
            if prof.name == name:
                return i
        raise IncompatibleError(f"engine record: no optimization profile named {name!r}; run `merino-edge build` again")

    def to_json(self) -> dict:
        return {
            "schema_version": self.schema_version,
            "precision": self.precision,
            "onnx_file": self.onnx_file,
            "onnx_sha256": self.onnx_sha256,
            **self.host.to_json(),
            "workspace_mib": self.workspace_mib,
            "max_batch": self.max_batch,
            "max_prompt": self.max_prompt,
            "max_context": self.max_context,
            "profiles": [p.to_json() for p in self.profiles],
            "build_seconds": self.build_seconds,
            "built_at": self.built_at,
            "timing_cache": self.timing_cache,
        }

    @classmethod
    def from_json(cls, data: dict) -> EngineRecord:
        check_schema(data, "engine record", SCHEMA_VERSION, fix="run `merino-edge build` again")
        try:
            host = HostInfo.from_json(data)
            return cls(
                precision=data.get("precision", "fp16"),
                onnx_file=data["onnx_file"],
                onnx_sha256=data["onnx_sha256"],
                host=host,
                workspace_mib=int(data["workspace_mib"]),
                max_batch=int(data["max_batch"]),
                max_prompt=int(data["max_prompt"]),
                max_context=int(data["max_context"]),
                profiles=tuple(Profile.from_json(p) for p in data["profiles"]),
                build_seconds=float(data["build_seconds"]),
                built_at=str(data["built_at"]),
                timing_cache=data.get("timing_cache"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"engine record: malformed or missing field ({exc!r})") from None


def host_differences(built: HostInfo, host: HostInfo) -> list[str]:
    """What keeps a TensorRT plan built on `built` from loading on `host` (empty when nothing does).

    A plan only loads on the exact TensorRT version and GPU model that built it;
    on a Jetson a different board model means a different GPU configuration
    (all Orin modules report sm 8.7), a different L4T release a different CUDA stack.
    """
    problems = []
    if built.tensorrt_version != host.tensorrt_version:
        problems.append(f"TensorRT {built.tensorrt_version} built it, this machine has {host.tensorrt_version}")
    if built.gpu_name != host.gpu_name or built.compute_capability != host.compute_capability:
        problems.append(
            f"it was built for {built.gpu_name} (sm {built.compute_capability}), this GPU is {host.gpu_name} (sm {host.compute_capability})"
        )
    if built.board != host.board:
        problems.append(f"it was built on {built.board or 'an unrecorded board'}, this machine is {host.board or 'not a Jetson'}")
    if built.l4t != host.l4t:
        problems.append(f"it was built on L4T {built.l4t or 'none (not a Jetson)'}, this machine has L4T {host.l4t or 'none (not a Jetson)'}")
    return problems


def check_compatible(record: EngineRecord, host: HostInfo, onnx_sha256: str | None = None, *, bundle: str = "BUNDLE") -> None:
    """Raise IncompatibleError, naming every difference, unless `host` may run the engine (see `host_differences`).

    With `onnx_sha256` the engine must also come from the bundle's current graph.
    """
    problems = host_differences(record.host, host)
    if onnx_sha256 is not None and onnx_sha256 != record.onnx_sha256:
        problems.append(f"the bundle's {record.onnx_file} changed since the engine was built")
    if problems:
        raise IncompatibleError(f"the TensorRT engine of {bundle} cannot be used: {'; '.join(problems)}; run `merino-edge build {bundle}` again")
