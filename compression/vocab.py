"""Trim a WordPiece cross-encoder's vocabulary to the tokens the catalog's text uses.

MiniLM's 30,522-token embedding table is most of a 2-layer student's weights. Pair text is built from
catalog titles and position numbers only, so keeping the tokens their tokenization produces (plus the
special tokens) leaves every in-catalog pair's token sequence, and so its score, unchanged: WordPiece's
greedy longest match finds the same pieces because none of them was removed and none was added. A
title added to the catalog later may contain pieces that are gone; they become [UNK] until the next
rebuild, which the recompression job does anyway.
"""

import json
import logging
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer

from rankstream.compression.model import load_cross_encoder
from rankstream.stream.features import candidate_text, history_text

log = logging.getLogger(__name__)


def catalog_texts(titles: Iterable[str], n_positions: int = 50) -> list[str]:
    """Every text piece pair building can emit: titles, the history separator, candidate positions."""
    titles = list(titles)
    return [
        *titles,
        history_text(["a", "b", "c"]),
        *(candidate_text(titles[0] if titles else "x", r) for r in range(n_positions)),
    ]


def trim_vocab(src_dir: Path, out_dir: Path, texts: Iterable[str]) -> Path:
    """Save `src_dir` with only the vocabulary `texts` use (and the special tokens); returns `out_dir`."""
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    tok_json = json.loads((src_dir / "tokenizer.json").read_text())
    if tok_json["model"]["type"] != "WordPiece":
        raise ValueError(f"trim_vocab handles WordPiece tokenizers, {src_dir} has {tok_json['model']['type']}")
    tokenizer = Tokenizer.from_file(str(src_dir / "tokenizer.json"))
    tokenizer.no_truncation()
    used = {a["id"] for a in tok_json["added_tokens"]}
    # Printable ASCII characters stay, so digits and punctuation in new titles still tokenize sensibly.
    used.update(i for t, i in tok_json["model"]["vocab"].items() if len(t) == 1 and 32 < ord(t) < 127)
    for enc in tokenizer.encode_batch(list(texts), add_special_tokens=False):
        used.update(enc.ids)
    keep = sorted(used)
    new_id = {old: new for new, old in enumerate(keep)}
    vocab = tok_json["model"]["vocab"]
    tok_json["model"]["vocab"] = {t: new_id[i] for t, i in sorted(vocab.items(), key=lambda kv: kv[1]) if i in new_id}
    for added in tok_json["added_tokens"]:
        added["id"] = new_id[added["id"]]
    for special in (tok_json.get("post_processor") or {}).get("special_tokens", {}).values():
        special["ids"] = [new_id[i] for i in special["ids"]]
    if tok_json.get("padding"):
        tok_json["padding"]["pad_id"] = new_id[tok_json["padding"]["pad_id"]]

    model = load_cross_encoder(src_dir)
    index = torch.tensor(keep)
    with torch.no_grad():
        old = model.get_input_embeddings()
        emb = torch.nn.Embedding(len(keep), old.embedding_dim, padding_idx=new_id.get(old.padding_idx or 0))
        emb.weight.copy_(old.weight[index])
        model.set_input_embeddings(emb)
        if hasattr(model, "position_bias"):
            bias = torch.nn.Embedding(len(keep), 1)
            bias.weight.copy_(model.position_bias.weight[index])
            model.position_bias = bias
    model.config.vocab_size = len(keep)
    for name in ("pad_token_id",):
        if getattr(model.config, name, None) is not None:
            setattr(model.config, name, new_id[getattr(model.config, name)])
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    # tokenizer.json is what the trainer, the exporter and the scorer read; vocab.txt keeps slow
    # tokenizers (and AutoTokenizer's fallback) consistent with it.
    (out_dir / "tokenizer.json").write_text(json.dumps(tok_json, ensure_ascii=False))
    id_to_token = {i: t for t, i in tok_json["model"]["vocab"].items()}
    (out_dir / "vocab.txt").write_text("".join(id_to_token[i] + "\n" for i in range(len(keep))))
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if (src_dir / name).exists():
            (out_dir / name).write_text((src_dir / name).read_text())
    log.info("trimmed vocabulary %d -> %d tokens (%s)", len(vocab), len(keep), src_dir)
    return out_dir
