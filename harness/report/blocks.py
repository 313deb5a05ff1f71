"""The blocks every report shares, assembled in one place: `schema`, `provenance`, `model`, `dataset` and
`reference` (DESIGN.md's JSON keys), in that order, at the head of every report."""
from __future__ import annotations


def common_blocks(schema: str, exported, data, fingerprint: str, samples: int, failed: list[dict], reference: dict,
                  threads: int | None, seeds: dict, backends, model: dict | None = None,
                  dataset: dict | None = None) -> dict:
    """The head of a report on `exported` run over `data` (its `fingerprint`): `samples` evaluated, `failed`
    sample records, the `reference` it was held against, the run's threads, seeds and backends; `model`,
    `dataset`: what one kind of report adds to those blocks."""
    from harness.provenance import provenance

    return {"schema": schema,
            "provenance": provenance(threads, seeds, exported, fingerprint, sorted(backends)),
            "model": model_block(exported.spec, exported, **(model or {})),
            "dataset": dataset_block(data, samples, failed, **(dataset or {})),
            "reference": reference}


def model_block(spec, exported, **more) -> dict:
    """What model a report is about: its name and task, the exported graph's hash, where its weights came
    from; `more`: what one kind of report adds (the ONNX path and exporter for compare)."""
    inputs = {"bound_inputs": [b.to_json() for b in spec.bound_inputs]} if spec.bound_inputs else {}
    batch = {"fixed_batch": spec.fixed_batch} if spec.fixed_batch else {}
    return {"name": spec.name, "task": spec.task, "onnx_sha256": exported.sha256, "weights": spec.weights_source,
            **inputs, **batch, **more}


def dataset_block(data, samples: int, failed: list[dict], **more) -> dict:
    """What data a report is about: `samples` evaluated, each sample that could not be read (`failed`:
    {"sample", "reason", ...} records) and each file left out when the dataset was loaded."""
    return {"name": data.name, **more, "samples": samples, "failed_samples": len(failed), "failed": failed,
            "skipped_files": len(data.skipped), "skipped": data.skipped}


def failure_records(failures: dict[str, str]) -> list[dict]:
    """A staged pipeline's {sample: reason} as the `failed` records of a dataset block."""
    return [{"sample": sample, "reason": reason} for sample, reason in failures.items()]
