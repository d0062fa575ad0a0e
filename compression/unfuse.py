"""Undo two of ORT's transformer fusions whose CPU kernels are slower than the plain ops they replace.

In onnxruntime 1.32 `SkipLayerNormalization` (residual add, bias, LayerNorm in one node) runs about six
times slower on the CPU than `Add` + `LayerNormalization` on the same tensors (1.25 ms against 0.21 ms on
10 x 51 x 384, one thread), and `BiasGelu` slower than `Add` + `Gelu`. In a 2-layer INT8 student the four
SkipLayerNormalizations took 5 of its 14 ms per 10-pair user. The optimizer still fuses attention and the
embeddings; only these two are split back, into ops that compute the same function, so the graph's outputs
do not change. `bench fusions` measures the trade on an artifact's own checkpoint.
"""

from collections import Counter

import onnx
from onnx import helper

CHAIN = "unfuse:skip-layernorm,bias-gelu"
_MS = "com.microsoft"


def _epsilon(node: onnx.NodeProto) -> float:
    for attribute in node.attribute:
        if attribute.name == "epsilon":
            return attribute.f
    return 1e-12  # the contrib op's default


def _skip_layer_norm(node: onnx.NodeProto) -> list[onnx.NodeProto]:
    """input + skip (+ bias), then LayerNorm over the last axis; only the first output (the normalized sum).

    Raises:
        ValueError: the node also exports its mean, inverse std or the sum, which `Add` + `LayerNormalization`
            would have to recompute; no graph this project exports uses them.
    """
    if any(out for out in node.output[1:]):
        raise ValueError(f"{node.name}: SkipLayerNormalization with extra outputs {list(node.output[1:])}")
    x, skip, gamma = node.input[:3]
    beta = node.input[3] if len(node.input) > 3 else ""
    bias = node.input[4] if len(node.input) > 4 else ""
    base = node.output[0]  # unique in an SSA graph, which node names need not be
    total = f"{base}/unfused_sum"
    nodes = [helper.make_node("Add", [x, skip], [total], name=f"{base}/add")]
    if bias:
        biased = f"{base}/unfused_biased"
        nodes.append(helper.make_node("Add", [total, bias], [biased], name=f"{base}/add_bias"))
        total = biased
    norm_inputs = [total, gamma] + ([beta] if beta else [])
    nodes.append(
        helper.make_node(
            "LayerNormalization",
            norm_inputs,
            [node.output[0]],
            name=f"{base}/layer_norm",
            axis=-1,
            epsilon=_epsilon(node),
        )
    )
    return nodes


def _bias_gelu(node: onnx.NodeProto) -> list[onnx.NodeProto]:
    """input + bias, then the exact (erf) GELU that BiasGelu computes."""
    base = node.output[0]
    biased = f"{base}/unfused_biased"
    return [
        helper.make_node("Add", list(node.input[:2]), [biased], name=f"{base}/add_bias"),
        helper.make_node("Gelu", [biased], [base], name=f"{base}/gelu", domain=_MS),
    ]


_REWRITES = {"SkipLayerNormalization": _skip_layer_norm, "BiasGelu": _bias_gelu}


def unfuse_slow_kernels(model: onnx.ModelProto) -> dict[str, int]:
    """Rewrite `model` in place; returns how many nodes of each kind were split (empty when none).

    LayerNormalization needs opset 17, which every graph exported here has.
    """
    rewritten: list[onnx.NodeProto] = []
    counts: Counter[str] = Counter()
    for node in model.graph.node:
        rewrite = _REWRITES.get(node.op_type) if node.domain == _MS else None
        if rewrite is None:
            rewritten.append(node)
            continue
        rewritten.extend(rewrite(node))
        counts[node.op_type] += 1
    if counts:
        del model.graph.node[:]
        model.graph.node.extend(rewritten)
    return dict(counts)
