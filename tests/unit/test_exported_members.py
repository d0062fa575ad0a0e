import subprocess
import sys

import rankstream.stream


def test_public_surface_is_pinned() -> None:
    assert sorted(rankstream.stream.__all__) == [
        "ArtifactError",
        "ClickEvent",
        "ConfigError",
        "ItemStats",
        "Manifest",
        "RankstreamError",
        "SIGNALS",
        "candidate_signals",
        "candidate_text",
        "covisit_candidates",
        "history_text",
        "load_manifest",
    ]
    for name in rankstream.stream.__all__:
        assert hasattr(rankstream.stream, name)


def test_serving_path_never_imports_torch() -> None:
    code = (
        "import sys, rankstream.stream, rankstream.stream.service, rankstream.stream.scorer, "
        "rankstream.stream.encoder; "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
