"""The cross-encoder the pipeline trains: BERT plus a learned bias per candidate position, plus a linear
head over the serve-time signals.

logit = BERT(pair text) + position_bias[candidate's first token] + w . (signals - mean) * scale

The pair text already carries the candidate's co-visitation position as its first token ("3 | title").
A BERT that must learn a monotone score from number tokens learns it slowly (the demo's fine-tune ended
below the co-visitation order), so the model gets the signal directly: a scalar bias looked up by the
candidate's first token (ArgMax + Gather on the existing inputs in the ONNX graph). Text alone still
ranked no better than co-visitation; what predicts the next basket here is structure the text cannot
carry (stream/signals.py), so the model also reads those numbers through a linear head. The head's
standardisation constants (mean, scale) are buffers saved with the weights, so they are baked into the
exported graph: the scorer feeds raw `candidate_signals` rows. The head is initialised from a convex fit
(compression/signal_head.py) with the classifier zeroed: training starts at the linear scorer and the
text learns corrections to it.
"""

import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertForSequenceClassification,
    MPNetForSequenceClassification,
)
from transformers.modeling_outputs import SequenceClassifierOutput

from rankstream.compression.signal_head import SignalHead
from rankstream.stream.candidates import in_catalog
from rankstream.stream.features import candidate_text
from rankstream.stream.ranker import LinearPart, PairEncoder

log = logging.getLogger(__name__)

PRIOR_FLAG = "rankstream_position_prior"
SIGNALS_KEY = "rankstream_signals"  # config: {"version": ..., "names": [...]} of the signal set the head reads


class _PriorAndSignals:
    """The position bias and signal head, shared by the BERT and MPNet cross-encoders below; each of them
    says only how its encoder turns the pair into the text's logit (`_text_logits`)."""

    config: Any

    def __init__(self, config: Any) -> None:
        super().__init__(config)  # type: ignore[call-arg]
        self._init_prior(config)

    def _text_logits(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, token_type_ids: torch.Tensor | None
    ) -> torch.Tensor:
        raise NotImplementedError

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        signals: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> SequenceClassifierOutput:
        logits = self._text_logits(input_ids, attention_mask, token_type_ids)
        return self._add_prior(logits, input_ids, token_type_ids, signals)

    def _init_prior(self, config: Any) -> None:
        self.position_bias = torch.nn.Embedding(config.vocab_size, 1)
        torch.nn.init.zeros_(self.position_bias.weight)
        spec = getattr(config, SIGNALS_KEY, None)
        self.n_signals = len(spec["names"]) if spec else 0
        if self.n_signals:
            self.signal_weight = torch.nn.Parameter(torch.zeros(self.n_signals))
            self.register_buffer("signal_mean", torch.zeros(self.n_signals))  # type: ignore[attr-defined]
            self.register_buffer("signal_scale", torch.ones(self.n_signals))  # type: ignore[attr-defined]

    def _add_prior(
        self,
        logits: torch.Tensor,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None,
        signals: torch.Tensor | None,
    ) -> SequenceClassifierOutput:
        if token_type_ids is None:
            raise ValueError(f"{type(self).__name__} needs token_type_ids to find the candidate's first token")
        # First token of segment B (argmax returns the first maximum, in torch and in ONNX alike).
        first = torch.argmax(token_type_ids.to(torch.float32), dim=1, keepdim=True)
        logits = logits + self.position_bias(input_ids.gather(1, first)).reshape(-1, 1)
        if self.n_signals:
            if signals is None:
                raise ValueError(f"this model reads {self.n_signals} signals per pair; pass signals=[batch, n]")
            # Elementwise Mul + ReduceSum rather than a MatMul: dynamic INT8 quantizes MatMuls, and this
            # head must stay fp32 (its inputs span several orders of magnitude).
            z = (signals.to(logits.dtype) - self.signal_mean) * self.signal_scale
            logits = logits + (z * self.signal_weight).sum(dim=-1, keepdim=True)
        return SequenceClassifierOutput(logits=logits)


