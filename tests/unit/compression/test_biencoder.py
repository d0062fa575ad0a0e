"""The bi-encoder's pieces on tiny random-weight encoders: the in-batch loss, batches without repeats, training
that lowers the loss, layer dropping, FFN pruning, the recall gate."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from rankstream.compression.biencoder import (
    FitConfig,
    FitRecord,
    Targets,
    drop_layers,
    embed,
    evenly_spaced,
    fit,
    in_batch_loss,
    load,
    pair_batches,
    prune_ffn,
    recall_gate,
)
from rankstream.compression.embed import embed_texts
from rankstream.compression.tiny import tiny_encoder
from rankstream.data.copurchase import TitlePair
from rankstream.stream.errors import ConfigError, JobError

WORDS = ["red", "blue", "heart", "cake", "stand", "bag", "jumbo", "paper", "chain", "tin", "mug", "lamp"]
# Item k goes with item k + 1 (k even): titles that share a word, so the pairs are learnable.
PAIRS = [
    TitlePair(f"i{k}", f"i{k + 1}", f"{WORDS[k]} {WORDS[k + 1]} set", f"{WORDS[k]} {WORDS[k + 1]} box")
    for k in range(0, len(WORDS), 2)
]


def unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=1)


def test_in_batch_loss_is_low_for_matching_rows_near_log_batch_for_unrelated_and_symmetric() -> None:
    torch.manual_seed(0)
    a = unit(torch.randn(16, 32))
    assert in_batch_loss(a, a, 20.0).item() < 0.05  # each row picks itself
    # Scale 0: every logit equal, the cross-entropy of a uniform guess.
    assert in_batch_loss(a, unit(torch.randn(16, 32)), 0.0).item() == pytest.approx(math.log(16))
    b = unit(torch.randn(16, 32))
    assert in_batch_loss(a, b, 20.0).item() == pytest.approx(in_batch_loss(b, a, 20.0).item())


def test_batches_are_full_seeded_and_hold_no_item_twice_when_that_is_avoidable() -> None:
    # "i0" is in every fourth pair: a batch of 4 can always avoid a second copy of it.
    pairs = [TitlePair("i0" if k % 4 == 0 else f"x{k}", f"y{k}", f"t{k}", f"u{k}") for k in range(40)]
    batches = pair_batches(pairs, 4, 20, seed=1)
    assert len(batches) == 20 and all(len(b) == 4 for b in batches)
    for b in batches:
        items = [i for k in b for i in (pairs[k].a, pairs[k].b)]
        assert len(items) == len(set(items))
    assert batches == pair_batches(pairs, 4, 20, seed=1)
    assert batches != pair_batches(pairs, 4, 20, seed=2)
    # Two epochs' worth of batches use every pair; a deferred one only waits a batch or two.
    assert {k for b in batches for k in b} == set(range(40))


def test_a_lopsided_pair_set_still_fills_every_batch() -> None:
    pairs = [TitlePair("i0", f"y{k}", "same", f"u{k}") for k in range(3)]
    assert [len(b) for b in pair_batches(pairs, 4, 3, seed=0)] == [4, 4, 4]
    with pytest.raises(JobError):
        pair_batches([], 4, 1, seed=0)


@pytest.mark.slow
def test_training_lowers_the_in_batch_loss_and_writes_its_record(tmp_path: Path) -> None:
    base = tiny_encoder(tmp_path / "base", seed=0)
    config = FitConfig(steps=40, batch_size=6, lr=3e-3, warmup_ratio=0.0, threads=1)
    record = fit(base, tmp_path / "tuned", PAIRS, config)
    assert record.final_loss < record.first_loss
    assert record.layers == 2 and record.pairs_seen == 240
    assert FitRecord.read(tmp_path / "tuned") == record
    # The saved model reads like any sentence encoder, and its pairs now sit closer than before.
    before = embed_texts([p.title_a for p in PAIRS] + [p.title_b for p in PAIRS], base)
    after = embed_texts([p.title_a for p in PAIRS] + [p.title_b for p in PAIRS], tmp_path / "tuned")
    n = len(PAIRS)
    assert (after[:n] * after[n:]).sum(1).mean() > (before[:n] * before[n:]).sum(1).mean()


@pytest.mark.slow
def test_snapshots_are_saved_beside_the_model(tmp_path: Path) -> None:
    base = tiny_encoder(tmp_path / "base", seed=0)
    fit(base, tmp_path / "tuned", PAIRS, FitConfig(steps=3, batch_size=2, threads=1), snapshots=(2,))
    assert (tmp_path / "tuned-step2" / "config.json").exists()
    assert not (tmp_path / "tuned-step1").exists()


@pytest.mark.slow
def test_a_student_learns_the_teachers_vectors(tmp_path: Path) -> None:
    teacher = tiny_encoder(tmp_path / "teacher", seed=0, num_layers=4)
    student = drop_layers(teacher, tmp_path / "start", [0, 3])
    titles = [f"{w} {v}" for w in WORDS for v in WORDS[:3]]
    targets = Targets(titles, embed_texts(titles, teacher))

    def distance(model_dir: Path) -> float:
        return float(((embed_texts(titles, model_dir) - targets.vectors) ** 2).sum(1).mean())

    config = FitConfig(steps=30, batch_size=6, lr=3e-3, warmup_ratio=0.0, distil_weight=10.0, threads=1)
    fit(student, tmp_path / "student", PAIRS, config, targets=targets)
    assert distance(tmp_path / "student") < distance(student)


def test_dropping_layers_keeps_the_chosen_ones_in_order(tmp_path: Path) -> None:
    teacher = tiny_encoder(tmp_path / "teacher", seed=0, num_layers=4)
    _, big = load(teacher)
    tokenizer, small = load(drop_layers(teacher, tmp_path / "student", [0, 3]))
    assert small.config.num_hidden_layers == 2 and len(small.encoder.layer) == 2
    for mine, theirs in zip(small.encoder.layer, [big.encoder.layer[0], big.encoder.layer[3]], strict=True):
        for p, q in zip(mine.parameters(), theirs.parameters(), strict=True):
            torch.testing.assert_close(p, q)
    torch.testing.assert_close(small.embeddings.word_embeddings.weight, big.embeddings.word_embeddings.weight)
    assert embed(small.eval(), tokenizer, ["red heart"], 32).shape == (1, 32)
    with pytest.raises(ConfigError):
        drop_layers(teacher, tmp_path / "bad", [0, 4])
    with pytest.raises(ConfigError):
        drop_layers(teacher, tmp_path / "bad", [3, 0])


def test_ffn_pruning_keeps_a_subset_of_neurons_in_order_and_all_of_them_changes_nothing(tmp_path: Path) -> None:
    teacher = tiny_encoder(tmp_path / "teacher", seed=0, num_layers=4)
    start = drop_layers(teacher, tmp_path / "start", [0, 3])
    titles = [f"{w} {v}" for w in WORDS for v in WORDS[:3]]
    targets = Targets(titles, embed_texts(titles, teacher))
    _, source = load(start)
    size = source.config.intermediate_size

    whole = prune_ffn(start, tmp_path / "whole", targets, 1.0, batches=2, batch_size=8)
    np.testing.assert_allclose(embed_texts(titles, whole), embed_texts(titles, start), atol=1e-6)

    half = prune_ffn(start, tmp_path / "half", targets, 0.5, batches=2, batch_size=8)
    _, pruned = load(half)
    assert pruned.config.intermediate_size == size // 2
    for mine, theirs in zip(pruned.encoder.layer, source.encoder.layer, strict=True):
        rows = mine.intermediate.dense.weight
        assert rows.shape == (size // 2, pruned.config.hidden_size)
        # Each kept row is one of the source's, in the source's order, with its output column beside it.
        found = [int(torch.nonzero((theirs.intermediate.dense.weight == r).all(dim=1))[0]) for r in rows]
        assert found == sorted(set(found))
        torch.testing.assert_close(mine.output.dense.weight, theirs.output.dense.weight[:, found])
    vectors = embed_texts(titles, half)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    for ratio in (0.0, 1.5):
        with pytest.raises(JobError, match="keep ratio"):
            prune_ffn(start, tmp_path / "bad", targets, ratio)


def test_evenly_spaced_layers_keep_the_first_and_the_last() -> None:
    assert evenly_spaced(6, 2) == [0, 5]
    assert evenly_spaced(6, 3) == [0, 2, 5]
    assert evenly_spaced(6, 6) == [0, 1, 2, 3, 4, 5]
    assert evenly_spaced(6, 1) == [5]
    with pytest.raises(ConfigError):
        evenly_spaced(6, 7)


def test_the_gate_refuses_a_student_below_097_of_the_teacher() -> None:
    assert recall_gate(0.097, 0.1).passed
    assert recall_gate(0.12, 0.1).passed
    refused = recall_gate(0.0969, 0.1)
    assert not refused.passed and "below 0.97" in refused.reason and "0.0970" in refused.reason
    assert not recall_gate(float("nan"), 0.1).passed
