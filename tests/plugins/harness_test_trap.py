"""Code a crafted data or config file would like to run: importing this module leaves a marker file (the
path in $HARNESS_TRAP), so a test can tell whether a file made the harness import it."""
import os
from pathlib import Path

if os.environ.get("HARNESS_TRAP"):
    Path(os.environ["HARNESS_TRAP"]).write_text("imported")


def decode(data: bytes):
    from harness.preprocess import decode_pil

    return decode_pil(data)


def factory():
    from harness.model import resolve_model

    return resolve_model("resnet_tiny")


def unexportable():
    """A model neither ONNX exporter can take (it returns text): the exporters print pages about it."""
    import torch

    class Speaks(torch.nn.Module):
        def forward(self, x):
            return {"label": "cat"}

    return Speaks()


def factory_reading_a_closed_stream():
    """A user's factory that hits the end of a file it reads: EOFError, which click used to turn into a bare
    'Aborted!' with exit 1 and no word of what ended."""
    raise EOFError("Ran out of input while reading the model's config")
