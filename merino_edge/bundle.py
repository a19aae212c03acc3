"""The deployable bundle: one directory that the board needs, and nothing else.

Layout (one of the files between stages, docs/architecture.md)::

    bundle/
      manifest.json          this module's `Manifest` (schema_version, arch, files + sha256, ...)
      tokenizer.model        SentencePiece model
      model.onnx             FP32 graph   + model.onnx.data       (its weights, external data)
      model.fp16.onnx        FP16 graph   + model.fp16.onnx.data  (optional)
      model.int8.onnx        weight-only int8 graph for ONNX Runtime on a CPU (optional; int4 likewise)
      engines/...            TensorRT engines, added on the board by `merino-edge build`

Every file the manifest names carries its sha256; `Bundle.load` checks them all
and refuses a damaged, incomplete or newer-format bundle with a message saying
which file is wrong.  The manifest is always written atomically (temp file +
`os.replace`) and written last by `merino_edge.export.package.export_bundle`,
so an interrupted export never looks like a bundle.

Chat template: a role-tagged plain-text format (no Jinja, so the board needs
nothing extra).  Each message becomes ``<|role|>\\n{content}\\n`` and the prompt
ends with ``<|assistant|>\\n``; generation stops at the next ``\\n<|``.  A
bundle may carry another template with the same three fields.  The opening of
a role marker (the text before ``{role}``, here ``<|``) is escaped in message
content as ``<\\|``, so that no text a user sends can open a turn of its own.

This module is torch-free (import-linter checks it): the runtime imports it
on the board.  Writing a bundle from a checkpoint is `export/package.py`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from merino_edge.arch import ArchSpec
from merino_edge.errors import IncompatibleError, InputError
from merino_edge.fileio import check_schema, read_json, write_json_atomic

SCHEMA_VERSION = 1
FORMAT = "merino-edge-bundle"
MANIFEST = "manifest.json"
TOKENIZER_FILE = "tokenizer.model"
GRAPH_FILES = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx", "int4": "model.int4.onnx"}
PRECISIONS = tuple(GRAPH_FILES)
QUANTIZED = ("int8", "int4")
CPU_PRECISIONS = ("int4", "int8", "fp32")  # the graphs ONNX Runtime runs on a CPU, smallest first
APPEND_AXIS = "seq"  # axis 2 of `present.*` in a graph that hands back only the new K/V columns (export/onnx.py)
SHARED_AXIS = "capacity"  # axis 2 of `present.*` in a graph that writes them into the past's own buffer (export/quantize.py)
DEFAULT_MAX_BATCH = 8


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class ChatTemplate:
    """Role-tagged chat format: `message` per turn, then `generation_prompt`; stop at `stop`."""

    message: str = "<|{role}|>\n{content}\n"
    generation_prompt: str = "<|assistant|>\n"
    stop: tuple[str, ...] = ("\n<|",)

    @property
    def marker(self) -> str:
        """What opens a role marker: the message format's text before `{role}`."""
        return self.message.partition("{role}")[0]

    def escape(self, content: str) -> str:
        """`content` with every role-marker opening broken (`<|` -> `<\\|`), so it cannot start a turn."""
        marker = self.marker
        return content.replace(marker, f"{marker[0]}\\{marker[1:]}") if marker else content

    def render(self, messages: list[dict]) -> str:
        """The prompt for a list of {"role", "content"} messages, ready for the assistant's turn."""
        parts = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise InputError(f"messages[{i}]: needs string 'role' and 'content'")
            parts.append(self.message.format(role=m["role"], content=self.escape(m["content"])))
        return "".join(parts) + self.generation_prompt

    def to_json(self) -> dict:
        return {"message": self.message, "generation_prompt": self.generation_prompt, "stop": list(self.stop)}

    @classmethod
    def from_json(cls, data: dict) -> ChatTemplate:
        return cls(message=data["message"], generation_prompt=data["generation_prompt"], stop=tuple(data.get("stop", ())))


