"""YUV 4:2:0 round trips: the colour noise of a camera ISP or video decoder handing frames over as 8-bit
Y'CbCr in an I420 or NV12 buffer (harness.preprocess.COLORS offers each matrix, range and layout)."""
from __future__ import annotations

import numpy as np

# (Kr, Kb) of the luma equation Y = Kr R + (1 - Kr - Kb) G + Kb B
YUV_MATRICES = {"bt601": (0.299, 0.114), "bt709": (0.2126, 0.0722)}


def _pack_420(y: np.ndarray, cb: np.ndarray, cr: np.ndarray, layout: str) -> bytes:
    """I420: Y plane, Cb plane, Cr plane. NV12: Y plane, then Cb/Cr interleaved."""
    chroma = np.concatenate([cb.ravel(), cr.ravel()]) if layout == "i420" else np.stack([cb, cr], -1).ravel()
    return np.concatenate([y.ravel(), chroma]).astype(np.uint8).tobytes()


def _unpack_420(buffer: bytes, height: int, width: int, layout: str):
    data = np.frombuffer(buffer, np.uint8)
    y = data[:height * width].reshape(height, width)
    chroma = data[height * width:]
    ch, cw = height // 2, width // 2
    if layout == "i420":
        cb, cr = chroma[:ch * cw].reshape(ch, cw), chroma[ch * cw:].reshape(ch, cw)
    else:
        cb, cr = chroma.reshape(ch, cw, 2)[..., 0], chroma.reshape(ch, cw, 2)[..., 1]
    return y, cb, cr


def yuv420_roundtrip(rgb: np.ndarray, matrix: str, full_range: bool, layout: str) -> np.ndarray:
    """RGB -> 8-bit Y'CbCr 4:2:0 in an I420 or NV12 buffer -> RGB, as a camera ISP or a video decoder hands
    frames over. Chroma is the mean of each 2x2 block and is repeated back (no interpolation filter)."""
    kr, kb = YUV_MATRICES[matrix]
    kg = 1.0 - kr - kb
    height, width = rgb.shape[:2]
    even = np.pad(rgb, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge").astype(np.float64)
    r, g, b = even[..., 0], even[..., 1], even[..., 2]
    y = kr * r + kg * g + kb * b
    cb, cr = (b - y) / (2 * (1 - kb)), (r - y) / (2 * (1 - kr))
    if full_range:
        y8, cb8, cr8 = y, cb + 128, cr + 128
    else:  # limited (studio) range: Y in 16..235, chroma in 16..240
        y8, cb8, cr8 = 16 + y * 219 / 255, 128 + cb * 224 / 255, 128 + cr * 224 / 255
    h2, w2 = y8.shape
    cb8, cr8 = (p.reshape(h2 // 2, 2, w2 // 2, 2).mean(axis=(1, 3)) for p in (cb8, cr8))
    planes = [np.clip(np.round(p), 0, 255) for p in (y8, cb8, cr8)]
    y8, cb8, cr8 = (p.astype(np.float64) for p in _unpack_420(_pack_420(*planes, layout), h2, w2, layout))
    cb8, cr8 = (np.repeat(np.repeat(p, 2, axis=0), 2, axis=1) for p in (cb8, cr8))
    if full_range:
        y, cb, cr = y8, cb8 - 128, cr8 - 128
    else:
        y, cb, cr = (y8 - 16) * 255 / 219, (cb8 - 128) * 255 / 224, (cr8 - 128) * 255 / 224
    r = y + 2 * (1 - kr) * cr
    b = y + 2 * (1 - kb) * cb
    g = (y - kr * r - kb * b) / kg
    out = np.clip(np.round(np.stack([r, g, b], axis=-1)), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(out[:height, :width])
