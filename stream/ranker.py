"""The serving ranker: an ONNX Runtime session over a verified model artifact.

onnxruntime + tokenizers + numpy only. `PairEncoder` is also what training and export use, so a pair
is tokenized the same way when the model learns it, when its reference scores are recorded and when it
is served.
"""

import logging
from collections.abc import Sequence
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Encoding, Tokenizer

from rankstream.stream import features
from rankstream.stream.artifact import InputSpec, Manifest, load_manifest
from rankstream.stream.errors import ArtifactError, ConfigError
from rankstream.stream.linear import LinearPart, Selection, rerank_top
from rankstream.stream.settings import Settings
from rankstream.stream.signals import SIGNALS

log = logging.getLogger(__name__)

_PAD_TOKENS = ("[PAD]", "<pad>")
# Texts kept tokenized per encoder: a few thousand titles' candidate texts and the recent users' histories,
# a few MB; a text seen again after that is tokenized again.
SEGMENT_CACHE = 16384
SIGNALS_INPUT = "signals"  # float32 [batch, len(SIGNALS.names)], for models whose input spec names a signal set


class PairEncoder:
    """Tokenizes (history, candidate) pairs: truncates the history side only, pads to the batch's longest.

    The padding and truncation stored in a tokenizer.json (MiniLM's pads to a fixed 128) are replaced.
    Each side is tokenized once and kept (`SEGMENT_CACHE` texts): a user's history text is the first half
    of all their pairs and a candidate's text recurs across users, so a pair is mostly two lookups and the
    tokenizer's own truncation and special tokens (`post_process`, which is what `encode` does after
    tokenizing each side). Safe to share between threads: the cache is `functools.lru_cache`.
    """

    def __init__(self, path: Path, max_length: int) -> None:
        self.max_length = max_length
        self._tokenizer = Tokenizer.from_file(str(path))
        # The pad id the model was trained with (BERT's [PAD] is 0, MPNet's <pad> is 1: position ids skip it).
        stored = self._tokenizer.padding
        ids = [self._tokenizer.token_to_id(t) for t in _PAD_TOKENS]
        self._pad_id: int = stored["pad_id"] if stored else next((i for i in ids if i is not None), 0)
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length, strategy="only_first")
        # For a candidate so long that cutting the history alone cannot fit it: cut both sides.
        self._fallback = Tokenizer.from_file(str(path))
        self._fallback.no_padding()
        self._fallback.enable_truncation(max_length, strategy="longest_first")
        # One side alone, untruncated: the pair's truncation is applied to both sides together afterwards.
        sides = Tokenizer.from_file(str(path))
        sides.no_padding()
        sides.no_truncation()
        self._side = lru_cache(maxsize=SEGMENT_CACHE)(partial(sides.encode, add_special_tokens=False))

    def _encode_one(self, pair: tuple[str, str]) -> Encoding:
        history, candidate = self._side(pair[0]), self._side(pair[1])
        try:
            return self._tokenizer.post_process(history, candidate)
        except Exception:  # noqa: BLE001 - tokenizers raises a bare Exception when only_first cannot fit
            return self._fallback.post_process(history, candidate)

    def encode(self, pairs: Sequence[tuple[str, str]]) -> dict[str, np.ndarray]:
        """int64 input_ids, attention_mask and token_type_ids, shape (len(pairs), longest pair)."""
        encodings = [self._encode_one(pair) for pair in pairs]
        length = max((len(e.ids) for e in encodings), default=0)
        input_ids = np.full((len(encodings), length), self._pad_id, dtype=np.int64)
        attention_mask = np.zeros((len(encodings), length), dtype=np.int64)
        token_type_ids = np.zeros((len(encodings), length), dtype=np.int64)
        for row, e in enumerate(encodings):
            n = len(e.ids)
            input_ids[row, :n] = e.ids
            attention_mask[row, :n] = e.attention_mask
            token_type_ids[row, :n] = e.type_ids
        return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}


