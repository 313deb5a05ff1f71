"""Causal language modelling: a decoder's next-token logits over each text, and its greedy continuation.

Per text, the model is run as an LM evaluation and a generation server run it:
- once over the whole (tokenised, truncated) text: the log-probability of every real token given the ones
  before it (perplexity) and the arg-max next token at every position (next-token top-1, against the text
  itself and against the reference's arg-max);
- then greedily from the first half of the text's tokens (at least one) for CONTINUATION tokens, one model
  run a token over the whole sequence (no key/value cache: every backend runs the same graph), each step's
  batch re-padded as the profile pads: the continuations of reference and candidate must match exactly.

The primary metric is next-token top-1 accuracy (a fraction, higher is better, as every other task's);
perplexity is reported beside it. Its interval is a paired bootstrap over texts, each resampled with all of
its tokens (the tokens of one text are not independent, so McNemar over tokens would overstate certainty).
Two predictions of a text agree when their greedy continuations are identical.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from harness.tasks import CAUSAL_LM, TEXT_CLASSIFY, Evaluation, Task

CONTINUATION = 8  # greedy tokens generated per text
BOOTSTRAP_ROUNDS = 2000
RAW_OUTPUTS = ("tokens", "next_token", "logprob", "continuation")


@dataclass(frozen=True)
class TokenPredictions:
    """One text's LM results: its real tokens (as the profile tokenised them), the arg-max next token after
    each, the log-probability of each token after the first given those before, and the greedy
    continuation of its first half."""

    tokens: np.ndarray        # int64[n]
    next_token: np.ndarray    # int64[n]
    logprob: np.ndarray       # float32[n - 1]
    continuation: np.ndarray  # int64[CONTINUATION]

    @property
    def hits(self) -> int:
        return int(np.sum(self.next_token[:-1] == self.tokens[1:]))


def prompt_length(length: int) -> int:
    return max(1, math.ceil(length / 2))


class CausalLM(Task):
    name = CAUSAL_LM
    reads_text = True
    primary_metric = "next_token_top1"
    significance_rule = (f"paired bootstrap over texts ({BOOTSTRAP_ROUNDS} seeded rounds, each text with all its "
                         "tokens): the 95 % interval of Δ next-token top-1 excludes 0")
    # the tokeniser implementation and case axes do not apply: transformers 5 keeps no Python byte-level BPE,
    # and a byte-level BPE does not lower-case
    pre_axes = ("unicode", "truncation", "padding")
    graph_axes = ()
    compared_outputs = ("logprob",)  # the others are token ids: their differences are no error's size
    known_bad = ("the server pads its batches on the left", "left-padding", {"padding_side": "left"})

    def is_fraction(self, metric: str) -> bool:
        return metric == "next_token_top1"

    def preprocessor(self, dataset, counters, spec):
        from harness.tasks.text_classify import text_preprocessor

        return text_preprocessor(dataset, counters, spec)

    def accepts(self, dataset_task: str) -> bool:
        return dataset_task in (TEXT_CLASSIFY, CAUSAL_LM)  # any text set: the texts are the labels

    def run_batch(self, session, feeds, inputs, start, stop, profile) -> dict[str, np.ndarray]:
        """The model over the batch's texts, reduced to RAW_OUTPUTS (fixed widths: the input set's longest
        text, CONTINUATION), then CONTINUATION greedy steps from each text's first half."""
        logits = _logits(session.run(feeds))
        width = max(len(row["input_ids"]) for row in inputs.rows)
        ids, mask = feeds["input_ids"], feeds["attention_mask"]
        count = len(ids)
        tokens = np.full((count, width), -1, np.int64)
        next_token = np.full((count, width), -1, np.int64)
        logprob = np.zeros((count, width), np.float32)
        for row in range(count):
            real = np.flatnonzero(mask[row])
            scores = logits[row, real].astype(np.float64)
            log_probs = scores - _logsumexp(scores)
            tokens[row, :len(real)] = ids[row, real]
            next_token[row, :len(real)] = scores.argmax(-1)
            logprob[row, :len(real) - 1] = log_probs[np.arange(len(real) - 1), ids[row, real[1:]]]
        prompts = [list(row["input_ids"][:prompt_length(len(row["input_ids"]))]) for row in inputs.rows[start:stop]]
        continuation = _greedy(session, inputs, prompts, profile)
        return {"tokens": tokens, "next_token": next_token, "logprob": logprob, "continuation": continuation}

    def predictions(self, outputs, geometries, profile, head) -> list:
        found = []
        for tokens, next_token, logprob, continuation in zip(*(outputs[name] for name in RAW_OUTPUTS)):
            n = int(np.sum(tokens >= 0))
            found.append(TokenPredictions(tokens[:n].copy(), next_token[:n].copy(),
                                          logprob[:max(n - 1, 0)].astype(np.float32), continuation.copy()))
        return found

    def encode_predictions(self, predictions) -> dict:
        width = max((len(p.tokens) for p in predictions), default=0)
        arrays = {"tokens": np.full((len(predictions), width), -1, np.int64),
                  "next_token": np.full((len(predictions), width), -1, np.int64),
                  "logprob": np.zeros((len(predictions), width), np.float32),
                  "continuation": np.zeros((len(predictions), CONTINUATION), np.int64)}
        for k, p in enumerate(predictions):
            arrays["tokens"][k, :len(p.tokens)] = p.tokens
            arrays["next_token"][k, :len(p.next_token)] = p.next_token
            arrays["logprob"][k, :len(p.logprob)] = p.logprob
            arrays["continuation"][k] = p.continuation
        return arrays

    def decode_predictions(self, arrays, count) -> list:
        from harness.store import BadPiece, checked_array

        tokens = checked_array(arrays, "tokens", np.int64, 2, count)
        width = tokens.shape[1]
        found = {"tokens": tokens, "next_token": checked_array(arrays, "next_token", np.int64, 2, count, width),
                 "logprob": checked_array(arrays, "logprob", np.float32, 2, count, width),
                 "continuation": checked_array(arrays, "continuation", np.int64, 2, count, CONTINUATION)}
        if count and (found["tokens"] < -1).any():
            raise BadPiece("array 'tokens' holds negative token ids")
        return self.predictions(found, [None] * count, None, {})

    def evaluate(self, samples, predictions, num_classes) -> Evaluation:
        hits = np.array([p.hits for p in predictions], np.int64)
        counts = np.array([max(len(p.tokens) - 1, 0) for p in predictions], np.int64)
        nll = np.array([-float(np.sum(p.logprob, dtype=np.float64)) for p in predictions], np.float64)
        tokens = int(counts.sum())
        metrics = {"next_token_top1": float(hits.sum() / tokens) if tokens else float("nan"),
                   "perplexity": float(math.exp(nll.sum() / tokens)) if tokens else float("nan"),
                   "nll_per_token": float(nll.sum() / tokens) if tokens else float("nan")}
        return Evaluation(metrics, (hits, counts, nll), len(samples))

    def change(self, baseline, candidate, rounds) -> dict:
        """The primary metric's interval, and `perplexity_ci95`: Δ perplexity's on the same resampled texts."""
        from harness.noise.stats import SEED, significant

        (base_hits, base_counts, base_nll), (cand_hits, cand_counts, cand_nll) = baseline.records, candidate.records
        if not len(base_hits) or not base_counts.sum() or not cand_counts.sum():
            return {}
        index = np.random.default_rng(SEED).integers(0, len(base_hits), size=(BOOTSTRAP_ROUNDS, len(base_hits)))

        def interval(candidate_ratio, baseline_ratio) -> tuple[float, float]:
            with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
                deltas = candidate_ratio - baseline_ratio
            return tuple(float(v) for v in np.nanpercentile(deltas, [2.5, 97.5]))

        cand_tokens, base_tokens = cand_counts[index].sum(1), base_counts[index].sum(1)
        top1 = interval(cand_hits[index].sum(1) / cand_tokens, base_hits[index].sum(1) / base_tokens)
        perplexity = interval(np.exp(cand_nll[index].sum(1) / cand_tokens), np.exp(base_nll[index].sum(1) / base_tokens))
        return {"ci95": list(top1), "significant": significant(top1), "significance_test": "bootstrap",
                "bootstrap_rounds": BOOTSTRAP_ROUNDS, "perplexity_ci95": list(perplexity)}

    def agreement(self, reference, candidate) -> np.ndarray:
        return np.array([np.array_equal(r.continuation, c.continuation) for r, c in zip(reference, candidate)],
                        dtype=bool)

    def agreement_metrics(self, reference, candidate) -> dict:
        """next_token_agreement: the fraction of positions whose arg-max next token is the reference's (over
        each pair's common length); continuation_match: the fraction of texts whose greedy continuation is."""
        same = sum(int(np.sum(r.next_token[:n] == c.next_token[:n]))
                   for r, c in zip(reference, candidate) for n in [min(len(r.next_token), len(c.next_token))])
        positions = sum(min(len(r.next_token), len(c.next_token)) for r, c in zip(reference, candidate))
        agree = self.agreement(reference, candidate)
        return {"next_token_agreement": same / positions if positions else None,
                "continuation_match": float(agree.mean()) if len(agree) else None}

    def flip_record(self, sample, reference, candidate, classes) -> dict:
        return {"label": None, "text": sample.text, "prompt_tokens": candidate.tokens[:prompt_length(len(
                    candidate.tokens))].tolist(), "reference_pred": reference.continuation.tolist(),
                "candidate_pred": candidate.continuation.tolist(), "confidence": None}

    def readable_flips(self, rows, spec) -> list[dict]:
        """The prompt and both continuations as text (the model's tokeniser decoding them), the ids kept."""
        from harness.tokenization import load_tokenizer

        if spec.tokenizer is None:
            return rows
        tokenizer = load_tokenizer(str(spec.tokenizer), "fast", None, None)
        return [{**row, "prompt": tokenizer.decode(row["prompt_tokens"]),
                 "reference_text": tokenizer.decode(row["reference_pred"]),
                 "candidate_text": tokenizer.decode(row["candidate_pred"])} for row in rows]

    def benchmark(self):
        from harness.data.text import SENTIMENT_FILE, load_text

        return load_text(SENTIMENT_FILE, name="embedded-causal-lm")


