"""The blocks every report shares, assembled in one place: `model` and `dataset` (DESIGN.md's JSON keys)."""
from __future__ import annotations


def model_block(spec, exported, **more) -> dict:
    """What model a report is about: its name and task, the exported graph's hash, where its weights came
    from; `more`: what one kind of report adds (the ONNX path and exporter for compare)."""
    return {"name": spec.name, "task": spec.task, "onnx_sha256": exported.sha256, "weights": spec.weights_source,
            **more}


def dataset_block(data, samples: int, failed: list[dict], **more) -> dict:
    """What data a report is about: `samples` evaluated, each sample that could not be read (`failed`:
    {"sample", "reason", ...} records) and each file left out when the dataset was loaded."""
    return {"name": data.name, **more, "samples": samples, "failed_samples": len(failed), "failed": failed,
            "skipped_files": len(data.skipped), "skipped": data.skipped}


def failure_records(failures: dict[str, str]) -> list[dict]:
    """A staged pipeline's {sample: reason} as the `failed` records of a dataset block."""
    return [{"sample": sample, "reason": reason} for sample, reason in failures.items()]
