"""The cross-encoder the pipeline trains: BERT plus an optional learned bias per candidate position.

The pair text already carries the candidate's co-visitation position as its first token ("3 | title").
A BERT that must learn a monotone score from number tokens learns it slowly (the demo's fine-tune ended
below the co-visitation order), so the teacher gets the signal directly: a scalar bias looked up by the
candidate's first token, initialised from the train split's click rate at each position. The network
then starts at the co-visitation order and learns corrections from the text. The bias is part of the
ONNX graph (ArgMax + Gather on the existing inputs), so the scorer and the pair format are unchanged.
"""

import json
import logging
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertForSequenceClassification
from transformers.modeling_outputs import SequenceClassifierOutput

from rankstream.stream.features import candidate_text
from rankstream.stream.ranker import PairEncoder

log = logging.getLogger(__name__)

PRIOR_FLAG = "rankstream_position_prior"


class PositionPriorBert(BertForSequenceClassification):
    """BertForSequenceClassification whose logit adds `position_bias[first candidate token]`."""

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.position_bias = torch.nn.Embedding(config.vocab_size, 1)
        torch.nn.init.zeros_(self.position_bias.weight)

    def forward(  # type: ignore[override]
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> SequenceClassifierOutput:
        out = super().forward(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        if token_type_ids is None:
            raise ValueError("PositionPriorBert needs token_type_ids to find the candidate's first token")
        # First token of segment B (argmax returns the first maximum, in torch and in ONNX alike).
        first = torch.argmax(token_type_ids.to(torch.float32), dim=1, keepdim=True)
        bias = self.position_bias(input_ids.gather(1, first)).reshape(-1, 1)
        return SequenceClassifierOutput(logits=out.logits + bias)


def load_cross_encoder(path: Path, **kwargs: Any) -> torch.nn.Module:
    """The saved cross-encoder at `path`, with its position prior when it has one (one logit per pair)."""
    config = json.loads((Path(path) / "config.json").read_text())
    kwargs.setdefault("attn_implementation", "eager")
    if config.get(PRIOR_FLAG):
        return PositionPriorBert.from_pretrained(path, num_labels=1, **kwargs)
    return AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, **kwargs)


def position_prior(instances: Iterable[Any], n_candidates: int = 50) -> list[float]:
    """log P(positive | co-visitation position r), r = 0..n-1, smoothed, from training instances."""
    hits, seen = [0] * n_candidates, [0] * n_candidates
    for inst in instances:
        for r, c in enumerate(list(dict.fromkeys(inst.candidates))[:n_candidates]):
            seen[r] += 1
            hits[r] += c in inst.positives
    return [math.log((h + 0.5) / (n + 1.0)) for h, n in zip(hits, seen, strict=True)]


def with_position_prior(base_dir: Path, out_dir: Path, prior: Sequence[float], *, max_length: int = 64) -> Path:
    """Save `base_dir` as a PositionPriorBert whose bias for position r's token is `prior[r]`."""
    out_dir = Path(out_dir)
    model = PositionPriorBert.from_pretrained(base_dir, num_labels=1, attn_implementation="eager")
    model.config.update({PRIOR_FLAG: True})
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out_dir)
    encoder = PairEncoder(out_dir / "tokenizer.json", max_length)
    with torch.no_grad():
        model.position_bias.weight.zero_()
        for r, value in enumerate(prior):
            enc = encoder.encode([("x", candidate_text("x", r))])
            first = int(enc["token_type_ids"][0].argmax())
            model.position_bias.weight[int(enc["input_ids"][0][first]), 0] = value
    model.save_pretrained(out_dir)
    log.info("position prior for %d positions: %.2f (first) .. %.2f (last)", len(prior), prior[0], prior[-1])
    return out_dir