class PositionPriorBert(_PriorAndSignals, BertForSequenceClassification):
    """BertForSequenceClassification whose logit adds `position_bias[first candidate token]` and, when the
    config names a signal set, a linear head over standardised signals (`forward(..., signals=...)`)."""

    def _text_logits(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, token_type_ids: torch.Tensor | None
    ) -> torch.Tensor:
        # The encoder's own forward, named: `super()` here would resolve to the mixin's forward.
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        return BertForSequenceClassification.forward(self, **kwargs).logits


class PositionPriorMPNet(_PriorAndSignals, MPNetForSequenceClassification):
    """The same on MPNet (the teacher's architecture). MPNet has no segment embeddings: `token_type_ids`
    only locate the candidate's first token for the prior (the tokenizer marks segment B, see
    `mark_pair_segments`) and never reach the encoder."""

    def _text_logits(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, token_type_ids: torch.Tensor | None
    ) -> torch.Tensor:
        return MPNetForSequenceClassification.forward(self, input_ids=input_ids, attention_mask=attention_mask).logits


_PRIOR_CLASSES: dict[str, type[torch.nn.Module]] = {"bert": PositionPriorBert, "mpnet": PositionPriorMPNet}


def _prior_class(model_type: str) -> Any:
    try:
        return _PRIOR_CLASSES[model_type]
    except KeyError:
        known = list(_PRIOR_CLASSES)
        raise ValueError(f"no position-prior cross-encoder for model type {model_type!r}; known: {known}") from None


def output_layer(model: torch.nn.Module) -> torch.nn.Linear:
    """The last linear layer of the classifier (BERT: `classifier`; MPNet: `classifier.out_proj`)."""
    head = model.classifier
    return head.out_proj if hasattr(head, "out_proj") else head  # type: ignore[return-value]


def save_tokenizer(src_dir: Path, out_dir: Path) -> None:
    """Save `src_dir`'s tokenizer into `out_dir`, segment B marked (transformers rebuilds MPNet's template
    on load, so the mark is re-applied on every save)."""
    AutoTokenizer.from_pretrained(src_dir).save_pretrained(out_dir)
    mark_pair_segments(Path(out_dir) / "tokenizer.json")


def mark_pair_segments(tokenizer_json: Path) -> None:
    """Rewrite a RoBERTa-style pair template (`<s> A </s></s> B </s>`, every type id 0) so that segment B's
    tokens carry type id 1, as BERT's do: the position prior finds the candidate's first token that way."""
    path = Path(tokenizer_json)
    data = json.loads(path.read_text())
    post = data.get("post_processor") or {}
    if post.get("type") != "RobertaProcessing":
        return
    cls, sep = post["cls"][0], post["sep"][0]

    def piece(kind: str, type_id: int, name: str) -> dict[str, Any]:
        return {kind: {"id": name, "type_id": type_id}}

    data["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [piece("SpecialToken", 0, cls), piece("Sequence", 0, "A"), piece("SpecialToken", 0, sep)],
        "pair": [
            piece("SpecialToken", 0, cls),
            piece("Sequence", 0, "A"),
            piece("SpecialToken", 0, sep),
            piece("SpecialToken", 0, sep),
            piece("Sequence", 1, "B"),
            piece("SpecialToken", 1, sep),
        ],
        "special_tokens": {t: {"id": t, "ids": [i], "tokens": [t]} for t, i in (post["cls"], post["sep"])},
    }
    path.write_text(json.dumps(data, ensure_ascii=False))


def signal_spec(model: torch.nn.Module) -> dict[str, Any] | None:
    """The signal set a loaded cross-encoder reads ({"version", "names"}), or None for a text-only one."""
    spec: dict[str, Any] | None = getattr(model.config, SIGNALS_KEY, None)
    return spec