def session_options(threads: int, spin: bool = True) -> ort.SessionOptions:
    """Session options for scoring: `threads` intra-op threads, one inter-op, all graph optimizations.

    Without `spin`, the intra-op threads sleep as soon as a run ends instead of spinning for more work:
    for a session that runs now and then beside the one serving (a shadow version), whose spinning
    threads would otherwise take the cores from the serving session's next run."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


def run_session(
    session: ort.InferenceSession,
    encoder: PairEncoder,
    pairs: Sequence[tuple[str, str]],
    *,
    inputs: Sequence[str],
    output: str,
    batch_size: int,
    signals: np.ndarray | None = None,
    by_length: bool = False,
) -> np.ndarray:
    """float32 logits, one per pair in input order, scored `batch_size` pairs at a time, each batch padded
    to its longest pair.

    `signals` (one row per pair) is fed as the `signals` input when `inputs` lists it, and must then be
    given. `by_length` batches pairs of similar length together to spare padding: only for a
    batch-invariant graph, where which pairs share a batch changes nothing but the time it takes.
    """
    scores = np.empty(len(pairs), dtype=np.float32)
    if not pairs:
        return scores
    if SIGNALS_INPUT in inputs:
        if signals is None:
            raise ValueError("this model reads serve-time signals: pass one row of signals per pair")
        signals = np.asarray(signals, dtype=np.float32)
        if signals.shape[0] != len(pairs):
            raise ValueError(f"{signals.shape[0]} rows of signals for {len(pairs)} pairs")
    encoded = encoder.encode(pairs)
    lengths = encoded["attention_mask"].sum(axis=1)
    order = np.argsort(lengths, kind="stable") if by_length else np.arange(len(pairs))
    for start in range(0, len(pairs), batch_size):
        idx = order[start : start + batch_size]
        width = int(lengths[idx].max())
        feed = {name: encoded[name][idx, :width] for name in inputs if name != SIGNALS_INPUT}
        if signals is not None and SIGNALS_INPUT in inputs:
            feed[SIGNALS_INPUT] = signals[idx]
        (logits,) = session.run([output], feed)
        scores[idx] = np.asarray(logits, dtype=np.float32).reshape(len(idx))
    return scores


class Ranker:
    """A cross-encoder loaded from an artifact directory, checked before it may score anything."""

    def __init__(
        self,
        manifest: Manifest,
        session: ort.InferenceSession,
        encoder: PairEncoder,
        batch_size: int,
    ) -> None:
        self.manifest = manifest
        self.version = manifest.version
        # The signal set this model reads (None: text only); callers then pass `candidate_signals` rows.
        self.signals = manifest.input_spec.signals
        # A pair's score does not depend on its batch-mates: `score_lists` may batch users together.
        self.batch_invariant = manifest.input_spec.batch_invariant is True
        self._session = session
        self._encoder = encoder
        self._batch_size = batch_size
        self.linear: LinearPart | None = None  # set by `load` when the artifact carries it

    @classmethod
    def load(
        cls,
        directory: Path,
        *,
        threads: int = 2,
        batch_size: int = 32,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        accept_signals: str | None = None,
        spin: bool = True,
    ) -> "Ranker":
        """Verify an artifact (checksums, input spec, smoke test) and open it; ArtifactError if refused.

        `accept_signals` names one more signal set to accept besides `SIGNALS.version`, with the same
        columns: for offline comparison of a model trained on an earlier definition of their inputs. The
        scorer never passes it.
        """
        if threads < 1 or batch_size < 1:
            raise ConfigError(f"threads ({threads}) and batch_size ({batch_size}) must be at least 1")
        missing = [p for p in providers if p not in ort.get_available_providers()]
        if missing:
            raise ConfigError(
                f"execution providers {missing} are not in this onnxruntime build "
                f"(available: {ort.get_available_providers()}); for CUDA install rankstream[gpu]"
            )
        directory = Path(directory)
        manifest = load_manifest(directory)
        spec = manifest.input_spec
        _check_spec(directory, spec, accept_signals)
        try:
            session = ort.InferenceSession(
                str(directory / spec.model_file),
                sess_options=session_options(threads, spin),
                providers=list(providers),
            )
            encoder = PairEncoder(directory / spec.tokenizer_file, spec.max_length)
        except Exception as exc:  # noqa: BLE001 - ORT and tokenizers raise their own untyped errors
            raise ArtifactError(f"{directory}: refused: cannot open the model or tokenizer: {exc}") from exc
        _check_graph(directory, spec, session)
        ranker = cls(manifest, session, encoder, batch_size)
        if spec.linear_file is not None:
            try:
                ranker.linear = LinearPart.read(
                    directory / spec.linear_file, len(SIGNALS.names) if spec.signals else None
                )
            except (OSError, ValueError, KeyError) as exc:
                raise ArtifactError(f"{directory}: refused: unreadable {spec.linear_file}: {exc}") from exc
        ranker._smoke_test(directory)
        log.info(
            "loaded ranker %s from %s (providers %s, threads %d, batch %d)",
            manifest.version,
            directory,
            session.get_providers(),
            threads,
            batch_size,
        )
        return ranker

    def _smoke_test(self, directory: Path) -> None:
        ref = self.manifest.reference
        if len(ref.pairs) != len(ref.scores) or not ref.pairs:
            raise ArtifactError(
                f"{directory}: refused: reference has {len(ref.pairs)} pairs and {len(ref.scores)} scores"
            )
        pairs = [tuple(p) for p in ref.pairs]
        signals = None
        if self.signals is not None:
            if ref.signals is None or len(ref.signals) != len(pairs):
                raise ArtifactError(f"{directory}: refused: the reference lacks one row of signals per pair")
            signals = np.asarray(ref.signals, dtype=np.float32)
        # One batch, as at build time: dynamic INT8 quantizes activations with a scale taken over the
        # whole batch, so a different batch split moves scores by more than a tight tolerance.
        got = self._score(pairs, batch_size=len(pairs), signals=signals)
        mismatches = [
            f"pair {i}: got {g:.6f}, reference {r:.6f}"
            for i, (g, r) in enumerate(zip(got.tolist(), ref.scores, strict=True))
            if not abs(g - r) <= ref.atol  # also catches NaN
        ]
        if mismatches:
            raise ArtifactError(
                f"{directory}: refused: smoke test failed on {len(mismatches)} of {len(pairs)} "
                f"reference pairs (atol {ref.atol}): " + "; ".join(mismatches)
            )
        if self.batch_invariant:  # a promise the scorer relies on when it batches users together
            alone = self._score(pairs, batch_size=1, signals=signals)
            moved = [f"pair {i}" for i, (a, g) in enumerate(zip(alone, got, strict=True)) if not abs(a - g) <= ref.atol]
            if moved:
                raise ArtifactError(
                    f"{directory}: refused: the manifest says batch-invariant, but {', '.join(moved)} score "
                    f"differently alone than in the reference batch (atol {ref.atol})"
                )

    def _score(
        self, pairs: Sequence[tuple[str, str]], batch_size: int, signals: np.ndarray | None = None
    ) -> np.ndarray:
        spec = self.manifest.input_spec
        return run_session(
            self._session,
            self._encoder,
            pairs,
            inputs=spec.inputs,
            output=spec.output,
            batch_size=batch_size,
            signals=signals,
        )

    def score(self, pairs: Sequence[tuple[str, str]], signals: np.ndarray | None = None) -> np.ndarray:
        """float32 logits, one per (history text, candidate text) pair, in input order.

        A model with signals (`self.signals` set) needs their rows (`candidate_signals`), one per pair;
        a text-only model ignores them.
        """
        return self._score(pairs, self._batch_size, signals)

    def score_lists(
        self,
        lists: Sequence[Sequence[tuple[str, str]]],
        signals: Sequence[np.ndarray] | None = None,
        *,
        top: int = 0,
    ) -> list[np.ndarray]:
        """Each list's scores (one user's candidates, compared with each other), in input order.

        A batch-invariant model scores all lists' pairs together (`score_lists_together`). Otherwise each
        list is one batch: dynamic INT8 quantizes activations with one scale per batch, so a score depends
        slightly on its batch-mates, and only a batch of its own keeps a user's order independent of which
        other users shared the micro-batch. `signals`: one matrix per list (see `score`).

        `top` > 0 (needs `self.linear`): cross-encode only the `top` candidates of each list that the
        model's linear part ranks highest; the others are scored below all of them, in that part's order.
        """
        if self.batch_invariant:
            return self.score_lists_together(lists, signals, top=top)
        out = []
        for k, sel in enumerate(self._select(lists, signals, top)):
            if not len(sel.chosen):
                out.append(np.empty(0, np.float32))
                continue
            rows = None if signals is None else np.asarray(signals[k])[sel.chosen]
            out.append(sel.assemble(self._score([lists[k][i] for i in sel.chosen], len(sel.chosen), rows)))
        return out

    def score_lists_together(
        self,
        lists: Sequence[Sequence[tuple[str, str]]],
        signals: Sequence[np.ndarray] | None = None,
        *,
        top: int = 0,
    ) -> list[np.ndarray]:
        """`score_lists` for a batch-invariant model: every list's (pre-selected) pairs in runs of up to the
        ranker's batch size, pairs of similar length together, whichever list they come from.

        Raises:
            ValueError: the model is not batch-invariant (its manifest does not say so).
        """
        if not self.batch_invariant:
            raise ValueError(f"model {self.version} is not batch-invariant; score its lists with score_lists")
        selections = self._select(lists, signals, top)
        pairs = [lists[k][i] for k, sel in enumerate(selections) for i in sel.chosen]
        rows = None
        if signals is not None and self.signals is not None and pairs:
            rows = np.concatenate([np.asarray(signals[k])[sel.chosen] for k, sel in enumerate(selections)])
        spec = self.manifest.input_spec
        kw = {"inputs": spec.inputs, "output": spec.output, "batch_size": self._batch_size, "signals": rows}
        scores = run_session(self._session, self._encoder, pairs, by_length=True, **kw)
        bounds = np.cumsum([0] + [len(sel.chosen) for sel in selections])
        return [sel.assemble(scores[a:b]) for sel, a, b in zip(selections, bounds[:-1], bounds[1:], strict=True)]

    def _select(
        self, lists: Sequence[Sequence[tuple[str, str]]], signals: Sequence[np.ndarray] | None, top: int
    ) -> list[Selection]:
        """Each list's candidates to cross-encode: all, or the `top` its linear part ranks highest."""
        if signals is not None and len(signals) != len(lists):
            raise ValueError(f"{len(signals)} signal matrices for {len(lists)} lists")
        if top and self.linear is None:
            raise ValueError(f"model {self.version} has no linear part; it cannot pre-select candidates")
        out = []
        for k, pairs in enumerate(lists):
            if not top or len(pairs) <= top:
                out.append(Selection(np.arange(len(pairs))))
                continue
            linear = self.linear.scores(len(pairs), None if signals is None else signals[k])  # type: ignore[union-attr]
            out.append(Selection(rerank_top(linear, top), linear))
        return out


