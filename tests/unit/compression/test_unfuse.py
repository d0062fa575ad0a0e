"""The slow fused kernels split back into plain ops compute the same function (`compression.unfuse`)."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from rankstream.compression.unfuse import CHAIN, unfuse_slow_kernels
from rankstream.stream.artifact import load_manifest

_MS = "com.microsoft"


def _graph(hidden: int, bias: bool, beta: bool, eps: float, rng: np.random.Generator) -> onnx.ModelProto:
    """x, skip -> SkipLayerNormalization -> MatMul -> BiasGelu -> y, with random weights."""
    inits = {
        "gamma": rng.standard_normal(hidden),
        "beta": rng.standard_normal(hidden),
        "bias": rng.standard_normal(hidden),
        "w": rng.standard_normal((hidden, 2 * hidden)) / np.sqrt(hidden),
        "gelu_bias": rng.standard_normal(2 * hidden),
    }
    skip_inputs = ["x", "skip", "gamma", "beta" if beta or bias else ""] + (["bias"] if bias else [])
    if not beta and bias:  # a bias without beta: beta given as zeros, the node's input order is fixed
        inits["beta"] = np.zeros(hidden)
    nodes = [
        helper.make_node("SkipLayerNormalization", skip_inputs, ["normed"], domain=_MS, epsilon=eps),
        helper.make_node("MatMul", ["normed", "w"], ["up"]),
        helper.make_node("BiasGelu", ["up", "gelu_bias"], ["y"], domain=_MS),
    ]
    ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, None, hidden]) for n in ("x", "skip")]
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None, 2 * hidden])
    tensors = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()]
    graph = helper.make_graph(nodes, "g", ins, [out], tensors)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(_MS, 1)])


def _run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options).run(None, feed)[0]


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 4),
    seq=st.integers(1, 9),
    hidden=st.sampled_from([4, 8, 32]),
    bias=st.booleans(),
    beta=st.booleans(),
    eps=st.sampled_from([1e-12, 1e-5]),
    scale=st.floats(0.01, 100.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_unfused_graph_computes_what_the_fused_one_does(
    batch: int, seq: int, hidden: int, bias: bool, beta: bool, eps: float, scale: float, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    fused = _graph(hidden, bias, beta, eps, rng)
    unfused = onnx.ModelProto()
    unfused.CopyFrom(fused)
    assert unfuse_slow_kernels(unfused) == {"SkipLayerNormalization": 1, "BiasGelu": 1}
    assert {n.op_type for n in unfused.graph.node} == {"Add", "LayerNormalization", "MatMul", "Gelu"}
    onnx.checker.check_model(unfused)
    feed = {k: (rng.standard_normal((batch, seq, hidden)) * scale).astype(np.float32) for k in ("x", "skip")}
    np.testing.assert_allclose(_run(unfused, feed), _run(fused, feed), rtol=1e-4, atol=1e-4)


def test_a_graph_without_those_kernels_is_left_alone() -> None:
    model = _graph(8, True, True, 1e-12, np.random.default_rng(0))
    del model.graph.node[0]
    del model.graph.node[-1]
    before = model.SerializeToString()
    assert unfuse_slow_kernels(model) == {}
    assert model.SerializeToString() == before


def test_a_skip_layer_norm_that_exports_its_sum_is_refused() -> None:
    model = _graph(8, True, True, 1e-12, np.random.default_rng(0))
    model.graph.node[0].output.extend(["mean", "inv_std", "sum"])
    with pytest.raises(ValueError, match="extra outputs"):
        unfuse_slow_kernels(model)


@pytest.mark.parametrize("name", ["fp32_artifact", "int8_artifact", "signal_int8_artifact"])
def test_exported_graphs_carry_neither_kernel(name: str, request: pytest.FixtureRequest) -> None:
    artifact: Path = request.getfixturevalue(name)
    ops = {n.op_type for n in onnx.load(str(artifact / "model.onnx")).graph.node}
    assert not ops & {"SkipLayerNormalization", "BiasGelu"}
    assert "LayerNormalization" in ops
    assert CHAIN in load_manifest(artifact).method_chain
