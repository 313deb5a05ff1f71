"""Text classification (sequence classification): a transformer's logits rows over token ids; accuracy
with the same paired statistics as an image classifier. The pre-processing is a tokeniser
(harness.tokenization), so the pre-processing axes are a text's: tokeniser implementation, Unicode form,
case and accents, truncation and padding."""
from __future__ import annotations

from harness.tasks import TEXT_CLASSIFY
from harness.tasks.classify import Classify


class TextClassify(Classify):
    name = TEXT_CLASSIFY
    reads_text = True
    primary_metric = "top1"
    pre_axes = ("tokenizer", "unicode", "case", "truncation", "padding")
    graph_axes = ()
    known_bad = ("the server pads its batches on the left", "left-padding", {"padding_side": "left"})

    def preprocessor(self, dataset, counters, spec):
        return text_preprocessor(dataset, counters, spec)

    def flip_record(self, sample, reference, candidate, classes) -> dict:
        return {**super().flip_record(sample, reference, candidate, classes), "text": sample.text}

    def benchmark(self):
        from harness.data.text import SENTIMENT_FILE, load_text

        return load_text(SENTIMENT_FILE, name="embedded-text-classify")

    def scene(self):
        raise NotImplementedError("text-classify: a text task has no synthetic scenes; its training split is "
                                  "harness.data.text's generated reviews")


def text_preprocessor(dataset, counters: dict, spec):
    """A text model's pre-processing stage: its tokeniser under the profile's text fields."""
    from harness.errors import UsageError
    from harness.stages import TextPreprocessor

    if spec.tokenizer is None:
        raise UsageError(f"{spec.name}: a text model needs its tokeniser folder (--tokenizer FOLDER)")
    return TextPreprocessor(dataset, counters, spec.tokenizer)