def _logits(outputs: dict) -> np.ndarray:
    from harness.errors import UsageError

    name, logits = next(iter(outputs.items()))  # a causal LM's first output holds its logits
    if logits.ndim != 3:
        raise UsageError(f"output {name!r} is {'x'.join(map(str, logits.shape))}: not a causal LM's next-token "
                         "logits (N x sequence x vocabulary), or they are not its first output")
    return logits


def _logsumexp(scores: np.ndarray) -> np.ndarray:
    top = scores.max(-1, keepdims=True)
    return top + np.log(np.exp(scores - top).sum(-1, keepdims=True))


def _greedy(session, inputs, prompts: list[list[int]], profile) -> np.ndarray:
    """int64[N, CONTINUATION]: each prompt's greedy continuation, every step one model run over the batch
    padded as the profile pads (the last real position's arg-max appended)."""
    rows = [list(prompt) for prompt in prompts]
    for _ in range(CONTINUATION):
        feeds = inputs.feeds_of([{"input_ids": row, "attention_mask": [1] * len(row)} for row in rows], profile,
                                session.input_names)
        logits = _logits(session.run(feeds))
        mask = feeds["attention_mask"]
        last = mask.shape[1] - 1 - np.argmax(mask[:, ::-1], axis=1)
        chosen = logits[np.arange(len(rows)), last].argmax(-1)
        for row, token in zip(rows, chosen):
            row.append(int(token))
    return np.array([row[len(prompt):] for row, prompt in zip(rows, prompts)], np.int64).reshape(len(rows),
                                                                                                CONTINUATION)
