"""The text benchmark: short reviews with a sentiment label, generated from a seeded grammar.

The SysNoise paper's NLP rows need text whose surface varies the way deployed text does, so that the
tokeniser axes have something to act on, with a label a small model can learn:
- sentiment comes from an opinion clause: an adjective, possibly negated ("not bad" is positive) or
  intensified, and after "but" the second clause decides;
- case varies (lower, Title, UPPER, a random mix), as typed text does;
- accented words (café, crème brûlée, naïve) appear next to their unaccented spellings;
- some words carry Unicode look-alikes: full-width Latin letters, the "ﬁ"/"ﬂ" ligatures, a Cyrillic
  letter in place of a Latin one, non-breaking spaces (NFKC folds the first two and the spaces; nothing
  folds the Cyrillic letters);
- some reviews are long: neutral sentences before and after the opinion, longer than a 64-token window,
  so the truncation length and side decide whether the opinion is seen.

The evaluation split is committed as JSON lines (harness/data/benchmark/text); the training split is never
stored: recipes regenerate it from the seed. Regenerate (only when the grammar changes on purpose):
    python -m harness.data.text
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

SEED = 2026
SENTIMENT_CLASSES = ("negative", "positive")
TEXT_DIR = Path(__file__).parent / "benchmark" / "text"
SENTIMENT_FILE = TEXT_DIR / "sentiment.jsonl"
EVAL_COUNT = 1000

SUBJECTS = ("the food", "the service", "the room", "our waiter", "the café", "the crème brûlée", "the coffee",
            "the staff", "the soup", "the hotel", "the pasta", "the entrée", "the music", "the view",
            "the menu", "the bed", "the pâtisserie", "the breakfast", "the décor", "the wine list")
VERBS = ("was", "is", "seemed", "felt", "looked", "turned out")
POSITIVE = ("good", "great", "excellent", "wonderful", "delicious", "lovely", "fantastic", "superb", "fine",
            "friendly", "fresh", "charming", "perfect", "pleasant", "flawless")
NEGATIVE = ("bad", "awful", "terrible", "bland", "rude", "cold", "dirty", "disappointing", "stale", "noisy",
            "mediocre", "horrible", "poor", "naïve", "greasy")
INTENSIFIERS = ("", "", "", "very ", "really ", "truly ", "quite ", "rather ", "extremely ", "très ")
NEGATIONS = ("not ", "never ", "hardly ", "not at all ")
OPENERS = ("", "", "honestly, ", "overall, ", "to be fair, ", "in short, ", "well, ")
NEUTRAL = ("we arrived on a tuesday evening after a long drive from the coast",
           "the place is near the old station, next to a bakery and a small bookshop",
           "we had booked a table for four people a week in advance",
           "my sister had recommended it after her visit last spring",
           "parking was on the street and it took a while to find a spot",
           "the menu changes every season and lists where the produce comes from",
           "we ordered three courses and a bottle of water for the table",
           "it was raining, so we sat inside near the window",
           "the building used to be a post office before the renovation",
           "there were several groups celebrating birthdays that night")
# look-alikes: what a scraped page, a PDF or a phone keyboard puts into text that reads the same
CYRILLIC = {"a": "\u0430", "e": "\u0435", "o": "\u043e", "c": "\u0441", "p": "\u0440"}
LIGATURES = {"fi": "\ufb01", "fl": "\ufb02"}


@dataclass(frozen=True)
class Review:
    text: str
    label: int


def _full_width(word: str) -> str:
    return "".join(chr(ord(ch) + 0xFEE0) if "!" <= ch <= "~" else ch for ch in word)


def _look_alike(word: str, rng: random.Random) -> str:
    choice = rng.random()
    if choice < 0.35:
        return _full_width(word)
    if choice < 0.6 and any(pair in word for pair in LIGATURES):
        for pair, ligature in LIGATURES.items():
            word = word.replace(pair, ligature)
        return word
    letters = [i for i, ch in enumerate(word) if ch in CYRILLIC]
    if letters:
        at = rng.choice(letters)
        return word[:at] + CYRILLIC[word[at]] + word[at + 1:]
    return _full_width(word)


def _cased(text: str, rng: random.Random) -> str:
    style = rng.random()
    if style < 0.55:
        return text[:1].upper() + text[1:]
    if style < 0.7:
        return text.title()
    if style < 0.8:
        return text.upper()
    if style < 0.9:
        return "".join(ch.upper() if rng.random() < 0.3 else ch for ch in text)
    return text


def _clause(rng: random.Random) -> tuple[str, int]:
    """An opinion about one subject and its sentiment (1 positive)."""
    positive = rng.random() < 0.5
    negated = rng.random() < 0.25
    adjective = rng.choice(POSITIVE if positive != negated else NEGATIVE)
    if rng.random() < 0.12:
        adjective = _look_alike(adjective, rng)
    negation = rng.choice(NEGATIONS) if negated else ""
    intensifier = "" if negated else rng.choice(INTENSIFIERS)
    return f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {negation}{intensifier}{adjective}", int(positive)


def review(seed: int, split: str, index: int) -> Review:
    """The `index`-th review of a split, the same on every machine."""
    rng = random.Random(f"{seed}/{split}/{index}")
    text, label = _clause(rng)
    if rng.random() < 0.3:  # the clause after "but" decides
        second, label = _clause(rng)
        text = f"{text}, but {second}"
    text = rng.choice(OPENERS) + text
    if rng.random() < 0.2:
        before = rng.sample(NEUTRAL, rng.randint(1, 4))
        after = rng.sample([s for s in NEUTRAL if s not in before], rng.randint(0, 3))
        text = ". ".join([*before, text, *after])
    text = ". ".join(_cased(sentence, rng) for sentence in text.split(". ")) + rng.choice((".", "!", ".", "..."))
    if rng.random() < 0.05:
        text = text.replace(" ", "\u00a0", 1)
    return Review(text, label)


def reviews(seed: int, split: str, count: int) -> list[Review]:
    return [review(seed, split, index) for index in range(count)]


def read_jsonl(path: Path) -> list[Review]:
    return [Review(row["text"], row["label"]) for row in map(json.loads, path.read_text(encoding="utf-8").splitlines())]


TEXT_LAYOUT = ('one JSON object a line: {"text": "...", "label": 0 or "class name", "id": optional}, with '
               "classes.txt beside the file (one class name a line, in label-index order) naming numeric labels; "
               "without it they are the model's class indices")


def load_text(path: Path, name: str | None = None):
    """A labelled text set in JSON lines (TEXT_LAYOUT). Every problem is one line naming the file and line."""
    from harness.data import Dataset, Sample
    from harness.errors import InputError
    from harness.tasks import TEXT_CLASSIFY

    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"{path}:{number}: not JSON ({err.msg}); expected {TEXT_LAYOUT}") from None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise InputError(f"{path}:{number}: no \"text\" string; expected {TEXT_LAYOUT}")
        label = row.get("label")
        if label is not None and (isinstance(label, bool) or not isinstance(label, (int, str))):
            raise InputError(f"{path}:{number}: label {label!r} is neither a class index nor a class name")
        rows.append((number, str(row.get("id", f"{number:06d}")), row["text"], label))
    if not rows:
        raise InputError(f"{path}: no samples; expected {TEXT_LAYOUT}")
    listed = path.with_name("classes.txt")
    classes = tuple(c.strip() for c in listed.read_text(encoding="utf-8").splitlines() if c.strip()) \
        if listed.is_file() else tuple(sorted({label for *_, label in rows if isinstance(label, str)}))
    index = {c: k for k, c in enumerate(classes)}
    samples, seen = [], set()
    for number, sample_id, text, label in rows:
        if sample_id in seen:
            raise InputError(f"{path}:{number}: id {sample_id!r} repeated; each sample needs its own")
        seen.add(sample_id)
        if isinstance(label, str):
            if label not in index:
                raise InputError(f"{path}:{number}: label {label!r} is not in {listed.name if listed.is_file() else 'the labels'} "
                                 f"({', '.join(classes[:10])})")
            label = index[label]
        elif label is not None and classes and not 0 <= label < len(classes):
            raise InputError(f"{path}:{number}: label {label} is out of range: {listed.name} lists {len(classes)} "
                             "classes")
        samples.append(Sample(sample_id, path, label=label, text=text))
    return Dataset(name or path.stem, TEXT_CLASSIFY, path.parent, classes, samples)


def write_benchmark() -> None:
    TEXT_DIR.mkdir(parents=True, exist_ok=True)
    rows = [{"id": f"{index:05d}", "text": r.text, "label": r.label}
            for index, r in enumerate(reviews(SEED, "eval", EVAL_COUNT))]
    SENTIMENT_FILE.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    (TEXT_DIR / "classes.txt").write_text("\n".join(SENTIMENT_CLASSES) + "\n", encoding="utf-8")


if __name__ == "__main__":
    write_benchmark()
