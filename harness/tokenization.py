"""Text pre-processing: a tokeniser profile turns strings into a model's named integer inputs.

The stage of a text model that images have in decode -> resize -> colour: the tokeniser implementation,
Unicode normalisation, lower-casing and accent stripping, truncation (length and side) and padding (side,
and how a batch pads). Each is a real difference between a training script and a serving stack, and each
is a field of the profile (harness.profile.Profile), so a sweep varies it as it varies a JPEG decoder.

Tokenisers are transformers' own classes loaded from a local folder (`save_pretrained`'s layout:
`vocab.txt` or `tokenizer.json` with `tokenizer_config.json`); nothing is downloaded. A WordPiece vocabulary
has two implementations in transformers: the Rust `tokenizers` one (`BertTokenizer`, the default since
transformers 5) and the Python one kept as `BertTokenizerLegacy`: `tokenizer = "slow"` selects the latter.
"""
from __future__ import annotations

import json
import unicodedata
from functools import lru_cache
from pathlib import Path

import numpy as np

from harness.errors import InputError, UsageError

IMPLEMENTATIONS = ("fast", "slow")
UNICODE_FORMS = ("none", "NFC", "NFKC", "NFD", "NFKD")
SIDES = ("right", "left")
# longest: a batch pads to its longest sample (a batching server); max_length: every sample to max_length
# (a static-shape engine); single: each sample alone, unpadded (batch size 1)
PADDINGS = ("longest", "max_length", "single")


@lru_cache(maxsize=16)
def load_tokenizer(folder: str, implementation: str, lowercase: bool | None, strip_accents: bool | None):
    """transformers' tokeniser from a local folder, in the implementation asked for."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded: a folder that lacks a file fails here
    import transformers

    path = Path(folder)
    if not path.is_dir():
        raise InputError(f"{folder}: not a tokeniser folder (save_pretrained's layout: tokenizer_config.json "
                         "with vocab.txt or tokenizer.json)")
    flags = {key: value for key, value in (("do_lower_case", lowercase), ("strip_accents", strip_accents))
             if value is not None}
    try:
        if implementation == "slow":
            if not (path / "vocab.txt").is_file():
                raise UsageError(f"{folder}: tokenizer 'slow' exists for WordPiece vocabularies (vocab.txt) only: "
                                 "transformers 5 keeps no Python implementation of the others")
            from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

            return BertTokenizerLegacy.from_pretrained(folder, local_files_only=True, **flags)
        if (path / "vocab.txt").is_file() and not (path / "tokenizer.json").is_file():
            return transformers.BertTokenizer.from_pretrained(folder, local_files_only=True, **flags)
        return transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True, use_fast=True, **flags)
    except (OSError, ValueError) as err:
        raise InputError(f"{folder}: cannot load a tokeniser ({str(err).splitlines()[0][:200]})") from err


def normalized(text: str, form: str) -> str:
    return text if form == "none" else unicodedata.normalize(form, text)


def _tokenizer(folder, profile):
    return load_tokenizer(str(folder), profile.tokenizer, profile.lowercase, profile.strip_accents)


def tokenized(texts: list[str], folder: str | Path, profile) -> list[dict[str, list[int]]]:
    """Each text's token ids (and mask, token types), truncated as `profile` (harness.profile.Profile) says,
    not padded: padding is the batch's (`padded`)."""
    tokenizer = _tokenizer(folder, profile)
    tokenizer.truncation_side = profile.truncation_side
    # token types asked for: transformers' Python WordPiece leaves them out unless asked, its Rust one not
    encoded = tokenizer([normalized(text, profile.unicode) for text in texts], max_length=profile.max_length,
                        truncation=True, padding=False, return_token_type_ids=True)
    return [{name: values[i] for name, values in encoded.items()} for i in range(len(texts))]


def padded(rows: list[dict[str, list[int]]], folder: str | Path, profile) -> dict[str, np.ndarray]:
    """One batch of `tokenized` rows padded by the tokeniser (its pad id, the profile's side and padding),
    as int64 arrays by input name."""
    tokenizer = _tokenizer(folder, profile)
    padding = "max_length" if profile.padding == "max_length" else "longest"
    batch = tokenizer.pad({name: [row[name] for row in rows] for name in rows[0]}, padding=padding,
                          max_length=profile.max_length, padding_side=profile.padding_side, return_tensors="np")
    return {name: np.asarray(value, dtype=np.int64) for name, value in batch.items()}


def encode(texts: list[str], folder: str | Path, profile) -> dict[str, np.ndarray]:
    """The texts as one padded batch of named int64 inputs (input_ids, attention_mask, and token_type_ids
    where the tokeniser makes them)."""
    return padded(tokenized(texts, folder, profile), folder, profile)


def train_wordpiece(texts, folder: Path, vocab_size: int, lowercase: bool = True) -> Path:
    """The zoo recipe's WordPiece vocabulary (BERT's normaliser and pre-tokeniser), trained with the
    `tokenizers` library and saved in save_pretrained's layout."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase, clean_text=True,
                                                      handle_chinese_chars=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=2,
                                        special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    tokenizer.train_from_iterator(texts, trainer)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    ordered = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    vocab.write_text("".join(token + "\n" for token, _ in ordered), encoding="utf-8")
    # the folder a user would have: vocab.txt with the config naming the default (fast) class
    BertTokenizerLegacy(vocab_file=str(vocab), do_lower_case=lowercase).save_pretrained(str(folder))
    config = folder / "tokenizer_config.json"
    settings = json.loads(config.read_text())
    settings["tokenizer_class"] = "BertTokenizer"
    config.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
    return folder


END_OF_TEXT = "<|endoftext|>"


def train_byte_bpe(texts, folder: Path, vocab_size: int) -> Path:
    """The zoo recipe's byte-level BPE vocabulary (GPT-2's pre-tokeniser and decoder: every byte a token, so
    nothing is unknown), trained with the `tokenizers` library and saved in save_pretrained's layout with
    GPT-2's one special token as end of text and padding."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=[END_OF_TEXT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer)
    folder.mkdir(parents=True, exist_ok=True)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=END_OF_TEXT, eos_token=END_OF_TEXT,
                                      unk_token=END_OF_TEXT, pad_token=END_OF_TEXT)
    wrapped.save_pretrained(str(folder))
    config = folder / "tokenizer_config.json"
    settings = json.loads(config.read_text())
    settings["tokenizer_class"] = "GPT2Tokenizer"
    config.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
    return folder
