"""Which ONNX operators a merino-edge graph may use, and the check that enforces it.

`TENSORRT_OPS` is the set marked supported ("Y") in onnx-tensorrt's
`docs/operators.md` (the TensorRT 10.x table, https://github.com/onnx/onnx-tensorrt/blob/main/docs/operators.md,
"TensorRT 10.15 supports operators in the inclusive range of opset 9 to opset 24"),
less the operators its changelog lists as added after TensorRT 10.3 (the
version on JetPack 6.1 and 6.2): Attention, RMSNormalization, RotaryEmbedding, TensorScatter.

On top of that the design forbids control flow (`If`, `Loop`, `Scan`) although
TensorRT parses it, anything `Sequence*`/`Optional*`, and every operator outside
the default ONNX domain (ONNX Runtime contrib ops such as `com.microsoft.*`).
"""

from __future__ import annotations

from pathlib import Path

from merino_edge.errors import InputError

TENSORRT_OPS = frozenset(
    (
        "Abs", "Acos", "Acosh", "Add", "And", "ArgMax", "ArgMin", "Asin", "Asinh", "Atan", "Atanh", "AveragePool",
        "BatchNormalization", "BlackmanWindow", "Cast", "CastLike", "Ceil", "Celu", "Clip", "Concat", "Constant",
        "ConstantOfShape", "Conv", "ConvTranspose", "Cos", "Cosh", "CumSum", "DeformConv", "DepthToSpace",
        "DequantizeLinear", "Div", "Dropout", "Einsum", "Elu", "Equal", "Erf", "Exp", "Expand", "EyeLike", "Flatten",
        "Floor", "Gather", "GatherElements", "GatherND", "Gelu", "Gemm", "GlobalAveragePool", "GlobalLpPool",
        "GlobalMaxPool", "Greater", "GreaterOrEqual", "GridSample", "GroupNormalization", "GRU", "HammingWindow",
        "HannWindow", "HardSigmoid", "HardSwish", "Hardmax", "Identity", "If", "ImageScaler", "InstanceNormalization",
        "IsInf", "IsNaN", "LayerNormalization", "LeakyRelu", "Less", "LessOrEqual", "Log", "LogSoftmax", "Loop", "LRN",
        "LSTM", "LpNormalization", "LpPool", "MatMul", "Max", "MaxPool", "Mean", "MeanVarianceNormalization", "Min",
        "Mish", "Mod", "Mul", "Neg", "NonMaxSuppression", "NonZero", "Not", "OneHot", "Or", "Pad", "ParametricSoftplus",
        "Pow", "PRelu", "QuantizeLinear", "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
        "Range", "Reciprocal", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
        "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare", "Relu", "Reshape", "Resize", "ReverseSequence",
        "RNN", "RoiAlign", "Round", "STFT", "ScaledTanh", "Scan", "Scatter", "ScatterElements", "ScatterND", "Selu",
        "Shape", "Shrink", "Sigmoid", "Sign", "Sin", "Sinh", "Size", "Slice", "Softmax", "Softplus", "Softsign",
        "SpaceToDepth", "Split", "Sqrt", "Squeeze", "Sub", "Sum", "Tan", "Tanh", "ThresholdedRelu", "Tile", "TopK",
        "Transpose", "Trilu", "Unsqueeze", "Upsample", "Where", "Xor",
    )
)

CONTROL_FLOW_OPS = frozenset({"If", "Loop", "Scan"})

ALLOWED_OPS = TENSORRT_OPS - CONTROL_FLOW_OPS


def disallowed_nodes(graph) -> list[tuple[str, str]]:
    """(qualified op type, node name) of every node of an `onnx.GraphProto` outside `ALLOWED_OPS`."""
    bad = []
    for index, node in enumerate(graph.node):
        default_domain = node.domain in ("", "ai.onnx")
        if not default_domain or node.op_type not in ALLOWED_OPS:
            op = node.op_type if default_domain else f"{node.domain}.{node.op_type}"
            bad.append((op, node.name or f"#{index}"))
    return bad


def check_operators(onnx_path: str | Path) -> None:
    """Raise InputError listing every operator (type and node name) TensorRT on the board could not take."""
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(onnx_path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (OSError, DecodeError) as exc:
        raise InputError(f"{path}: not a readable ONNX file ({exc})") from None
    bad = disallowed_nodes(model.graph)
    if bad:
        listed = ", ".join(f"{op} (node {name!r})" for op, name in bad[:20])
        more = f" and {len(bad) - 20} more" if len(bad) > 20 else ""
        raise InputError(f"{path.name}: {len(bad)} operator(s) outside the onnx-tensorrt supported set: {listed}{more}")
