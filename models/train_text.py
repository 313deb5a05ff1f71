"""The text zoo's recipes: the vocabulary, then the model, both from the generated reviews (harness.data.text).

Training goes through the reference text profile (harness.models.TEXT_PROFILE: the fast
WordPiece tokeniser, BERT's lower-casing and accent stripping, right truncation at 64 tokens, right padding
to the batch's longest), as the image zoo trains through its reference decode and resize.

The vocabulary is the one part that is not bit-reproducible: the `tokenizers` WordPiece trainer breaks count
ties in hash-map order, which changes from process to process (huggingface/tokenizers#1794); a retrained
vocabulary shares 95-96 % of its tokens with the committed one, and the model trained on it differs.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from harness.data.text import SEED, SENTIMENT_CLASSES, reviews
from harness.models import LM_PROFILE, TEXT_PROFILE
from harness.tokenization import encode, train_byte_bpe, train_wordpiece


@dataclass(frozen=True)
class TextRecipe:
    train_count: int = 20000
    vocab_size: int = 1000
    epochs: int = 4
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.01
    seed: int = 0


BERT_TINY_RECIPE = TextRecipe()
GPT_TINY_RECIPE = TextRecipe(epochs=8, lr=3e-3)


def train_bert_tiny(weights: Path, tokenizer_folder: Path, recipe: TextRecipe = BERT_TINY_RECIPE, log=print,
                    steps: int | None = None) -> torch.nn.Module:
    """Trains the vocabulary into `tokenizer_folder` and the classifier; writes its state_dict to `weights`."""
    from harness.models.text import bert_classifier

    train = reviews(SEED, "train", recipe.train_count)
    train_wordpiece([r.text for r in train], tokenizer_folder, recipe.vocab_size)
    torch.manual_seed(recipe.seed)
    model = bert_classifier(tokenizer_folder, len(SENTIMENT_CLASSES))

    def loss_of(batch):
        feeds = {k: torch.from_numpy(v) for k, v in encode([r.text for r in batch], tokenizer_folder,
                                                             TEXT_PROFILE).items()}
        return torch.nn.functional.cross_entropy(model(**feeds), torch.tensor([r.label for r in batch]))

    return _train(model, loss_of, train, weights, recipe, log, steps)


def train_gpt_tiny(weights: Path, tokenizer_folder: Path, recipe: TextRecipe = GPT_TINY_RECIPE, log=print,
                   steps: int | None = None) -> torch.nn.Module:
    """Trains the byte-level BPE vocabulary into `tokenizer_folder` and the causal LM (next-token cross-entropy
    over the real tokens, padding left out); writes its state_dict to `weights`."""
    from harness.models.text import gpt_lm

    train = reviews(SEED, "train", recipe.train_count)
    train_byte_bpe([r.text for r in train], tokenizer_folder, recipe.vocab_size)
    torch.manual_seed(recipe.seed)
    model = gpt_lm(tokenizer_folder)

    def loss_of(batch):
        encoded = encode([r.text for r in batch], tokenizer_folder, LM_PROFILE)
        feeds = {k: torch.from_numpy(encoded[k]) for k in ("input_ids", "attention_mask")}
        logits = model(**feeds)[:, :-1]
        targets = feeds["input_ids"][:, 1:].masked_fill(feeds["attention_mask"][:, 1:] == 0, -100)
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))

    return _train(model, loss_of, train, weights, recipe, log, steps)


def _train(model, loss_of, train: list, weights: Path, recipe: TextRecipe, log, steps: int | None):
    """AdamW with a one-cycle schedule over shuffled epochs of `train`; the state_dict saved to `weights`."""
    started = time.monotonic()
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    per_epoch = math.ceil(len(train) / recipe.batch_size)
    total = steps or per_epoch * recipe.epochs
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=recipe.lr, total_steps=total)
    shuffle = np.random.default_rng(recipe.seed)
    model.train()
    step = 0
    while step < total:
        epoch = [train[i] for i in shuffle.permutation(len(train))]
        for start in range(0, len(epoch), recipe.batch_size):
            if step == total:
                break
            loss = loss_of(epoch[start:start + recipe.batch_size])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            if step % 100 == 0:
                log(f"step {step}/{total} loss {loss.item():.4f} ({time.monotonic() - started:.0f} s)")
    model.eval()
    weights.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, weights)
    return model


TEXT_RECIPES = {"bert_tiny": (train_bert_tiny, BERT_TINY_RECIPE), "gpt_tiny": (train_gpt_tiny, GPT_TINY_RECIPE)}


def reproduce_text(spec, out: Path | None, log=print) -> Path:
    """`harness zoo train bert_tiny|gpt_tiny`: its vocabulary and weights (default: the shipped ones; with --out,
    the vocabulary goes to the folder named like the weights file without its suffix), then its metric on the
    embedded benchmark through the harness's reference run."""
    import dataclasses

    from harness.data import embedded_benchmark
    from harness.export import export
    from harness.inference import ModelConfig
    from harness.pipeline import StagedPipeline

    weights = out or spec.weights
    folder = spec.tokenizer if out is None else weights.with_suffix("")
    train, recipe = TEXT_RECIPES[spec.name]
    train(weights, folder, recipe, log=log)
    trained = dataclasses.replace(spec, weights=weights, tokenizer=folder)
    pipeline = StagedPipeline(export(trained), embedded_benchmark(spec.task), batch_size=64)
    evaluated = pipeline.evaluate(trained.profile, ModelConfig("torch", "cpu", "fp32"))
    metrics = pipeline.task.metric([pipeline.by_id[i] for i in evaluated.ids], evaluated.predictions,
                                   len(spec.labels))
    log(f"wrote {weights} and {folder}; on the embedded benchmark: "
        + ", ".join(f"{name} {value:.4f}" for name, value in metrics.items()))
    return weights
