"""Typed queries after a run: the terminal's stand-in for clicks in the native viewer.

The native viewer of Rerun 0.41 does not report its selection to Python
(``rerun.experimental.ViewerClient`` has no selection call or event stream), so the CLI cannot
listen for clicks. ``prompt_queries`` reads typed queries instead (``1:120,80``, read off the
viewer's hover) and answers each from the session's q/k cache: no forward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from vggt_attn_rerun.core.tokens import TokenLayout, parse_query
from vggt_attn_rerun.errors import UserError
from vggt_attn_rerun.interactive.session import AddedQuery, PixelSpace, QuerySession, check_pixel_space

QUIT_WORDS = ("q", "quit", "exit")


def print_line(text: str) -> None:
    print(text, flush=True)


def describe(added: AddedQuery, layout: TokenLayout) -> str:
    """One line on an added query: its token and the time its rows and its logging took."""
    q = added.query
    rc = q.patch(layout)
    where = f"patch (row {rc[0]}, col {rc[1]})" if rc is not None else layout.special_names[q.local]
    return (
        f"q{added.index}: frame {q.frame} {where}: rows {added.rows_seconds * 1e3:.0f} ms "
        f"(no forward pass), logged in {added.log_seconds * 1e3:.0f} ms"
    )


def prompt_queries(
    session: QuerySession,
    lines: Iterable[str] | None = None,
    write: Callable[[str], None] = print_line,
    space: PixelSpace = "model",
) -> list[int]:
    """Read typed queries (tokens.QUERY_SYNTAX, e.g. ``1:120,80``) and add each to the session.

    ``space``: ``model`` (default), pixels of the logged images as the viewer's hover shows them;
    ``original``: pixels of the original photos, as ``--query``. ``lines``: an iterable of lines
    (default: ``input()`` until EOF); an empty line is skipped, ``q``/``quit``/``exit``, EOF or
    Ctrl-C stop. Returns the indices added (an already known token gives its index again).
    """
    pixel_maps = session.images.transforms if check_pixel_space(space) == "original" else None
    source = iter(lines) if lines is not None else _input_lines()
    added: list[int] = []
    while True:
        try:
            text = next(source).strip()
        except (StopIteration, KeyboardInterrupt):
            break
        if not text:
            continue
        if text.lower() in QUIT_WORDS:
            break
        try:
            query = parse_query(text, session.layout, pixel_maps)
            before = len(session.added)
            index = session.add_query(query)
        except UserError as err:
            write(f"not added: {err}")
            continue
        session.rec.flush()
        added.append(index)
        if len(session.added) > before:
            write(describe(session.added[-1], session.layout))
        else:
            write(f"q{index} already shows this token")
    return added


def _input_lines() -> Iterator[str]:
    while True:
        try:
            yield input("new query (FRAME:X,Y | FRAME:pROW,COL | FRAME:camera | q to quit)> ")
        except EOFError:
            return