@dataclass
class Manifest:
    """What `manifest.json` holds.  `files` maps every file name in the bundle to its sha256."""

    arch: ArchSpec
    graphs: dict[str, dict]  # precision -> {"file", "data_file", "opset", "io_dtype"} (+ "quantization", "quality" for int8/int4)
    files: dict[str, str]  # relative path -> sha256
    max_context: int
    max_batch: int
    max_prompt: int
    special_tokens: dict[str, int]
    tokenizer: dict = field(default_factory=lambda: {"file": TOKENIZER_FILE})
    engines: dict[str, dict] = field(default_factory=dict)  # name -> {"file", "precision", "record"}
    chat_template: ChatTemplate = field(default_factory=ChatTemplate)
    exporter: dict = field(default_factory=dict)  # versions of merino-edge, torch, transformers, onnx
    runtime: dict = field(default_factory=dict)  # versions the graphs were checked with (onnxruntime)
    source: dict = field(default_factory=dict)  # checkpoint it came from
    created: str = ""
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "schema_version": self.schema_version,
            "created": self.created,
            "arch": self.arch.to_json(),
            "tokenizer": self.tokenizer,
            "special_tokens": self.special_tokens,
            "graphs": self.graphs,
            "engines": self.engines,
            "files": self.files,
            "max_context": self.max_context,
            "max_batch": self.max_batch,
            "max_prompt": self.max_prompt,
            "chat_template": self.chat_template.to_json(),
            "exporter": self.exporter,
            "runtime": self.runtime,
            "source": self.source,
        }

    @classmethod
    def from_json(cls, data: dict) -> Manifest:
        version = check_schema(data, MANIFEST, SCHEMA_VERSION, oldest=1, kind=("format", FORMAT), fix="export the bundle again")
        try:
            return cls(
                schema_version=version,
                created=data.get("created", ""),
                arch=ArchSpec.from_json(data["arch"]),
                tokenizer=dict(data["tokenizer"]),
                special_tokens={k: int(v) for k, v in data["special_tokens"].items()},
                graphs={k: dict(v) for k, v in data["graphs"].items()},
                engines={k: dict(v) for k, v in data.get("engines", {}).items()},
                files={str(k): str(v) for k, v in data["files"].items()},
                max_context=int(data["max_context"]),
                max_batch=int(data["max_batch"]),
                max_prompt=int(data["max_prompt"]),
                chat_template=ChatTemplate.from_json(data["chat_template"]),
                exporter=dict(data.get("exporter", {})),
                runtime=dict(data.get("runtime", {})),
                source=dict(data.get("source", {})),
            )
        except KeyError as exc:
            raise InputError(f"{MANIFEST}: missing field {exc}") from None
        except (TypeError, ValueError, AttributeError) as exc:
            raise InputError(f"{MANIFEST}: malformed ({exc})") from None

    def record_graph(self, precision: str, entry: dict, hashes: dict[str, str]) -> None:
        """Add (or replace) a graph: its manifest entry and the sha256 of its files."""
        self.graphs[precision] = entry
        self.files.update(hashes)

    def record_engine(self, name: str, file: str, sha256: str, precision: str, record: dict) -> None:
        """Add (or replace) a built engine: its file, hash and build record."""
        self.engines[name] = {"file": file, "precision": precision, "record": record}
        self.files[file] = sha256


