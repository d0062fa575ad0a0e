from types import SimpleNamespace

from rankstream.stream.scoring import AUTO_RERANK_TOP, rerank_top_for
from rankstream.stream.settings import load_settings


def test_the_artifact_decides_pre_selection_unless_the_operator_does() -> None:
    with_linear = SimpleNamespace(linear=object())
    without = SimpleNamespace(linear=None)
    unset = load_settings()
    assert unset.rerank_top is None
    assert rerank_top_for(unset, with_linear) == AUTO_RERANK_TOP  # type: ignore[arg-type]
    assert rerank_top_for(unset, without) == 0  # type: ignore[arg-type]
    assert rerank_top_for(load_settings(top_k=30, candidates=50), with_linear) == 30  # type: ignore[arg-type]
    assert rerank_top_for(load_settings(rerank_top=0), with_linear) == 0  # type: ignore[arg-type]
    assert rerank_top_for(load_settings(rerank_top=20), with_linear) == 20  # type: ignore[arg-type]
