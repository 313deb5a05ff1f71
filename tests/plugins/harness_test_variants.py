"""A user's own variants, as a deployment engineer would write them (imported by name in the tests)."""
import numpy as np


def gray_world_color(rgb: np.ndarray) -> np.ndarray:
    """A camera ISP's auto white balance: scales each channel to the mean grey."""
    means = rgb.reshape(-1, 3).mean(axis=0) + 1e-6
    return np.clip(rgb * (means.mean() / means), 0, 255).astype(np.uint8)


def keep_top_one(boxes, scores, labels, iou):
    """A production NMS that keeps only the best box."""
    return np.argsort(-scores)[:1]


def decoder_that_kills_the_process(data: bytes):
    """A native decoder that segfaults: the whole process dies on its first image, as a crashing C
    extension takes Python down with it."""
    import os

    os._exit(139)


def stage_that_hangs(pixels_or_bytes):
    """A decoder or colour converter stuck on a lock or a device: never returns."""
    import time

    time.sleep(3600)


def decoder_that_reads_nothing(data: bytes):
    """A decoder every sample fails in (a deployment's decoder that rejects the dataset's format)."""
    raise ValueError("not a format this decoder reads")