class Bundle:
    """A verified bundle directory.  Use `Bundle.load(path)`."""

    def __init__(self, path: Path, manifest: Manifest):
        self.path = path
        self.manifest = manifest

    @classmethod
    def load(cls, path: str | Path, *, verify: bool = True) -> Bundle:
        """Read the manifest and (by default) check every file's sha256."""
        path = Path(path)
        if not path.is_dir():
            raise InputError(f"bundle {path}: not a directory")
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            raise InputError(f"bundle {path}: {MANIFEST} is missing (not a bundle, or an export that did not finish)")
        data = read_json(manifest_path, f"bundle {path}:")
        try:
            manifest = Manifest.from_json(data)
        except (InputError, IncompatibleError) as exc:
            raise type(exc)(f"bundle {path}: {exc}") from None
        bundle = cls(path, manifest)
        if verify:
            bundle.verify()
        return bundle

    def loaded_files(self) -> dict[str, str]:
        """What the runtime reads, by where the manifest names it: graphs, their weights, the tokenizer, engines."""
        m = self.manifest
        named = {"tokenizer.file": m.tokenizer.get("file")}
        for precision, graph in m.graphs.items():
            named[f"graphs.{precision}.file"] = graph.get("file")
            if graph.get("data_file") is not None:
                named[f"graphs.{precision}.data_file"] = graph["data_file"]
        named.update({f"engines.{name}.file": engine.get("file") for name, engine in m.engines.items()})
        return named

    def _inside(self, name, where: str) -> None:
        """InputError unless `name` is a relative path without `..` that resolves inside the bundle directory."""
        if not isinstance(name, str) or not name:
            raise InputError(f"bundle {self.path}: {where} must be a file name, got {name!r}")
        parts = Path(name).parts
        if Path(name).is_absolute() or ".." in parts or "\\" in name:
            raise InputError(f"bundle {self.path}: {where} {name!r} points outside the bundle (it must be a relative path without '..')")
        root = self.path.resolve()
        if not (self.path / name).resolve().is_relative_to(root):
            raise InputError(f"bundle {self.path}: {where} {name!r} resolves outside the bundle (a symlink?)")

    def verify(self) -> None:
        """Every file the runtime loads is listed in `files`; every listed file lies inside the bundle, exists and has its sha256."""
        for where, name in self.loaded_files().items():
            self._inside(name, where)
            if name not in self.manifest.files:
                raise InputError(f"bundle {self.path}: {where} {name!r} has no sha256 in the manifest's files (export it again)")
        for name, expected in self.manifest.files.items():
            self._inside(name, "files entry")
            file = self.path / name
            if not file.is_file():
                raise InputError(f"bundle {self.path}: {name} is missing (incomplete bundle; export it again)")
            if file_sha256(file) != expected:
                raise InputError(f"bundle {self.path}: {name} is damaged (sha256 differs from the manifest; copy or export it again)")

    # ---------------------------------------------------------------- access

    @property
    def arch(self) -> ArchSpec:
        return self.manifest.arch

    @property
    def max_context(self) -> int:
        return self.manifest.max_context

    @property
    def max_batch(self) -> int:
        return self.manifest.max_batch

    @property
    def max_prompt(self) -> int:
        return self.manifest.max_prompt

    @property
    def chat_template(self) -> ChatTemplate:
        return self.manifest.chat_template

    @property
    def precisions(self) -> list[str]:
        return [p for p in PRECISIONS if p in self.manifest.graphs]

    @property
    def tokenizer_path(self) -> Path:
        return self.path / self.manifest.tokenizer["file"]

    def onnx_path(self, precision: str = "fp32") -> Path:
        if precision not in self.manifest.graphs:
            hint = f"; `merino-edge quantize {self.path} --{precision}` adds one" if precision in QUANTIZED else ""
            raise InputError(f"bundle {self.path} has no {precision} graph (it has: {', '.join(self.precisions) or 'none'}){hint}")
        return self.path / self.manifest.graphs[precision]["file"]

    def cpu_precision(self) -> tuple[str, str]:
        """The graph `auto` runs on a CPU, and why: the smallest whose measured quality loss is within its stored bound."""
        skipped = []
        for precision in (p for p in CPU_PRECISIONS if p in self.manifest.graphs):
            quality = self.manifest.graphs[precision].get("quality")
            if precision not in QUANTIZED:
                return precision, "; ".join([*skipped, f"{precision}: not quantized"])
            if quality and quality["increase"] <= quality["max_increase"]:
                return precision, "; ".join([*skipped, f"{precision}: perplexity {quality['increase']:+.2%}, within its {quality['max_increase']:.0%} bound"])
            skipped.append(f"{precision}: perplexity {quality['increase']:+.2%}, over its {quality['max_increase']:.0%} bound" if quality else f"{precision}: quality not measured")
        return self.precisions[0], f"no CPU graph in the bundle; {self.precisions[0]}"

    @property
    def engine_record(self) -> dict | None:
        """The build record of the bundle's (first) engine, or None before `merino-edge build`."""
        return next(iter(self.manifest.engines.values()), {}).get("record")

    def engine_path(self, name: str | None = None) -> Path | None:
        engines = self.manifest.engines
        entry = engines.get(name) if name else next(iter(engines.values()), None)
        return self.path / entry["file"] if entry else None

    def add_engine(self, engine_file: str | Path, record: dict, *, name: str = "tensorrt-fp16", precision: str = "fp16") -> None:
        """Record an engine file that lies inside the bundle and rewrite the manifest atomically."""
        file = Path(engine_file)
        file = file if file.is_absolute() else self.path / file
        try:
            relative = file.resolve().relative_to(self.path.resolve()).as_posix()
        except ValueError:
            raise InputError(f"engine {file} must lie inside the bundle {self.path}") from None
        if not file.is_file():
            raise InputError(f"engine {file} does not exist")
        self.manifest.record_engine(name, relative, file_sha256(file), precision, record)
        write_json_atomic(self.path / MANIFEST, self.manifest.to_json())
