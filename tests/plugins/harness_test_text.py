"""Text models for the tests: the zoo's bert_tiny made indifferent to where the padding sits, as a correct
batched server runs it: position ids counted over the attention mask, and the pooler fed the first real token
(BERT pools column 0, which left padding fills with [PAD]: a second way left padding goes wrong)."""
from __future__ import annotations

import dataclasses

import torch


class PositionsFromMask(torch.nn.Module):
    def __init__(self, classifier: torch.nn.Module):
        super().__init__()
        self.model = classifier.model  # the same parameter names as the zoo's LogitsOnly: its weights load

    def forward(self, input_ids, attention_mask, token_type_ids):
        bert = self.model.bert
        positions = (attention_mask.cumsum(1) - 1).clamp(min=0)
        hidden = bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                      position_ids=positions).last_hidden_state
        first = hidden[torch.arange(hidden.shape[0]), attention_mask.argmax(1)]  # [CLS], wherever it sits
        return self.model.classifier(torch.tanh(bert.pooler.dense(first)))


def bert_positions_from_mask():
    from harness.models import ZOO

    spec = ZOO["bert_tiny"]()
    return dataclasses.replace(spec, name="bert_positions_from_mask", build=lambda: PositionsFromMask(spec.build()),
                               source="harness_test_text:bert_positions_from_mask")
