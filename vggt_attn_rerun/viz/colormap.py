"""Perceptual colormaps as 256 x 3 uint8 lookup tables, with no plotting library at run time.

Each map is stored as 33 anchor colors, sampled from matplotlib's tables at indices
0, 8, 16, ..., 248, 255, and linearly interpolated in between: every entry is within 3 units
(of 255) of matplotlib's table.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from vggt_attn_rerun.errors import UserError

ANCHOR_INDICES = tuple(range(0, 256, 8)) + (255,)

_ANCHORS = {
    "inferno": (
        "000004 040312 0b0724 150b37 210c4a 2f0a5b 3d0965 4a0c6b 57106e 64156e 71196e"
        " 7d1e6d 8a226a 972766 a32c61 b0315b bc3754 c73e4c d24644 db503b e45a31 eb6628"
        " f1731d f68013 f98e09 fb9d07 fcac11 fbbc21 f9cb35 f5db4c f2ea69 f3f68a fcffa4"
    ),
    "magma": (
        "000004 030312 0a0822 130d34 1d1147 29115a 36106b 440f76 51127c 5d177f 6a1c81"
        " 762181 832681 902a81 9c2e7f aa337d b73779 c43c75 d0416f dc4869 e75263 ef5d5e"
        " f56b5c f9795d fc8961 fd9869 fea772 feb67c fec488 fed395 fde2a3 fcf0b2 fcfdbf"
    ),
    "viridis": (
        "440154 470d60 48186a 482374 472d7b 453781 424086 3e4989 3b528b 375b8d 33638d"
        " 2f6b8e 2c728e 297a8e 26828e 23898e 21918c 1f988b 1fa088 22a785 28ae80 32b67a"
        " 3fbc73 4ec36b 5ec962 70cf57 84d44b 98d83e addc30 c2df23 d8e219 ece51b fde725"
    ),
    "turbo": (
        "30123b 392a73 4040a2 4456c7 466be3 4680f6 4294ff 37a8fa 28bceb 1ccdd8 18ddc2"
        " 1fe9af 32f298 4ef97d 6dfe62 8bff4b a4fc3c b9f635 cdec34 dfdf37 eecf3a f8be39"
        " fdac34 fe962b fb7e21 f46617 eb500e df3f08 d02f05 be2102 a91601 920b01 7a0403"
    ),
}

COLORMAPS = tuple(_ANCHORS)

#: the diverging map of signed values centred at 0 (gains): blue < 0, light gray = 0, red > 0.
#: Not one of COLORMAPS (the attention maps' choices): ``diverging_lut()`` gives it.
DIVERGING = "coolwarm"
_ANCHORS_DIVERGING = {
    "coolwarm": (
        "3b4cc0 445acc 4e68d8 5875e1 6282ea 6c8ff1 779af7 82a6fb 8db0fe 98b9ff a3c2fe aec9fc b9d0f9 c3d5f4"
        " ccd9ed d5dbe5 dddcdc e5d8d1 ecd3c5 f1ccb8 f5c4ac f7ba9f f7b093 f6a586 f4987a f08b6e eb7d62 e46e56"
        " dd5f4b d44e41 ca3b37 be242e b40426"
    ),
}


def check_colormap(name: str) -> str:
    """The canonical colormap name, or UserError naming the valid ones."""
    key = str(name).strip().lower()
    if key not in _ANCHORS:
        raise UserError(f"unknown colormap {name!r}: valid colormaps are {', '.join(COLORMAPS)}")
    return key


@cache
def _lut(name: str) -> np.ndarray:
    spec = _ANCHORS[name] if name in _ANCHORS else _ANCHORS_DIVERGING[name]
    anchors = np.array([[int(h[i : i + 2], 16) for i in (0, 2, 4)] for h in spec.split()], np.float64)
    x = np.arange(256)
    table = np.stack([np.interp(x, ANCHOR_INDICES, anchors[:, c]) for c in range(3)], axis=-1)
    table = np.round(table).astype(np.uint8)
    table.flags.writeable = False  # cached and shared: callers must copy before editing
    return table


def lut(name: str) -> np.ndarray:
    """``[256, 3]`` uint8 RGB table of a colormap (read-only)."""
    return _lut(check_colormap(name))


def diverging_lut() -> np.ndarray:
    """``[256, 3]`` uint8 RGB table of the diverging map (DIVERGING): entry 128 is the centre (0)."""
    return _lut(DIVERGING)


def apply(values: np.ndarray, name: str) -> np.ndarray:
    """uint8 values ``[...]`` -> RGB ``[..., 3]`` uint8."""
    return lut(name)[np.asarray(values, dtype=np.uint8)]


# --------------------------------------------------------------------------------------------
# The attention encoding: how a u8 map value (0 = cold, 255 = the map's scale) is drawn
# --------------------------------------------------------------------------------------------

#: 2D overlay alpha = 255 * (v / 255) ** ALPHA_EXPONENT: 0 (the photo shows) at v = 0, opaque at
#: 255; below 1 so that mid values are already clearly tinted (v = 64 -> 44% opaque).
ALPHA_EXPONENT = 0.6
#: Drawn colors use the colormap from this entry up: its low end (black for inferno) vanishes on
#: the viewer's dark background and reads as a shadow on photos.
LUT_START = 64


def visible_colors(values: np.ndarray, name: str) -> np.ndarray:
    """uint8 values ``[...]`` -> RGB ``[..., 3]`` from the visible upper part of the colormap."""
    v = np.asarray(values, np.float64)
    index = np.rint(LUT_START + v * (255 - LUT_START) / 255.0).astype(np.uint8)
    return lut(name)[index]


def overlay_rgba(name: str) -> np.ndarray:
    """``[256, 4]`` uint8: value v -> visible_colors, alpha rising from 0 (cold) to 255 (hot)."""
    alpha = np.rint(255.0 * (np.arange(256) / 255.0) ** ALPHA_EXPONENT).astype(np.uint8)
    return np.concatenate([visible_colors(np.arange(256), name), alpha[:, None]], axis=1)
