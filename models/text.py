"""The zoo's text models: Hugging Face transformers architectures built offline from a config.

`bert_tiny` is BERT's design at a size that trains in minutes on two cores: WordPiece embeddings with
learned absolute positions and token types, post-LayerNorm encoder layers (GELU MLP), the pooler on [CLS]
and a linear classifier: `transformers.BertForSequenceClassification`, untouched. Its vocabulary is the
zoo recipe's own (harness.tokenization.train_wordpiece on the generated reviews), committed beside the
weights. `gpt_tiny` is GPT-2's design likewise: byte-level BPE embeddings with learned absolute positions,
pre-LayerNorm decoder layers with causal self-attention, a tied language-model head:
`transformers.GPT2LMHeadModel`, untouched, with its recipe's own BPE vocabulary. Like GPT-2 it computes its
position ids as 0..L-1 whatever the attention mask says, so a batch padded on the left shifts every
position of its shorter rows: the classic error of batched causal-LM serving.
`attention` picks transformers' attention implementation: "sdpa" (torch's fused
scaled-dot-product kernel, transformers' default and the training setting) or "eager" (the explicit
softmax path).
"""
from __future__ import annotations

from pathlib import Path

import torch

TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
BERT_TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256,
                 max_position_embeddings=128, type_vocab_size=2, hidden_dropout_prob=0.1,
                 attention_probs_dropout_prob=0.1)
GPT_TINY = dict(n_embd=64, n_layer=2, n_head=2, n_inner=256, n_positions=128, resid_pdrop=0.1, embd_pdrop=0.1,
                attn_pdrop=0.1, use_cache=False)


class LogitsOnly(torch.nn.Module):
    """A transformers classifier as the harness runs models: named tensors in, the logits tensor out (the
    ONNX graph's single output), instead of a ModelOutput."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.model(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).logits


class LogitsOfIdsAndMask(torch.nn.Module):
    """LogitsOnly for a model without token types (DistilBERT, RoBERTa): two named inputs."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def logits_module(model: torch.nn.Module, input_names: tuple[str, ...]) -> torch.nn.Module:
    """The wrapper whose forward takes exactly `input_names` (the export's inputs, in order)."""
    wrappers = {TEXT_INPUTS: LogitsOnly, TEXT_INPUTS[:2]: LogitsOfIdsAndMask}
    return wrappers[tuple(input_names)](model)


def vocabulary_size(tokenizer_folder: Path) -> int:
    vocab = tokenizer_folder / "vocab.txt"
    if vocab.is_file():
        return sum(1 for _ in vocab.open(encoding="utf-8"))
    import json

    return len(json.loads((tokenizer_folder / "tokenizer.json").read_text(encoding="utf-8"))["model"]["vocab"])


def bert_classifier(tokenizer_folder: Path, num_labels: int, attention: str = "sdpa") -> torch.nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=vocabulary_size(tokenizer_folder), num_labels=num_labels,
                        attn_implementation=attention, **BERT_TINY)
    return LogitsOnly(BertForSequenceClassification(config))


def gpt_lm(tokenizer_folder: Path, attention: str = "sdpa") -> torch.nn.Module:
    """The causal LM as the harness runs it: input_ids and attention_mask in, next-token logits [N, L, V] out."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from harness.tokenization import END_OF_TEXT, load_tokenizer

    end = load_tokenizer(str(tokenizer_folder), "fast", None, None).convert_tokens_to_ids(END_OF_TEXT)
    config = GPT2Config(vocab_size=vocabulary_size(tokenizer_folder), bos_token_id=end, eos_token_id=end,
                        pad_token_id=end, attn_implementation=attention, **GPT_TINY)
    return LogitsOfIdsAndMask(GPT2LMHeadModel(config))
