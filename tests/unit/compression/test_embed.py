"""Item vectors from a sentence encoder: mean-pooled over real tokens, unit length, the same on every run."""

from pathlib import Path

import numpy as np
import torch

from rankstream.compression.embed import embed_texts, item_vectors, mean_pool

TITLES = {"i1": "RED HEART CAKE STAND", "i2": "BLUE PAPER CHAIN KIT", "i3": "RED HEART CAKE STAND", "i4": "JUMBO BAG"}


def test_mean_pool_leaves_padding_out_and_normalises() -> None:
    hidden = torch.tensor([[[3.0, 0.0], [1.0, 0.0], [100.0, 100.0]]])
    pooled = mean_pool(hidden, torch.tensor([[1, 1, 0]]))
    torch.testing.assert_close(pooled, torch.tensor([[1.0, 0.0]]))


def test_item_vectors_are_unit_rows_in_catalog_order(tiny_bert_dir: Path) -> None:
    matrix, ids = item_vectors(TITLES, tiny_bert_dir)
    assert ids == ["i1", "i2", "i3", "i4"]
    assert matrix.dtype == np.float32 and matrix.shape == (4, 32)
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(matrix[0], matrix[2])  # same title, same vector
    assert not np.allclose(matrix[0], matrix[1])


def test_vectors_are_the_same_on_every_run_and_barely_move_with_batching(tiny_bert_dir: Path) -> None:
    texts = list(TITLES.values())
    once = embed_texts(texts, tiny_bert_dir)
    np.testing.assert_array_equal(once, embed_texts(texts, tiny_bert_dir))
    # One text per batch pads nothing: only float reassociation separates it from the padded batch.
    np.testing.assert_allclose(embed_texts(texts, tiny_bert_dir, batch_size=1), once, atol=1e-5)
    assert embed_texts([], tiny_bert_dir).shape == (0, 32)
