"""Dataset layouts, from fixtures the tests make and from real photos that installed packages carry."""
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness.data import embedded_benchmark, load_dataset
from harness.data.synthetic import CLASSES, classification_scene, detection_scene
from harness.errors import InputError


def _write_jpeg(path: Path, size=(80, 60), seed=0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, "JPEG")


def test_image_folder(tmp_path):
    for k, name in enumerate(["cat", "dog"]):
        for i in range(3):
            _write_jpeg(tmp_path / name / f"{i}.jpg", seed=k * 10 + i)
    dataset = load_dataset(tmp_path)
    assert dataset.task == "classify" and dataset.classes == ("cat", "dog")
    assert [s.label for s in dataset.samples] == [0, 0, 0, 1, 1, 1]
    assert dataset.samples[3].id == "dog/0.jpg"


def test_coco_folder(tmp_path):
    _write_jpeg(tmp_path / "images" / "a.jpg")
    (tmp_path / "instances.json").write_text(json.dumps({
        "images": [{"id": 7, "file_name": "a.jpg", "width": 80, "height": 60}],
        "annotations": [{"id": 1, "image_id": 7, "category_id": 3, "bbox": [1, 2, 10, 20], "iscrowd": 0}],
        "categories": [{"id": 3, "name": "kite"}, {"id": 1, "name": "bus"}]}))
    dataset = load_dataset(tmp_path)
    assert dataset.task == "detect" and dataset.classes == ("bus", "kite")
    np.testing.assert_array_equal(dataset.samples[0].boxes, [[1, 2, 11, 22]])
    assert dataset.samples[0].box_labels.tolist() == [1]


def test_unlabeled_folder_of_real_photos(tmp_path):
    # real photos shipped inside installed wheels (shared/DATA-NOTES.md): matplotlib's grace_hopper.jpg
    import matplotlib

    photo = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    (tmp_path / "hopper.jpg").write_bytes(photo.read_bytes())
    _write_jpeg(tmp_path / "noise.jpg")
    dataset = load_dataset(tmp_path)
    assert dataset.task == "unlabeled" and [s.id for s in dataset.samples] == ["hopper.jpg", "noise.jpg"]


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing", "dataset not found"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "neither class sub-folders"),
    (lambda p: ((p / "c" / "x").mkdir(parents=True), p / "c")[1], "hold no images"),
    (lambda p: (p / "bad.json").write_text("{") and p / "bad.json", "not a COCO instances file"),
])
def test_bad_datasets_are_named(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(InputError, match=message) as info:
        load_dataset(path)
    assert str(path) in str(info.value)


def test_embedded_benchmark_is_what_the_generator_makes():
    classify, detect = embedded_benchmark("classify"), embedded_benchmark("detect")
    assert len(classify) == 1000 and classify.classes == tuple(sorted(CLASSES))
    assert len(detect) == 120 and detect.classes == CLASSES
    # class folders are sorted names; the generator's label index is CLASSES order
    sample = classify.samples[0]
    index = int(Path(sample.id).stem)
    scene = classification_scene(2026, "eval", index, 64)
    assert classify.classes[sample.label] == CLASSES[scene.labels[0]]
    # the stored split is 1.25-3x the model input and spans the JPEG settings that make decoders differ
    sizes = [min(Image.open(s.path).size) for s in classify.samples]
    assert 80 <= min(sizes) and max(sizes) <= 192
    counts = [len(s.box_labels) for s in detect.samples]
    assert min(counts) >= 1 and max(counts) >= 6
    first = detection_scene(2026, "eval", 0, 128)
    np.testing.assert_allclose(detect.samples[0].boxes, first.boxes)


def test_generator_is_deterministic_and_varied():
    a, b = classification_scene(5, "train", 3), classification_scene(5, "train", 3)
    assert a.jpeg == b.jpeg
    scenes = [classification_scene(5, "train", i) for i in range(60)]
    assert {s.subsampling for s in scenes} == {"4:4:4", "4:2:2", "4:2:0"}
    qualities = [s.quality for s in scenes]
    assert 50 <= min(qualities) and max(qualities) <= 95
    assert len({s.labels[0] for s in scenes}) == len(CLASSES)
    with Image.open(io.BytesIO(scenes[0].jpeg)) as image:
        assert image.format == "JPEG"


def test_a_missing_image_is_counted_and_named(tmp_path):
    from harness.profile import Profile
    from harness.run import iter_batches

    _write_jpeg(tmp_path / "images" / "here.jpg")
    (tmp_path / "instances.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "here.jpg"}, {"id": 2, "file_name": "gone.jpg"}],
        "annotations": [], "categories": [{"id": 1, "name": "a"}]}))
    failures = []
    batches = list(iter_batches(load_dataset(tmp_path), Profile(input_size=32), 4, failures))
    assert [s.id for b in batches for s in b.samples] == ["here.jpg"]
    assert len(failures) == 1 and failures[0].sample == "gone.jpg"
    assert failures[0].path.endswith("images/gone.jpg") and "No such file" in failures[0].reason


def test_the_shipped_imagenet_synsets_agree_with_torchvisions_imagenette_table():
    """An independent source: torchvision's Imagenette names 10 WordNet ids with their class names; each id's
    position in the shipped list is that class's index among torchvision's ImageNet categories."""
    from torchvision.datasets import Imagenette
    from torchvision.models import ResNet18_Weights

    from harness.data import imagenet_synsets

    categories = ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
    synsets = imagenet_synsets()
    assert len(synsets) == len(set(synsets)) == 1000
    for synset, names in Imagenette._WNID_TO_CLASS.items():
        assert categories[synsets.index(synset)] == names[0], synset


def test_synset_folders_map_onto_an_imagenet_model_and_unknown_folders_are_all_named(tmp_path):
    """The real ImageNet validation layout (a folder per WordNet id) for a torchvision ImageNet model: tench
    is class 0, goldfish 1, English springer 217. Folders that match nothing are each named, with a count."""
    from harness.model import resolve_model

    for k, synset in enumerate(["n01440764", "n01443537", "n02102040"]):
        _write_jpeg(tmp_path / "val" / synset / "0.jpg", seed=k)
    spec = resolve_model("torchvision:resnet18")
    aligned = load_dataset(tmp_path / "val").aligned_to(spec.labels)
    assert [s.label for s in aligned.samples] == [0, 1, 217] and aligned.classes == tuple(spec.labels)
    names = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"]  # no ImageNet category (as "ant" is)
    for k, name in enumerate(names):
        _write_jpeg(tmp_path / "six" / name / "0.jpg", seed=k)
    with pytest.raises(InputError, match="6 of its 6 class folders are not in the model's label map: "
                                         "alpha, bravo, charlie, delta, echo, foxtrot "):
        load_dataset(tmp_path / "six").aligned_to(spec.labels)
