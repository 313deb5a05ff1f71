"""The pre-processing stages every run goes through: decode -> (colour at decode) -> geometry -> (colour at
the model input) -> stack, each stage cached by (sample, the profile fields it depends on).

One path for every command: compare, drift, validate and calibration take their batches from it
(harness.run.iter_batches), the run engine its chunks (harness.pipeline). The caches hold only the
current decoder's decodes and the current resize's images (callers visit profiles sorted by stage), so
memory is bounded by the samples a caller holds at once; `drop()` empties them between chunks.
`harness.preprocess.to_pixels` is the same composition without caches (the stages' independent check).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from harness.errors import SampleError
from harness.plugins import lookup
from harness.preprocess import COLORS, Geometry, apply_geometry, color_before_geometry, decode, stored_size
from harness.topdown import instance_box
from harness.profile import Profile


@dataclass
class Inputs:
    """One pre-processing profile applied to a run of samples: uint8 pixels of the samples that loaded."""

    ids: list[str]
    pixels: np.ndarray
    geometries: list[Geometry]
    digest: str
    batch_limit: int | None = None  # at most this many samples a model run (None: the caller's batch size)

    def feeds(self, start: int, stop: int, profile: Profile, input_names) -> dict[str, np.ndarray]:
        """The model's named inputs for samples [start, stop): the pixels normalised as `profile` says."""
        from harness.preprocess import normalize

        return {input_names[0]: normalize(self.pixels[start:stop], profile)}


@dataclass
class TextInputs(Inputs):
    """A tokeniser profile applied to a run of texts: each sample's token ids, unpadded (`pixels` holds
    nothing); a model run pads its batch as the profile says."""

    rows: list = field(default_factory=list)
    tokenizer: object = None  # the model's tokeniser folder

    def feeds(self, start, stop, profile, input_names):
        return self.feeds_of(self.rows[start:stop], profile, input_names)

    def feeds_of(self, rows: list[dict], profile: Profile, input_names) -> dict[str, np.ndarray]:
        """The model's named inputs for tokenised rows (a generation step's, too), padded as `profile` says."""
        from harness.tokenization import padded

        batch = padded(rows, self.tokenizer, profile)
        if "position_ids" in input_names:  # transformers' own default when a model is given none
            batch["position_ids"] = np.broadcast_to(np.arange(batch["input_ids"].shape[1]),
                                                    batch["input_ids"].shape).copy()
        missing = [name for name in input_names if name not in batch]
        if missing:
            raise SampleError(f"the tokeniser makes {', '.join(batch)}; the model also takes {', '.join(missing)}")
        return {name: batch[name] for name in input_names}


def resize_key(profile: Profile) -> tuple:
    """What a resized image depends on: with the colour converted at decode, the colour too ("" sorts the
    resizes every colour shares first)."""
    color = profile.color if color_before_geometry(profile) else ""
    return (profile.decoder, color, profile.resize, profile.geometry, profile.input_size, profile.resize_size,
            profile.crop_convention, profile.box_padding, profile.mean, profile.std)  # a geometry may normalise


def read_failure(err: BaseException) -> str:
    """What to say about a sample that cannot be read or decoded."""
    return err.strerror if isinstance(err, OSError) and err.strerror else str(err)


