"""VGGT's token layout and the ways a user can name a query token.

Per frame the aggregator sees ``[camera, register x R, patches...]``: ``P = 1 + R + gh * gw``
tokens. Global attention concatenates the frames, so frame ``s`` owns global indices
``[s * P, (s + 1) * P)``. Patches are row-major: local index ``patch_start + row * gw + col``.

Pixel coordinates are continuous: the top-left corner of the image is (0, 0) and pixel
``(i, j)`` covers ``[i, i + 1) x [j, j + 1)``, so its centre is ``(i + 0.5, j + 0.5)``.
This is the convention of PIL's resize and of Rerun's 2D views, which keeps every
conversion here a plain affine map.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from vggt_attn_rerun.errors import UserError


def as_index(value: object, what: str, low: int = 0) -> int:
    """``value`` as a plain int >= ``low`` (Python or numpy integers; not bools, floats or strings)."""
    try:
        if isinstance(value, bool):
            raise TypeError
        n = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise UserError(f"{what} must be an integer >= {low}, got {value!r} ({type(value).__name__})") from None
    if n < low:
        raise UserError(f"{what} must be an integer >= {low}, got {n}")
    return int(n)


class PixelMap(Protocol):
    """Maps pixels of the original photo to the model's input image and back (see images.py)."""

    def original_to_model(self, x: float, y: float) -> tuple[float, float]: ...

    def model_to_original(self, x: float, y: float) -> tuple[float, float]: ...

    @property
    def original_size(self) -> tuple[int, int]: ...


# VGGT-1B's token layout: what the command line checks against before a model is loaded.
VGGT_PATCH_SIZE = 14
VGGT_NUM_REGISTERS = 4
VGGT_IMAGE_SIZE = 518  # the input width (crop) or long side (pad) VGGT was trained at