def load_cross_encoder(path: Path, **kwargs: Any) -> torch.nn.Module:
    """The saved cross-encoder at `path`, with its position prior and signal head when it has them."""
    config = json.loads((Path(path) / "config.json").read_text())
    kwargs.setdefault("attn_implementation", "eager")
    if config.get(PRIOR_FLAG) or config.get(SIGNALS_KEY):
        return _prior_class(config["model_type"]).from_pretrained(path, num_labels=1, **kwargs)
    return AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, **kwargs)


def linear_part(model: torch.nn.Module, encoder: PairEncoder, ranks: int = 200) -> LinearPart | None:
    """The model's non-text part (position bias per candidate rank, signal head), or None without one."""
    if not isinstance(model, _PriorAndSignals):
        return None
    bias = []
    with torch.no_grad():
        for r in range(ranks):
            enc = encoder.encode([("x", candidate_text("x", r))])
            first = int(enc["token_type_ids"][0].argmax())
            bias.append(float(model.position_bias.weight[int(enc["input_ids"][0][first]), 0]))
        if not model.n_signals:
            return LinearPart(np.asarray(bias))
        head = (model.signal_mean, model.signal_scale, model.signal_weight)
        return LinearPart(np.asarray(bias), *(x.detach().double().numpy() for x in head))


def position_prior(instances: Iterable[Any], catalog: Mapping[str, str], n_candidates: int = 50) -> list[float]:
    """log P(positive | position r), r = 0..n-1, smoothed, from training instances; positions as the scorer
    numbers them (`in_catalog`), so that the bias of position r is learnt on the lists the scorer serves."""
    hits, seen = [0] * n_candidates, [0] * n_candidates
    for inst in instances:
        for r, c in enumerate(in_catalog(inst.candidates, catalog)[:n_candidates]):
            seen[r] += 1
            hits[r] += c in inst.positives
    return [math.log((h + 0.5) / (n + 1.0)) for h, n in zip(hits, seen, strict=True)]


def with_position_prior(
    base_dir: Path,
    out_dir: Path,
    prior: Sequence[float],
    *,
    max_length: int = 64,
    head: SignalHead | None = None,
) -> Path:
    """Save `base_dir` as a PositionPriorBert whose bias for position r's token is `prior[r]`.

    With `head`, the model also reads `head.names` through a linear head set to `head` (its prior weight
    scales `prior`), and the classifier on top of BERT starts at zero: the saved model scores exactly as
    the fitted linear scorer until training teaches the text its corrections.
    """
    out_dir = Path(out_dir)
    extra: dict[str, Any] = {PRIOR_FLAG: True}
    if head is not None:
        extra[SIGNALS_KEY] = {"version": head.version, "names": list(head.names)}
    config = AutoConfig.from_pretrained(base_dir, num_labels=1)
    config.update(extra)  # before the model is built: the head's size comes from the config
    model = _prior_class(config.model_type).from_pretrained(base_dir, config=config, attn_implementation="eager")
    save_tokenizer(base_dir, out_dir)
    encoder = PairEncoder(out_dir / "tokenizer.json", max_length)
    scale = head.prior_weight if head is not None else 1.0
    with torch.no_grad():
        model.position_bias.weight.zero_()
        for r, value in enumerate(prior):
            enc = encoder.encode([("x", candidate_text("x", r))])
            first = int(enc["token_type_ids"][0].argmax())
            model.position_bias.weight[int(enc["input_ids"][0][first]), 0] = value * scale
        if head is not None:
            model.signal_weight.copy_(torch.tensor(head.weight))
            model.signal_mean.copy_(torch.tensor(head.mean))
            model.signal_scale.copy_(torch.tensor(head.scale))
            output_layer(model).weight.zero_()
            output_layer(model).bias.zero_()
    model.save_pretrained(out_dir)
    if prior:
        log.info("position prior for %d positions: %.2f (first) .. %.2f (last)", len(prior), prior[0], prior[-1])
    if head is not None:
        weights = {n: round(w, 3) for n, w in zip(head.names, head.weight, strict=True)}
        log.info("signal head %s: prior x%.3f, %s", head.version, head.prior_weight, weights)
    return out_dir
