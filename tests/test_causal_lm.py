"""The causal-LM task (harness.tasks.causal_lm) and the zoo's gpt_tiny against transformers called directly."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from harness.data.text import SENTIMENT_FILE, read_jsonl
from harness.models import WEIGHTS_DIR
from harness.tasks.causal_lm import CONTINUATION, prompt_length

TOKENIZER = WEIGHTS_DIR / "gpt_tiny"


def _direct_lm(count: int) -> dict:
    """gpt_tiny run by transformers and torch alone, one text at a time (no padding at all): the class on the
    state_dict, the tokeniser class on the folder, the summed cross-entropy and arg-max hits of every text,
    and `generate`'s greedy continuation of its first half (never stopping at end of text)."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from harness.models.text import GPT_TINY, vocabulary_size

    tokenizer = AutoTokenizer.from_pretrained(str(TOKENIZER), local_files_only=True)
    end = tokenizer.eos_token_id
    model = GPT2LMHeadModel(GPT2Config(vocab_size=vocabulary_size(TOKENIZER), bos_token_id=end, eos_token_id=end,
                                       pad_token_id=end, **GPT_TINY))
    state = torch.load(WEIGHTS_DIR / "gpt_tiny.pt", weights_only=True)
    model.load_state_dict({name.removeprefix("model."): value for name, value in state.items()})
    model.eval()
    nll, hits, tokens, continuations = 0.0, 0, 0, []
    with torch.inference_mode():
        for row in read_jsonl(SENTIMENT_FILE)[:count]:
            ids = tokenizer(row.text, truncation=True, max_length=64, return_tensors="pt")["input_ids"]
            logits = model(input_ids=ids).logits[0]
            nll += float(torch.nn.functional.cross_entropy(logits[:-1].double(), ids[0, 1:], reduction="sum"))
            hits += int((logits[:-1].argmax(-1) == ids[0, 1:]).sum())
            tokens += ids.shape[1] - 1
            prompt = ids[:, :prompt_length(ids.shape[1])]
            generated = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=CONTINUATION,
                                       min_new_tokens=CONTINUATION, do_sample=False, eos_token_id=None,
                                       pad_token_id=end)
            continuations.append(generated[0, prompt.shape[1]:].tolist())
    return {"perplexity": math.exp(nll / tokens), "next_token_top1": hits / tokens, "tokens": tokens,
            "continuations": continuations}


def _pipeline(count: int, spec=None):
    from harness.data import embedded_benchmark
    from harness.export import export
    from harness.model import resolve_model
    from harness.pipeline import StagedPipeline

    spec = spec or resolve_model("gpt_tiny")
    return spec, StagedPipeline(export(spec), embedded_benchmark("causal-lm").limit(count), batch_size=16)


def test_perplexity_next_token_accuracy_and_greedy_continuations_are_transformers_own():
    """The reference side through the harness (batches of 16 padded on the right to their longest, each
    continuation step re-padded) equals transformers on each text alone: the padding is invisible to a correct
    run, and the greedy loop is `generate`'s."""
    from harness.inference import ModelConfig

    direct = _direct_lm(24)
    spec, pipeline = _pipeline(24)
    evaluated = pipeline.evaluate(spec.profile, ModelConfig("torch", "cpu", "fp32"))
    metrics = pipeline.task.metric([pipeline.by_id[i] for i in evaluated.ids], evaluated.predictions, 0)
    assert sum(len(p.tokens) - 1 for p in evaluated.predictions) == direct["tokens"]
    assert metrics["perplexity"] == pytest.approx(direct["perplexity"], rel=1e-5)
    # a near tie may break the other way in a padded batch than alone: at most one token of ~1000
    assert abs(metrics["next_token_top1"] - direct["next_token_top1"]) <= 1 / direct["tokens"] + 1e-12
    ours = [p.continuation.tolist() for p in evaluated.predictions]
    assert sum(a == b for a, b in zip(ours, direct["continuations"])) >= 23


