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

from harness.data.text import SEED, SENTIMENT_CLASSES, read_jsonl, reviews
from harness.models import TEXT_PROFILE
from harness.profile import Profile
from harness.tokenization import encode, train_wordpiece


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


def train_bert_tiny(weights: Path, tokenizer_folder: Path, recipe: TextRecipe = BERT_TINY_RECIPE, log=print,
                    steps: int | None = None) -> torch.nn.Module:
    """Trains the vocabulary into `tokenizer_folder` and the classifier; writes its state_dict to `weights`."""
    from harness.models.text import bert_classifier

    started = time.monotonic()
    train = reviews(SEED, "train", recipe.train_count)
    train_wordpiece([r.text for r in train], tokenizer_folder, recipe.vocab_size)
    torch.manual_seed(recipe.seed)
    model = bert_classifier(tokenizer_folder, len(SENTIMENT_CLASSES))
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
            batch = epoch[start:start + recipe.batch_size]
            feeds = {k: torch.from_numpy(v) for k, v in encode([r.text for r in batch], tokenizer_folder,
                                                                 TEXT_PROFILE).items()}
            loss = torch.nn.functional.cross_entropy(model(**feeds), torch.tensor([r.label for r in batch]))
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


def accuracy(model: torch.nn.Module, path: Path, tokenizer_folder: Path, profile: Profile = TEXT_PROFILE,
             batch_size: int = 64) -> float:
    rows = read_jsonl(path)
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(rows), batch_size):
            batch = rows[start:start + batch_size]
            feeds = {k: torch.from_numpy(v) for k, v in encode([r.text for r in batch], tokenizer_folder,
                                                                 profile).items()}
            correct += int((model(**feeds).argmax(1).numpy() == np.array([r.label for r in batch])).sum())
    return correct / len(rows)


TEXT_RECIPES = {"bert_tiny": BERT_TINY_RECIPE}


def reproduce_text(spec, out: Path | None, log=print) -> Path:
    """`harness zoo train bert_tiny`: its vocabulary and weights (default: the shipped ones; with --out, the
    vocabulary goes to the folder named like the weights file without its suffix)."""
    weights = out or spec.weights
    folder = spec.tokenizer if out is None else weights.with_suffix("")
    model = train_bert_tiny(weights, folder, TEXT_RECIPES[spec.name], log=log)
    from harness.data.text import SENTIMENT_FILE

    log(f"wrote {weights} and {folder}; top1 on the embedded benchmark {accuracy(model, SENTIMENT_FILE, folder):.3f}")
    return weights
