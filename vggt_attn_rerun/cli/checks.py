"""Checks of the command line's own text, before anything is loaded: typed values or UserError.

What the flags mean to a run (images, queries against a layout, output paths, the viewer) is
checked by ``api.run``; here only what is the command line's own: a queries file, ``RxC``,
numbers that must be finite, a ``--model`` file that must look like a checkpoint.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import click

from vggt_attn_rerun.core.loading import SPEC_SYNTAX, check_model_spec
from vggt_attn_rerun.core.tokens import QUERY_SYNTAX
from vggt_attn_rerun.errors import UserError
from vggt_attn_rerun.viz.sinks import DEFAULT_URL

# More queries than anyone types; a grid's cells are also bounded by the patch grid later.
_MAX_DIGITS = 6
# A queries file is read whole: bounded, so that /dev/zero or a wrong file fails at once. 16 MiB
# holds about a million queries; a query is a few characters, a line with its comment a few dozen.
MAX_QUERIES_FILE_BYTES = 16 << 20
MAX_QUERY_LINE_CHARS = 1000
_MAX_QUERY_CHARS = 100


def read_queries_file(path: str | Path) -> list[tuple[str, str]]:
    """Queries of a ``--queries-file``: (text, "--queries-file PATH line N") per query line.

    One query per line in the --query syntax; ``#`` starts a comment (whole line or the end of
    one); blank lines are skipped. UTF-8 with or without a byte-order mark, any line ends
    (LF, CRLF, CR). The syntax of each line is checked when the layout is known.
    """
    p = Path(path).expanduser()
    try:
        with open(p, "rb") as f:  # not read_text: /dev/zero or a FIFO never ends
            data = f.read(MAX_QUERIES_FILE_BYTES + 1)
        if len(data) > MAX_QUERIES_FILE_BYTES:
            raise UserError(f"--queries-file {path}: larger than {MAX_QUERIES_FILE_BYTES >> 20} MiB; "
                            "give a text file of queries, one per line")  # fmt: skip
        text = data.decode("utf-8-sig")  # -sig: a BOM (Windows editors) is not text
    except FileNotFoundError:
        raise UserError(f"--queries-file {path}: file does not exist") from None
    except IsADirectoryError:
        raise UserError(f"--queries-file {path}: is a folder, give a text file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--queries-file {path}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        where = f"--queries-file {path} line {n}"
        if len(line) > MAX_QUERY_LINE_CHARS:  # never echoed: it may be megabytes
            raise UserError(f"{where}: {len(line)} characters, more than {MAX_QUERY_LINE_CHARS}; one query per line")
        query = line.split("#", 1)[0].strip()
        if len(query) > _MAX_QUERY_CHARS:
            raise UserError(f"{where}: {len(query)} characters is no query; expected {QUERY_SYNTAX}")
        if query:
            out.append((query, where))
    if not out:
        raise UserError(f"--queries-file {path}: no queries in it (one per line, # starts a comment)")
    return out


def parse_query_grid(text: str | None, frame: int | None) -> tuple[int, int, int] | None:
    """``--query-grid RxC`` and ``--frame F`` -> (frame, rows, cols); the frame and the patch grid
    are checked against the images and the model later."""
    if text is None:
        if frame is not None:
            raise UserError(f"--frame {frame}: --frame picks the view of --query-grid; add --query-grid RxC")
        return None
    n = rf"(\d{{1,{_MAX_DIGITS}}})"
    m = re.fullmatch(rf"\s*{n}\s*[xX*]\s*{n}\s*", text)
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise UserError(f"--query-grid {text}: expected ROWSxCOLS with both >= 1, e.g. 8x8")
    return 0 if frame is None else frame, int(m.group(1)), int(m.group(2))


def check_model_file(spec: str) -> None:
    """A --model path must exist, and a file must look like a checkpoint; reading 4 GB to find
    out it is not is slow."""
    check_model_spec(spec)
    path = Path(spec).expanduser()
    if not path.is_file():
        return
    with open(path, "rb") as f:
        head = f.read(16)
    size = path.stat().st_size
    is_zip = head[:4] == b"PK\x03\x04"  # torch.save since 1.6
    is_pickle = head[:1] == b"\x80"  # legacy torch.save / pickle protocol 2+
    header_len = int.from_bytes(head[:8], "little") if len(head) >= 9 else 0
    is_safetensors = head[8:9] == b"{" and 0 < header_len <= size - 8
    if not (is_zip or is_pickle or is_safetensors):
        raise UserError(
            f"--model {spec} is not a checkpoint (neither a torch .pt/.pth file nor .safetensors); "
            f"valid are {SPEC_SYNTAX}"
        )


def split_connect(images: tuple[str, ...], connect: str | None) -> tuple[tuple[str, ...], str | None]:
    """``--connect a.jpg b.jpg``: the optional URL swallowed the first image; give it back."""
    if connect is not None and "://" not in connect:
        return (connect, *images), DEFAULT_URL
    return images, connect


class FiniteFloat(click.ParamType):
    """A float that is a number (not nan or inf), optionally within [low, high]."""

    name = "number"

    def __init__(self, low: float | None = None, high: float | None = None) -> None:
        self.low, self.high = low, high

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        if (self.low is not None and number < self.low) or (self.high is not None and number > self.high):
            self.fail(f"{value!r} is not in the range {self.low:g} to {self.high:g}", param, ctx)
        return number