class Preprocessor:
    """The pre-processing stages of one dataset, with their caches. A sample that cannot be read or decoded
    is recorded in `failures` (sample id -> (decoder, error)) and left out; `counters` counts the work."""

    def __init__(self, dataset, counters: dict | None = None):
        self.dataset = dataset
        self.read = dataset.read  # sample -> bytes (a benchmark reads them beforehand)
        self.failures: dict[str, tuple[str, BaseException]] = {}
        self.counters = counters if counters is not None else {}
        self.counters.update(decodes=0, resizes=0)
        self.drop()

    def drop(self) -> None:
        """Forgets every cached image (the end of a chunk)."""
        self._decoded: dict = {}
        self._decoder = None
        self._resized: dict = {}
        self._resize_current = None
        self._inputs: tuple | None = None   # (pre key, ids, Inputs) of the last stack

    def decoded(self, sample, decoder: str):
        """(decoded image, stored size), or None when the sample cannot be read or decoded."""
        key = (sample.id, decoder)
        if key not in self._decoded:
            if decoder != self._decoder:  # profiles come sorted by decoder: the previous one is done
                self._decoded, self._decoder = {}, decoder
            try:
                data = self.read(sample)
                self._decoded[key] = (decode(data, decoder), stored_size(data))
            except (OSError, SampleError) as err:
                self._decoded[key] = None
                self.failures.setdefault(sample.id, (decoder, err))
            self.counters["decodes"] += 1
        return self._decoded[key]

    def resized(self, sample, profile: Profile):
        """(pixels, geometry) after decode and geometry: kept apart from a colour converted at the model input,
        so such colour variants re-use it; a colour converted at decode comes before it."""
        key = (sample.id, *resize_key(profile))
        if key not in self._resized:
            if key[1:] != self._resize_current:  # likewise sorted by resize within a decoder
                self._resized, self._resize_current = {}, key[1:]
            decoded = self.decoded(sample, profile.decoder)
            if decoded is not None and color_before_geometry(profile):
                decoded = lookup(COLORS, "color mode", profile.color)(decoded[0]), decoded[1]
            self._resized[key] = None
            if decoded is not None:
                try:
                    self._resized[key] = apply_geometry(decoded[0], profile, decoded[1],
                                                        box=instance_box(sample, profile))
                except SampleError as err:  # an instance box a top-down crop cannot be taken around
                    self.failures.setdefault(sample.id, (profile.decoder, err))
                self.counters["resizes"] += 1
        return self._resized[key]

    def pixels(self, sample, profile: Profile) -> tuple[np.ndarray, Geometry] | None:
        """uint8[S, S, 3] in the profile's colour and its Geometry, or None (see `failures`)."""
        resized = self.resized(sample, profile)
        if resized is None or color_before_geometry(profile):
            return resized
        return lookup(COLORS, "color mode", profile.color)(resized[0]), resized[1]

    def stack(self, samples, profile: Profile) -> Inputs | None:
        """The samples' pixels under one profile, stacked, with a digest of their content (the key inference
        is cached by); None when none loaded. The last stack is kept for requests sharing a profile's
        pre-processing."""
        key = (profile.stage_key("pre"), tuple(s.id for s in samples))
        if self._inputs is None or self._inputs[0] != key:
            loaded = [(sample.id, found) for sample in samples if (found := self.pixels(sample, profile)) is not None]
            if not loaded:
                return None
            ids = [sample_id for sample_id, _ in loaded]
            stacked = np.stack([found[0] for _, found in loaded])
            digest = hashlib.sha256(stacked.tobytes() + "|".join(ids).encode()).hexdigest()
            self._inputs = key, Inputs(ids, stacked, [found[1] for _, found in loaded], digest)
        return self._inputs[1]


class TextPreprocessor:
    """The pre-processing stage of a text dataset: the model's tokeniser under a profile's text fields
    (harness.tokenization). The same interface as Preprocessor: `stack`, `failures`, `drop`."""

    def __init__(self, dataset, counters: dict | None, tokenizer):
        self.dataset, self.tokenizer = dataset, tokenizer
        self.failures: dict[str, tuple[str, BaseException]] = {}
        self.counters = counters if counters is not None else {}
        self.counters.update(tokenizations=0)
        self.drop()

    def drop(self) -> None:
        self._inputs: tuple | None = None

    def stack(self, samples, profile: Profile) -> Inputs | None:
        from harness.tokenization import tokenized

        key = (profile.stage_key("pre"), tuple(s.id for s in samples))
        if self._inputs is None or self._inputs[0] != key:
            texts = [s for s in samples if s.text is not None]
            for sample in samples:
                if sample.text is None:
                    self.failures.setdefault(sample.id, (profile.tokenizer, SampleError("no text")))
            if not texts:
                return None
            rows = tokenized([s.text for s in texts], self.tokenizer, profile)
            self.counters["tokenizations"] += len(rows)
            for sample, row in zip(texts, rows):  # an empty text, to a tokeniser that adds no special tokens
                if not row["input_ids"]:
                    self.failures.setdefault(sample.id, (profile.tokenizer, SampleError("the tokeniser makes no "
                                                                                        "tokens of this text")))
            kept = [(sample, row) for sample, row in zip(texts, rows) if row["input_ids"]]
            if not kept:
                return None
            ids, rows = [sample.id for sample, _ in kept], [row for _, row in kept]
            # the rows are unpadded: how a batch pads them is part of what the model sees
            padding = (profile.padding, profile.padding_side, profile.max_length)
            digest = hashlib.sha256(repr((ids, padding, [sorted(row.items()) for row in rows])).encode()).hexdigest()
            self._inputs = key, TextInputs(ids, np.zeros((len(ids), 0), np.uint8), [None] * len(ids), digest,
                                           batch_limit=1 if profile.padding == "single" else None, rows=rows,
                                           tokenizer=self.tokenizer)
        return self._inputs[1]
