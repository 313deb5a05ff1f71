"""Self-contained offline HTML reports, rendered from a JSON report and its sidecar files alone.

Plots are matplotlib PNGs embedded as data: URIs; a Content-Security-Policy forbids every fetch, so the page
opens the same on a machine without network or without the dataset. Thumbnails of flipped samples are
taken when the run happens and stored in a sidecar `.npz` next to the JSON (named in `sidecars`).
"""
from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path

import numpy as np

# no fetch, no form submission, no <base> redirection: a crafted report can neither phone home nor post
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; form-action 'none'; base-uri 'none'"
THUMBNAIL = 96
STYLE = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child,th:first-child{text-align:left}
.fail{color:#b00;font-weight:bold}.ok{color:#070}.gallery figure{display:inline-block;margin:6px;font-size:12px}.gallery figure.text{max-width:22em;vertical-align:top}
.warn{background:#fff3cd;padding:6px}"""


# --- sidecars --------------------------------------------------------------------------------------------

def flipped_thumbnails(report: dict) -> dict[str, np.ndarray]:
    """uint8 RGB thumbnails (longest side THUMBNAIL) of every flipped sample a compare report lists. A flip's
    `overlay` picture (Task.flip_overlay, drawn while the run had the predictions) is moved out of the report
    here, and the flip names it by its key instead."""
    from PIL import Image

    thumbs = {}
    for number, row in enumerate(report.get("results", [])):
        for flip in row.get("flipped", []):
            if isinstance(flip.get("overlay"), np.ndarray):
                key = f"{number}/{flip['sample']}"
                thumbs[key], flip["overlay"] = flip["overlay"], key
            key = flip["sample"]
            # a text sample is its text (the gallery quotes it); its path is the dataset's .jsonl
            if key in thumbs or "text" in flip or not flip.get("path") or not Path(flip["path"]).is_file():
                continue
            with Image.open(flip["path"]) as image:
                image = image.convert("RGB")
                image.thumbnail((THUMBNAIL, THUMBNAIL))
                thumbs[key] = np.asarray(image)
    return thumbs


def write_sidecars(report: dict, json_path: Path, thumbs: dict[str, np.ndarray]) -> None:
    """Stores what the HTML needs beyond the JSON (thumbnails from flipped_thumbnails) next to it, and names
    it in report['sidecars']."""
    if thumbs:
        from harness.files import write_atomic

        name = f"{json_path.stem}.thumbnails.npz"
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **{f"s{k}": v for k, v in enumerate(thumbs.values())},
                            ids=np.array(list(thumbs), dtype=str))
        write_atomic(json_path.with_name(name), buffer.getvalue())
        report.setdefault("sidecars", {})["thumbnails"] = name


def read_thumbnails(report: dict, json_path: Path | None) -> dict[str, np.ndarray]:
    name = (report.get("sidecars") or {}).get("thumbnails")
    if not name or json_path is None or not (json_path.parent / name).is_file():
        return {}
    try:
        with np.load(json_path.parent / name, allow_pickle=False) as data:
            return {str(key): data[f"s{k}"] for k, key in enumerate(data["ids"])}
    except (OSError, ValueError, KeyError):  # a damaged sidecar: the page renders without thumbnails
        return {}


# --- pieces ----------------------------------------------------------------------------------------------

def _png(figure) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode()


def _plot(figure, alt: str) -> str:
    return f"<img data-plot='1' alt='{html.escape(alt)}' src='data:image/png;base64,{_png(figure)}'>"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _table(head: list[str], rows: list[list], classes: list[str | None] | None = None) -> str:
    def cell(value):
        if isinstance(value, float):
            return "-" if math.isnan(value) else f"{value:.4g}"
        return html.escape("-" if value is None else str(value))

    body = "".join(f"<tr class='{(classes or [None] * len(rows))[k] or ''}'>"
                   + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for k, row in enumerate(rows))
    return "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + f"</tr>{body}</table>"


def _thumbnail(array: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _e(value) -> str:
    """Every value that comes from a report is data: escaped, quotes included (it may sit in an attribute)."""
    return html.escape("-" if value is None else str(value), quote=True)


def _number(value, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else _e(value)


def _points(value) -> float:
    return float("nan") if value is None else value * 100


# --- per report kind -------------------------------------------------------------------------------------

def _compare_body(report: dict, thumbs: dict) -> str:
    from harness.tasks import get_task

    plt = _pyplot()
    primary = get_task(report["model"]["task"]).primary_metric
    rows, labels, deltas = [], [], []
    for r in report["results"]:
        label = f"{r['backend']}:{r['device']} {r['precision']}"
        outputs = r.get("outputs") or {}
        delta = (r.get("delta") or {}).get(primary)
        status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r.get('reason') or 'no reason given'}"
        rows.append([label, status, (r.get("metric") or {}).get(primary), _points(delta),
                     outputs.get("max_abs"), outputs.get("top1_agreement"), outputs.get("flips")])
        if delta is not None:
            labels.append(label)
            deltas.append(delta * 100)
    reference = report["reference"]
    parts = [f"<h2>Reference: {_e(reference.get('backend'))} {_e(reference.get('precision'))}, "
             f"{primary} {_number((reference.get('metric') or {}).get(primary))}</h2>",
             _table(["candidate", "status", primary, f"Δ {primary} (pts)", "max abs", "agreement", "flips"], rows,
                    ["fail" if r["status"] == "failed" else None for r in report["results"]])]
    if deltas:
        figure, axes = plt.subplots(figsize=(8, 0.5 + 0.4 * len(deltas)))
        axes.barh(labels, deltas, color=["#b00" if d < 0 else "#070" for d in deltas])
        axes.axvline(0, color="black", linewidth=0.8)
        axes.set_xlabel(f"Δ {primary} (points)")
        figure.tight_layout()
        parts.append(_plot(figure, "delta per candidate"))
    gallery = []
    for r in report["results"]:
        for flip in r.get("flipped", []):
            key = flip.get("overlay") if flip.get("overlay") in thumbs else flip["sample"]
            caption = (f"<figcaption>{_e(r['backend'])} {_e(r['precision'])}: {_e(flip['reference_pred'])}"
                       f" → {_e(flip['candidate_pred'])}<br>label {_e(flip['label'])}</figcaption></figure>")
            if "reference_text" in flip:  # a continuation that changed: the prompt, then both continuations
                caption = (f"<figcaption>{_e(r['backend'])} {_e(r['precision'])}: “{_e(flip['reference_text'])}” →"
                           f" “{_e(flip['candidate_text'])}”</figcaption></figure>")
                gallery.append(f"<figure class='text'><blockquote>{_e(flip['prompt'])} …</blockquote>{caption}")
            elif "text" in flip:  # a text sample is shown as itself
                gallery.append(f"<figure class='text'><blockquote>{_e(flip['text'])}</blockquote>{caption}")
            elif key in thumbs:
                gallery.append(f"<figure><img alt='{_e(flip['sample'])}' "
                               f"src='data:image/png;base64,{_thumbnail(thumbs[key])}'>{caption}")
    if gallery:
        parts.append("<h2>Flipped samples (reference → deployed)</h2><div class='gallery'>" + "".join(gallery)
                     + "</div>")
    return "".join(parts)


def sysnoise_axes_figure(report: dict):
    """Δ per variant with its 95 % interval as error bars, one panel per axis."""
    from harness.report.sysnoise import variant_notes

    plt = _pyplot()
    axes_with_data = [a for a in report["axes"] if any(v.get("delta") is not None for v in a["variants"])]
    if not axes_with_data:
        return None
    sizes = [len(a["variants"]) + 1 for a in axes_with_data]
    figure, panels = plt.subplots(len(axes_with_data), 1, figsize=(9, 1.0 + 0.3 * sum(sizes)), squeeze=False,
                                  gridspec_kw={"height_ratios": sizes})
    for panel, axis in zip(panels[:, 0], axes_with_data):
        variants = [v for v in axis["variants"] if v.get("delta") is not None]  # failed rows have none
        deltas = np.array([v["delta"] * 100 for v in variants])
        low = np.array([(v["delta"] - v["ci95"][0]) * 100 if v.get("ci95") else 0 for v in variants])
        high = np.array([(v["ci95"][1] - v["delta"]) * 100 if v.get("ci95") else 0 for v in variants])
        colors = ["#b00" if v.get("significant") else "#999" for v in variants]
        labels = [" ".join([v["name"], *(f"({note})" for note in variant_notes(v))]) for v in variants]
        panel.barh(labels, deltas, xerr=[low, high], color=colors, capsize=2)
        panel.axvline(0, color="black", linewidth=0.8)
        panel.set_title(f"{axis['axis']} ({axis['stage']})", fontsize=10, loc="left")
        panel.tick_params(labelsize=7)
    test = "McNemar p < 0.05" if report["primary_metric"] == "top1" else "interval excludes 0"
    panels[-1, 0].set_xlabel(f"Δ {report['primary_metric']} (points); red = significant ({test}), "
                             "bars = 95 % bootstrap interval")
    figure.tight_layout()
    return figure


def _sysnoise_body(report: dict) -> str:
    from harness.report.sysnoise import axis_cell, shape_notes

    primary = report["primary_metric"]
    parts = [f"<h2>Reference {_e(primary)} {_number((report['reference'].get('metric') or {}).get(primary))} "
             f"({_e(report['dataset'].get('samples'))} samples)</h2>",
             _table(["axis", "stage", "Δ mean ± std (worst)"], [[a["axis"], a["stage"], axis_cell(a)]
                                                                 for a in report["axes"]])]
    rule = (report.get("significance") or {}).get("rule")
    if rule:
        parts.append(f"<p>Significant: {_e(rule)}.</p>")
    notes = shape_notes(report)
    if notes:
        parts.append("<ul>" + "".join(f"<li>{html.escape(note)}</li>" for note in notes) + "</ul>")
    figure = sysnoise_axes_figure(report)
    if figure is not None:
        parts.append(_plot(figure, "delta per noise axis"))
    if report.get("combined"):
        plt = _pyplot()
        steps = report["combined"]
        figure, axes = plt.subplots(figsize=(8, 3))
        axes.plot([s["axis"] for s in steps], [_points(s["delta"]) for s in steps], marker="o")
        axes.set_ylabel("cumulative Δ (points)")
        figure.tight_layout()
        parts.append(_plot(figure, "cumulative noise curve"))
    return "".join(parts)


def _drift_body(report: dict) -> str:
    from harness.report.drift import drift_summary, error_growth_png

    summary = drift_summary(report, markup=False)
    warn = "warn" if "TAPS PERTURB" in summary else ""
    rows = [[r["tensor"], r["op_type"], r["module"], r["snr_db"], r["introduced"], r["inherited"]]
            for r in report["ops"]]
    first = (report.get("first_divergence") or {}).get("tensor")
    image = base64.b64encode(error_growth_png(report)).decode()
    ranked = [[k, t["tensor"], t["op_type"], t["module"], t["introduced"], t["introduced_snr_db"]]
              for k, t in enumerate(report["top_introducers"], 1)]
    return (f"<pre class='{warn}'>{html.escape(summary)}</pre>"
            f"<img data-plot='1' alt='error growth' src='data:image/png;base64,{image}'>"
            "<h3>Ops ranked by the error they introduce (run alone, reference inputs)</h3>"
            + _table(["rank", "tensor", "op", "module", "introduced rel L2", "introduced SNR dB"], ranked)
            + "<h3>Every tensor, in topological order</h3>"
            + _table(["tensor", "op", "module", "SNR dB", "introduced rel L2", "inherited rel L2"], rows,
                     ["fail" if r["tensor"] == first else None for r in report["ops"]]))


def _validate_body(report: dict) -> str:
    rows = [[c["profile"], c["threshold"], c["limit"], c["value"], "pass" if c["passed"] else "FAIL", c["message"]]
            for c in report["checks"]]
    parts = [f"<h2 class='{'ok' if report['passed'] else 'fail'}'>gate {'passed' if report['passed'] else 'FAILED'}"
             "</h2>", _table(["profile", "threshold", "limit", "value", "result", "detail"], rows,
                             ["ok" if c["passed"] else "fail" for c in report["checks"]])]
    for sub in report.get("sysnoise", []):
        parts.append(f"<h2>SysNoise: {_e(sub['model']['name'])}</h2>" + _sysnoise_body(sub))
    for sub in report.get("drift", []):
        parts.append(f"<h2>Drift: {_e(sub['candidate']['backend'])} {_e(sub['candidate']['precision'])}</h2>"
                     + _drift_body(sub))
    return "".join(parts)


BODIES = {"harness.compare": _compare_body, "harness.sysnoise": lambda r, t: _sysnoise_body(r),
          "harness.drift": lambda r, t: _drift_body(r), "harness.validate": lambda r, t: _validate_body(r)}


def render_html(report: dict, thumbnails: dict | None = None, source: str = "report") -> str:
    """The page; `source` names the report in errors (its file, when rendered from one)."""
    from harness.errors import InputError

    kind = str(report.get("schema", "")).split("/")[0]
    if kind not in BODIES:
        raise InputError(f"report schema {report.get('schema')!r} has no HTML rendering "
                         f"(known: {', '.join(sorted(BODIES))})")
    model = report.get("model") if isinstance(report.get("model"), dict) else {}
    title = f"{kind.removeprefix('harness.')}: {model.get('name', '')}"
    provenance = report.get("provenance") if isinstance(report.get("provenance"), dict) else {}
    footer = html.escape(f"harness {provenance.get('harness', '?')}, python {provenance.get('python', '?')}")
    try:
        body = BODIES[kind](report, thumbnails or {})
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
        raise InputError(f"{source}: not a valid {report.get('schema')} report ({type(err).__name__}: {err})") \
            from None
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta http-equiv='Content-Security-Policy' content=\"{CSP}\"><title>{_e(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{_e(title)}</h1>"
            f"{body}<hr><small>{footer}</small></body></html>")


def write_html(report: dict, path: Path, json_path: Path | None = None, thumbnails: dict | None = None) -> None:
    if thumbnails is None:
        thumbnails = read_thumbnails(report, json_path) if json_path else flipped_thumbnails(report)
    from harness.files import write_atomic

    write_atomic(path, render_html(report, thumbnails, str(json_path) if json_path else "report"))