@dataclass(frozen=True)
class TokenLayout:
    """The token layout of one run.

    Attributes:
        num_frames: S, the number of views.
        grid_h, grid_w: patch grid of each frame (input H / patch_size, W / patch_size).
        patch_size: pixels per patch side (14 for VGGT).
        num_registers: register tokens per frame (4 for VGGT); the camera token comes first.
        num_cameras: camera tokens per frame before the registers: 1 (VGGT), 0 (models without
            one, such as pi3, whose frames start with their registers).
    """

    num_frames: int
    grid_h: int
    grid_w: int
    patch_size: int = VGGT_PATCH_SIZE
    num_registers: int = VGGT_NUM_REGISTERS
    num_cameras: int = 1

    def __post_init__(self) -> None:
        for name in ("num_frames", "grid_h", "grid_w", "patch_size", "num_registers"):
            low = 0 if name == "num_registers" else 1
            object.__setattr__(self, name, as_index(getattr(self, name), f"TokenLayout.{name}", low))
        if self.num_cameras not in (0, 1):
            raise UserError(f"TokenLayout.num_cameras must be 0 or 1, got {self.num_cameras}")

    @classmethod
    def for_image_size(
        cls,
        num_frames: int,
        height: int,
        width: int,
        patch_size: int = VGGT_PATCH_SIZE,
        num_registers: int = VGGT_NUM_REGISTERS,
        num_cameras: int = 1,
    ) -> TokenLayout:
        """Layout for S frames of ``height x width`` input pixels (multiples of ``patch_size``)."""
        patch_size = as_index(patch_size, "patch_size", 1)
        height, width = as_index(height, "image height", 1), as_index(width, "image width", 1)
        if height % patch_size or width % patch_size:
            raise UserError(
                f"image size {width}x{height} is not a multiple of the patch size {patch_size}; "
                f"use images.load_images to resize"
            )
        return cls(num_frames, height // patch_size, width // patch_size, patch_size, num_registers, num_cameras)

    # -- sizes ---------------------------------------------------------------------------------
    @property
    def patch_start(self) -> int:
        """Index of the first patch token within a frame (camera + registers)."""
        return self.num_cameras + self.num_registers

    @property
    def num_patches(self) -> int:
        return self.grid_h * self.grid_w

    @property
    def tokens_per_frame(self) -> int:
        """P, the tokens of one frame, special tokens included."""
        return self.patch_start + self.num_patches

    @property
    def num_tokens(self) -> int:
        """S * P, the length of the global attention sequence."""
        return self.num_frames * self.tokens_per_frame

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of the model's input image in pixels."""
        return self.grid_h * self.patch_size, self.grid_w * self.patch_size

    @property
    def special_names(self) -> tuple[str, ...]:
        return ("camera",) * self.num_cameras + tuple(f"register_{r}" for r in range(self.num_registers))

    # -- checks --------------------------------------------------------------------------------
    def check_frame(self, frame: int) -> int:
        if not 0 <= frame < self.num_frames:
            raise UserError(f"frame {frame} is out of range: valid frames are 0..{self.num_frames - 1}")
        return int(frame)

    def check_patch(self, row: int, col: int) -> tuple[int, int]:
        if not (0 <= row < self.grid_h and 0 <= col < self.grid_w):
            raise UserError(
                f"patch (row {row}, col {col}) is out of range: valid rows are 0..{self.grid_h - 1}, "
                f"cols 0..{self.grid_w - 1}"
            )
        return int(row), int(col)

    # -- conversions ---------------------------------------------------------------------------
    def split(self, token: int) -> tuple[int, int]:
        """Global token index -> (frame, index within frame)."""
        if not 0 <= token < self.num_tokens:
            raise UserError(f"token {token} is out of range: valid global tokens are 0..{self.num_tokens - 1}")
        return divmod(int(token), self.tokens_per_frame)

    def join(self, frame: int, local: int) -> int:
        """(frame, index within frame) -> global token index."""
        self.check_frame(frame)
        if not 0 <= local < self.tokens_per_frame:
            raise UserError(f"token {local} within a frame is out of range: valid are 0..{self.tokens_per_frame - 1}")
        return int(frame) * self.tokens_per_frame + int(local)

    def is_patch(self, local: int) -> bool:
        return local >= self.patch_start

    def local_to_patch(self, local: int) -> tuple[int, int]:
        """Index within frame -> (row, col). Special tokens have no patch: UserError."""
        if not self.patch_start <= local < self.tokens_per_frame:
            raise UserError(
                f"token {local} within a frame is not a patch: patches are "
                f"{self.patch_start}..{self.tokens_per_frame - 1}"
            )
        return divmod(int(local) - self.patch_start, self.grid_w)

    def patch_to_local(self, row: int, col: int) -> int:
        self.check_patch(row, col)
        return self.patch_start + int(row) * self.grid_w + int(col)

    def special_index(self, name: str) -> int:
        """'camera' -> 0, 'register_r' (or 'reg_r', 'rR') -> 1 + r."""
        name = name.strip().lower()
        if name in ("camera", "cam") and self.num_cameras:
            return 0
        m = re.fullmatch(r"(?:register_?|reg_?|r)(\d+)", name)
        if m and int(m.group(1)) < self.num_registers:
            return self.num_cameras + int(m.group(1))
        camera = "camera, " if self.num_cameras else ""
        raise UserError(
            f"unknown special token {name!r}: valid are {camera}register_0..register_{self.num_registers - 1}"
        )

    def patch_center(self, row: int, col: int) -> tuple[float, float]:
        """(row, col) -> (x, y) of the patch centre in model input pixels."""
        self.check_patch(row, col)
        return ((col + 0.5) * self.patch_size, (row + 0.5) * self.patch_size)

    def pixel_to_patch(self, x: float, y: float) -> tuple[int, int]:
        """(x, y) in model input pixels -> (row, col) of the patch that covers it."""
        h, w = self.image_size
        if not (0 <= x < w and 0 <= y < h):
            raise UserError(f"pixel ({x:g}, {y:g}) is outside the model image: valid x in [0, {w}), y in [0, {h})")
        return int(y // self.patch_size), int(x // self.patch_size)


@dataclass(frozen=True)
class Query:
    """One query token: a frame and an index within it (patch or special token)."""

    frame: int
    local: int
    label: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        # Query(0.5, 5) would otherwise pass until some array index fails far away.
        object.__setattr__(self, "frame", as_index(self.frame, "Query frame"))
        object.__setattr__(self, "local", as_index(self.local, "Query local (token index within the frame)"))
        if not isinstance(self.label, str):
            raise UserError(f"Query label must be a str, got {type(self.label).__name__}")

    def token(self, layout: TokenLayout) -> int:
        """Global token index."""
        return layout.join(self.frame, self.local)

    def patch(self, layout: TokenLayout) -> tuple[int, int] | None:
        """(row, col), or None for a special token."""
        return layout.local_to_patch(self.local) if layout.is_patch(self.local) else None

    def name(self, layout: TokenLayout) -> str:
        """A short, path-safe name: ``f0_r3_c5`` or ``f1_camera``."""
        rc = self.patch(layout)
        if rc is None:
            return f"f{self.frame}_{layout.special_names[self.local]}"
        return f"f{self.frame}_r{rc[0]}_c{rc[1]}"

    # -- constructors, one per way of naming a token ---------------------------------------------
    @classmethod
    def from_token(cls, layout: TokenLayout, token: int) -> Query:
        frame, local = layout.split(token)
        return cls(frame, local, f"token {token}")

    @classmethod
    def from_patch(cls, layout: TokenLayout, frame: int, row: int, col: int) -> Query:
        layout.check_frame(frame)
        return cls(frame, layout.patch_to_local(row, col), f"frame {frame} patch ({row}, {col})")

    @classmethod
    def from_special(cls, layout: TokenLayout, frame: int, name: str) -> Query:
        layout.check_frame(frame)
        return cls(frame, layout.special_index(name), f"frame {frame} {name}")

    @classmethod
    def from_model_pixel(cls, layout: TokenLayout, frame: int, x: float, y: float) -> Query:
        layout.check_frame(frame)
        row, col = layout.pixel_to_patch(x, y)
        return cls(frame, layout.patch_to_local(row, col), f"frame {frame} pixel ({x:g}, {y:g})")

    @classmethod
    def from_original_pixel(cls, layout: TokenLayout, frame: int, x: float, y: float, pixel_map: PixelMap) -> Query:
        """A pixel of the original photo, mapped through the preprocessing of that frame.

        Pixels that preprocessing cropped away raise UserError (never clamp).
        """
        layout.check_frame(frame)
        ow, oh = pixel_map.original_size
        if not (0 <= x < ow and 0 <= y < oh):
            raise UserError(
                f"pixel ({x:g}, {y:g}) is outside photo {frame} ({ow}x{oh}): valid x in [0, {ow}), y in [0, {oh})"
            )
        mx, my = pixel_map.original_to_model(x, y)
        h, w = layout.image_size
        if not (0 <= mx < w and 0 <= my < h):
            raise UserError(
                f"pixel ({x:g}, {y:g}) of photo {frame} was cropped away by preprocessing; "
                f"use --mode pad or a pixel nearer the centre"
            )
        row, col = layout.pixel_to_patch(mx, my)
        return cls(frame, layout.patch_to_local(row, col), f"frame {frame} pixel ({x:g}, {y:g})")

    def model_pixel(self, layout: TokenLayout) -> tuple[float, float] | None:
        """Centre of the query patch in model input pixels (None for special tokens)."""
        rc = self.patch(layout)
        return None if rc is None else layout.patch_center(*rc)

    def original_pixel(self, layout: TokenLayout, pixel_map: PixelMap) -> tuple[float, float] | None:
        """Centre of the query patch in the original photo (None for special tokens)."""
        p = self.model_pixel(layout)
        return None if p is None else pixel_map.model_to_original(*p)


# At most 18 digits: no index can be larger, and int() of thousands of digits raises ValueError.
_INT = r"\s*(-?\d{1,18})\s*"
_NUM = r"\s*(-?\d{1,18}(?:\.\d*)?)\s*"
QUERY_SYNTAX = (
    "FRAME:X,Y (pixel of the original photo), FRAME:pROW,COL or FRAME:patch=ROW,COL (patch), "
    "FRAME:camera / FRAME:register_R (special token), or a global token index N"
)


def parse_query(text: str, layout: TokenLayout, pixel_maps: Sequence[PixelMap] | None = None) -> Query:
    """Parse one query string (see QUERY_SYNTAX). Pixels refer to the original photo when
    ``pixel_maps`` are given, else to the model input image."""
    s = text.strip()
    if re.fullmatch(_INT, s):
        return Query.from_token(layout, int(s))
    m = re.fullmatch(_INT + r":(.*)", s)
    if not m:
        raise UserError(f"cannot parse query {text!r}: expected {QUERY_SYNTAX}")
    frame, rest = int(m.group(1)), m.group(2).strip()
    layout.check_frame(frame)
    pm = re.fullmatch(r"(?:p|patch=)" + _INT + "," + _INT, rest)
    if pm:
        return Query.from_patch(layout, frame, int(pm.group(1)), int(pm.group(2)))
    xy = re.fullmatch(_NUM + "," + _NUM, rest)
    if xy:
        x, y = float(xy.group(1)), float(xy.group(2))
        if pixel_maps is None:
            return Query.from_model_pixel(layout, frame, x, y)
        return Query.from_original_pixel(layout, frame, x, y, pixel_maps[frame])
    if re.fullmatch(r"[A-Za-z_]+\d*", rest):
        try:
            return Query.from_special(layout, frame, rest)
        except UserError as err:
            raise UserError(f"cannot parse query {text!r}: {err}; expected {QUERY_SYNTAX}") from None
    raise UserError(f"cannot parse query {text!r}: expected {QUERY_SYNTAX}")


def parse_index_list(text: str, count: int, what: str = "block") -> tuple[int, ...]:
    """Parse ``0-23``, ``0,12,23``, ``all`` or ``-1`` (last) into sorted unique indices < count."""
    s = text.strip().lower()
    if s in ("all", "*", ""):
        return tuple(range(count))
    out: set[int] = set()
    for part in s.split(","):
        part = part.strip()
        m = re.fullmatch(r"(-?\d{1,18})(?:\s*-\s*(\d{1,18}))?", part)
        if not m:
            raise UserError(f"cannot parse {what}s {text!r}: use e.g. 0-{count - 1}, 0,5,{count - 1} or all")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if lo < 0 and m.group(2) is None:
            lo = hi = count + lo
        if not (0 <= lo <= hi < count):
            raise UserError(f"{what}s {part!r} out of range: valid {what}s are 0..{count - 1}")
        out.update(range(lo, hi + 1))
    return tuple(sorted(out))