def test_compare_reports_the_lm_metrics_and_int8_int4_move_perplexity(tmp_path, harness_json):
    report = harness_json("compare", "gpt_tiny", "--backends", "onnxruntime,openvino", "--precision", "fp32,int8,int4",
                      "--limit", "64", "--batch-size", "32")
    assert report["model"]["task"] == "causal-lm"
    assert set(report["reference"]["metric"]) == {"next_token_top1", "perplexity", "nll_per_token"}
    rows = {(row["backend"], row["precision"]): row for row in report["results"]}
    for backend in ("onnxruntime", "openvino"):
        exact = rows[backend, "fp32"]
        assert exact["status"] == "ok" and exact["outputs"]["continuation_match"] == 1.0
        assert exact["outputs"]["next_token_agreement"] == 1.0 and exact["outputs"]["max_abs"] < 1e-4
        assert abs(exact["delta"]["perplexity"]) < 1e-4
    assert rows["onnxruntime", "int4"]["status"] == "unavailable"
    for key in (("onnxruntime", "int8"), ("openvino", "int8"), ("openvino", "int4")):
        row = rows[key]
        # weight-only / dynamic quantisation: perplexity moves, a little (the paper's |Δ| small), and a few
        # arg-max next tokens with it; the execution record says the quantised ops ran
        assert row["status"] == "ok" and 0 < abs(row["delta"]["perplexity"]) < 0.1, key
        assert 0.9 < row["outputs"]["next_token_agreement"] < 1.0 and row["outputs"]["max_abs"] > 1e-3, key
        assert row["execution"]["by_precision"].get(key[1]), key
    # a changed continuation is reported as text: the prompt and both continuations, decoded by the tokeniser
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(TOKENIZER), local_files_only=True)
    flips = rows["openvino", "int4"]["flipped"]
    assert flips and all(flip["reference_pred"] != flip["candidate_pred"] for flip in flips)
    for flip in flips:
        assert flip["candidate_text"] == tokenizer.decode(flip["candidate_pred"])
        assert flip["text"].startswith(tokenizer.decode(flip["prompt_tokens"])) and flip["prompt"] in flip["text"]
    import html

    from harness.report.html import write_html

    write_html(report, tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    flipped = sum(len(row.get("flipped", [])) for row in report["results"])
    assert page.count("<figure class='text'>") == flipped
    assert f"“{html.escape(flips[0]['reference_text'], quote=True)}” → “" in page


def test_left_padding_shifts_gpt2_positions_and_a_model_with_positions_from_the_mask_is_indifferent():
    """GPT-2 numbers its positions 0..L-1 whatever the mask says: in a batch padded on the left a shorter text's
    tokens sit at later positions. transformers run directly on a left-padded batch shows the same change."""

    from harness.inference import ModelConfig

    spec, pipeline = _pipeline(32)
    torch_fp32 = ModelConfig("torch", "cpu", "fp32")
    right = pipeline.evaluate(spec.profile, torch_fp32).predictions
    left_profile = dataclasses.replace(spec.profile, padding_side="left")
    left = pipeline.evaluate(left_profile, torch_fp32).predictions
    moved = [not np.allclose(a.logprob, b.logprob, atol=1e-4) for a, b in zip(right, left)]
    # the longest text of each batch of 16 has no padding: it alone is unchanged
    lengths = [len(p.tokens) for p in right]
    longest = {max(range(k, k + 16), key=lambda i: lengths[i]) for k in (0, 16)}
    assert {i for i, m in enumerate(moved) if not m} >= longest and sum(moved) >= 24
    # the same shift, by transformers alone on the first batch padded on the left
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(TOKENIZER), local_files_only=True, padding_side="left")
    batch = tokenizer([r.text for r in read_jsonl(SENTIMENT_FILE)[:16]], truncation=True, max_length=64,
                      padding="longest", return_tensors="pt")
    module = spec.load_torch()
    with torch.inference_mode():
        logits = module(batch["input_ids"], batch["attention_mask"]).double().log_softmax(-1)
    for row in range(16):
        real = batch["attention_mask"][row].bool()
        ids = batch["input_ids"][row][real]
        expected = logits[row][real][:-1].gather(1, ids[1:, None])[:, 0].numpy()
        np.testing.assert_allclose(left[row].logprob, expected, atol=1e-4)

    fixed = dataclasses.replace(spec, name="gpt_positions_from_mask", build=lambda: _PositionsFromMask(spec.build()))
    _, corrected = _pipeline(32, fixed)
    right = corrected.evaluate(spec.profile, torch_fp32).predictions
    left = corrected.evaluate(left_profile, torch_fp32).predictions
    for a, b in zip(right, left):
        np.testing.assert_allclose(a.logprob, b.logprob, atol=1e-4)
        assert np.array_equal(a.continuation, b.continuation)