def _check_spec(directory: Path, spec: InputSpec, accept_signals: str | None = None) -> None:
    """ArtifactError unless this scorer builds the pairs and computes the signals the artifact expects
    (or, offline, the signal set `accept_signals` names)."""
    if spec.pair_format != features.PAIR_FORMAT:
        raise ArtifactError(
            f"{directory}: refused: pair format {spec.pair_format!r}, this scorer builds "
            f"{features.PAIR_FORMAT!r}; rebuild the model or deploy a scorer that speaks its format"
        )
    if spec.signals is not None and spec.signals not in (SIGNALS.version, accept_signals):
        raise ArtifactError(
            f"{directory}: refused: signal set {spec.signals!r}, this scorer computes {SIGNALS.version!r}; "
            "rebuild the model or deploy a scorer that computes its signals"
        )
    if (spec.signals is not None) != (SIGNALS_INPUT in spec.inputs):
        raise ArtifactError(
            f"{directory}: refused: the input spec names signal set {spec.signals!r} but its inputs are "
            f"{list(spec.inputs)}; a model reads signals through an input {SIGNALS_INPUT!r} iff it names a set"
        )


def _check_graph(directory: Path, spec: InputSpec, session: ort.InferenceSession) -> None:
    """ArtifactError, naming every mismatch at once, unless the graph has the spec's inputs and output."""
    graph_inputs = sorted(i.name for i in session.get_inputs())
    graph_outputs = [o.name for o in session.get_outputs()]
    problems = []
    if graph_inputs != sorted(spec.inputs):
        problems.append(f"graph inputs {graph_inputs} differ from the input spec {sorted(spec.inputs)}")
    if spec.output not in graph_outputs:
        problems.append(f"graph outputs {graph_outputs} lack {spec.output!r}")
    for i in session.get_inputs():
        if i.name == SIGNALS_INPUT and i.shape[-1] != len(SIGNALS.names):
            problems.append(f"graph input {SIGNALS_INPUT!r} has shape {i.shape}, not [batch, {len(SIGNALS.names)}]")
    if problems:
        raise ArtifactError(f"{directory}: refused: " + "; ".join(problems))


def serving_loader(settings: Settings) -> "partial[Ranker]":
    """How a replica opens a version: its ONNX Runtime threads, batch size and spinning from `settings`. The
    benchmarks open theirs through it too, so they measure what the settings say."""
    return partial(Ranker.load, threads=settings.threads, batch_size=settings.score_batch_size, spin=settings.ort_spin)
