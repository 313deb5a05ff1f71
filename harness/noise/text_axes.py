"""The text pre-processing axes (harness.tokenization): what a serving stack does to a string before the
model sees token ids, each against the training system's tokeniser profile. Registered into the axis
tables of harness.noise; they act on a model whose task lists them (Task.pre_axes)."""
from __future__ import annotations

from pathlib import Path

from harness.noise import AXES, VARIANT_BUILDERS, Axis, Variant
from harness.tasks import CAUSAL_LM, TEXT_CLASSIFY


def _tokenizer_variants(spec, graph_backend):
    """The other implementation of the same vocabulary, where transformers has both (WordPiece)."""
    folder = Path(spec.tokenizer) if spec.tokenizer else None
    other = "slow" if spec.profile.tokenizer == "fast" else "fast"
    if folder is None or not (folder / "vocab.txt").is_file():
        return []
    return [Variant(other, {"tokenizer": other})]


def _unicode_variants(spec, graph_backend):
    from harness.tokenization import UNICODE_FORMS

    return [Variant(form, {"unicode": form}) for form in UNICODE_FORMS if form != spec.profile.unicode]


def _case_variants(spec, graph_backend):
    """The tokeniser's own folding turned off: case kept (accents then kept too, BERT's rule), or only the
    accents kept."""
    return [Variant("cased", {"lowercase": False, "strip_accents": None}),
            Variant("keep-accents", {"lowercase": True, "strip_accents": False})]


def _truncation_variants(spec, graph_backend):
    reference = spec.profile
    other = "left" if reference.truncation_side == "right" else "right"
    return [Variant(f"{other}-side", {"truncation_side": other})] + \
        [Variant(f"max-{length}", {"max_length": length}) for length in (reference.max_length // 2,
                                                                        reference.max_length * 2)]


def _padding_variants(spec, graph_backend):
    """The other padding side; every sample padded to max_length (a static-shape engine); each sample alone,
    unpadded (batch size 1). A model whose result depends on its batch neighbours or on where the padding
    is shows it here."""
    reference = spec.profile
    other = "left" if reference.padding_side == "right" else "right"
    return [Variant(f"{other}-side", {"padding_side": other})] + \
        [Variant(padding, {"padding": padding}) for padding in ("max_length", "single") if padding != reference.padding]


def _attention_variants(spec, graph_backend):
    """transformers' other attention implementation on torch (the explicit softmax path against the fused
    scaled-dot-product kernel the model trains with), against torch CPU FP32 with its own."""
    from harness.backends.pytorch import ATTENTION_IMPLEMENTATIONS
    from harness.placement import Placement

    if not spec.has_torch:
        return []
    return [Variant(name, target=Placement("torch", "cpu", "fp32"), options={"attention": name},
                    baseline="same-backend-fp32") for name in ATTENTION_IMPLEMENTATIONS[1:]]


VARIANT_BUILDERS.update(attention=_attention_variants, tokenizer=_tokenizer_variants, unicode=_unicode_variants, case=_case_variants,
                        truncation=_truncation_variants, padding=_padding_variants)
AXES.update(
    tokenizer=Axis("tokenizer", "pre", "text: the tokeniser's other implementation for the same vocabulary "
                                       "(transformers' Rust WordPiece vs its Python one)"),
    unicode=Axis("unicode", "pre", "text: a Unicode normal form applied before the tokeniser (NFC, NFKC, NFD, NFKD)"),
    case=Axis("case", "pre", "text: the tokeniser's lower-casing or accent stripping turned off"),
    truncation=Axis("truncation", "pre", "text: truncation from the other side, at half and twice the length"),
    attention=Axis("attention", "model", "text: torch running transformers' eager attention (explicit softmax) "
                                         "instead of the fused scaled-dot-product kernel", tasks=(TEXT_CLASSIFY, CAUSAL_LM)),
    padding=Axis("padding", "pre", "text: padding on the other side, to max_length, or none (one sample a batch)"),
)