class _PositionsFromMask(torch.nn.Module):
    """gpt_tiny as a correct batched server runs it: position ids counted over the attention mask."""

    def __init__(self, wrapped: torch.nn.Module):
        super().__init__()
        self.model = wrapped.model  # the zoo wrapper's parameter names: its weights load

    def forward(self, input_ids, attention_mask):
        positions = (attention_mask.cumsum(1) - 1).clamp(min=0)
        return self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions).logits


def test_sysnoise_on_the_causal_lm_runs_its_axes_and_a_gate_fails_left_padding(tmp_path, harness_json):
    report = harness_json("sysnoise", "gpt_tiny", "--axes", "padding,unicode,precision", "--limit", "48")
    variants = {(axis["axis"], v["name"]): v for axis in report["axes"] for v in axis["variants"]}
    assert report["primary_metric"] == "next_token_top1"
    left = variants["padding", "left-side"]
    assert left["status"] == "ok" and left["flip_rate"] > 0.2 and left["next_token_agreement"] < 0.99
    assert left["ci95"] is not None and left["significance_test"] == "bootstrap"
    assert variants["padding", "single"]["flip_rate"] == 0
    # NFD splits accented letters into two code points: different bytes for a byte-level BPE
    assert variants["unicode", "NFD"]["status"] == "ok" and variants["unicode", "NFD"]["flip_rate"] > 0
    assert {name for axis, name in variants if axis == "precision"} >= {"onnxruntime-int8", "openvino-int4"}
    int4 = variants["precision", "openvino-int4"]
    moved = int4["metric"]["perplexity"] - int4["baseline_metric"]["perplexity"]
    low, high = int4["perplexity_ci95"]
    assert moved != 0 and low <= moved <= high and high - low < 0.5
    assert not {axis for axis, _ in variants} & {"tokenizer", "case", "decoder", "resize"}


def test_an_onnx_causal_lm_and_a_transformers_folder_are_model_sources(tmp_path, harness_json):
    """gpt_tiny's exported graph as a user's .onnx file (--task causal-lm, --tokenizer), and a GPT-2 folder
    saved by save_pretrained (its `architectures` makes it a causal LM; two inputs, no token types)."""
    import shutil

    from transformers import GPT2Config, GPT2LMHeadModel

    from harness.export import export
    from harness.model import resolve_model

    model = tmp_path / "lm.onnx"
    shutil.copy(export(resolve_model("gpt_tiny")).onnx_path, model)
    compared = harness_json("compare", str(model), "--task", "causal-lm", "--tokenizer", str(TOKENIZER), "--limit", "32",
                        "--backends", "openvino")
    assert compared["model"]["task"] == "causal-lm"
    (row,) = compared["results"]
    assert row["status"] == "ok" and row["outputs"]["continuation_match"] == 1.0
    direct = _direct_lm(32)
    assert compared["reference"]["metric"]["perplexity"] == pytest.approx(direct["perplexity"], rel=1e-5)

    folder = tmp_path / "gpt2"
    torch.manual_seed(5)
    GPT2LMHeadModel(GPT2Config(vocab_size=1000, n_embd=32, n_layer=1, n_head=2, n_positions=64)).save_pretrained(
        folder, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TOKENIZER / name, folder / name)
    report = harness_json("compare", f"transformers:{folder}", "--backends", "onnxruntime", "--limit", "16")
    assert report["model"]["task"] == "causal-lm" and report["results"][0]["status"] == "ok"
    assert report["results"][0]["outputs"]["continuation_match"] == 1.0


def test_the_zoo_recipe_retrains_the_committed_bpe_vocabulary_bit_for_bit_and_trains(tmp_path):
    """Unlike the WordPiece trainer (tokenizers#1794), the BPE trainer breaks its ties deterministically: the
    recipe's vocabulary is the committed tokenizer.json byte for byte. Then a few training steps."""

    from harness.models.train_text import GPT_TINY_RECIPE, train_gpt_tiny

    folder = tmp_path / "tokenizer"
    model = train_gpt_tiny(tmp_path / "gpt.pt", folder, dataclasses.replace(GPT_TINY_RECIPE, batch_size=8),
                           log=lambda _: None, steps=3)
    assert (folder / "tokenizer.json").read_bytes() == (TOKENIZER / "tokenizer.json").read_bytes()
    assert set(torch.load(tmp_path / "gpt.pt", weights_only=True)) == set(model.state_dict()) == \
        set(torch.load(WEIGHTS_DIR / "gpt_tiny.pt", weights_only=True))


def test_the_stated_perplexity_and_next_token_accuracy_on_the_whole_split():
    from harness.inference import ModelConfig
    from harness.models import ZOO

    spec, pipeline = _pipeline(1000)
    evaluated = pipeline.evaluate(spec.profile, ModelConfig("torch", "cpu", "fp32"))
    metrics = pipeline.task.metric([pipeline.by_id[i] for i in evaluated.ids], evaluated.predictions, 0)
    for key, stated in ZOO["gpt_tiny"]().stated.items():
        assert metrics[key] == pytest.approx(stated, abs=0.0001), key


@pytest.mark.parametrize(("args", "message"), [
    (("resnet_tiny", "--task", "causal-lm"), "resnet_tiny is an image model: task causal-lm takes text (input_ids)"),
    (("gpt_tiny", "--task", "classify"), "gpt_tiny is a text model: task classify takes images"),
])
def test_a_task_the_model_cannot_be_is_one_line_exit_2(args, message, harness_cli):
    done = harness_cli("compare", *args, "--limit", "4")
    assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_a_text_classifier_taken_for_a_causal_lm_is_refused_by_its_output_shape():
    """A text model as `--task causal-lm` passes the text check; its [N, classes] logits are refused by name
    (a UsageError: one line, exit 2), never scored as next-token logits."""
    from harness.errors import UsageError
    from harness.tasks.causal_lm import _logits

    with pytest.raises(UsageError, match=r"^output 'logits' is 4x2: not a causal LM's next-token logits \(N x "
                                         r"sequence x vocabulary\)"):
        _logits({"logits": np.zeros((4, 2), np.float32)})


def test_an_empty_text_is_one_counted_failure_and_the_others_are_measured(tmp_path, harness_json):
    """GPT-2's tokeniser adds no special tokens: an empty text has no token to run (BERT's always has [CLS])."""
    import json

    texts = [r.text for r in read_jsonl(SENTIMENT_FILE)[:3]]
    data = tmp_path / "texts.jsonl"
    data.write_text("".join(json.dumps({"text": text, "id": f"t{k}"}) + "\n"
                            for k, text in enumerate([texts[0], "", *texts[1:]])))
    report = harness_json("compare", "gpt_tiny", "--dataset", str(data), "--backends", "onnxruntime")
    assert report["dataset"]["failed_samples"] == 1 and report["dataset"]["samples"] == 3
    assert report["dataset"]["failed"] == [{"sample": "t1", "path": str(data),
                                            "reason": "the tokeniser makes no tokens of this text"}]
    assert report["results"][0]["status"] == "ok"
