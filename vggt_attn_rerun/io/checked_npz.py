"""Read ``.npz`` archives that may be hostile: headers first, data only once it is known to fit.

``numpy.load`` trusts a member's ``.npy`` header: ``read_array`` allocates the declared shape
before it reads a byte, so a 1.5 MB archive that declares 1.5 GB of rows allocates 1.5 GB, and a
declared shape can disagree with the data that follows. Here every member's header is parsed
alone (``numpy.lib.format``, header length capped by numpy at 10,000 bytes), its dtype must be a
plain numeric, bool or unicode dtype (no objects, no records: nothing that needs pickle), and the
bytes it declares must equal the bytes the zip directory says follow the header. Only then may a
caller read it, and only after checking the declared shapes and sizes it cares about.
"""

from __future__ import annotations

import math
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vggt_attn_rerun.errors import UserError

_PLAIN_KINDS = "biufcU"  # bool, ints, floats, complex, unicode: fixed size, no pickle

# The bound on what a file may make a reader allocate (read_bound): a zip bomb (kilobytes that
# declare gigabytes) is refused by its declared sizes, before anything is read.
MAX_TOTAL_BYTES = 4 << 30
SMALL_BYTES = 64 << 20  # below this, any compression ratio is fine
MAX_EXPANSION = 64  # above it, declared bytes per byte of file (float rows compress < 2x)


def read_bound(file_size: int) -> int:
    """Most array bytes a file of ``file_size`` bytes may declare: ``min(4 GiB, max(64 MiB, 64 x size))``."""
    return min(MAX_TOTAL_BYTES, max(SMALL_BYTES, MAX_EXPANSION * int(file_size)))


@dataclass(frozen=True)
class MemberHeader:
    """What a member's ``.npy`` header declares (nothing of its data has been read)."""

    name: str  # without ``.npy``
    shape: tuple[int, ...]
    dtype: np.dtype
    nbytes: int


class NpzDamaged(Exception):
    """The archive or one member's header is not a well-formed npz member (message: why)."""


def _header(z: zipfile.ZipFile, info: zipfile.ZipInfo) -> MemberHeader:
    name = info.filename.removesuffix(".npy")
    with z.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise NpzDamaged(f"member {name!r} has .npy version {version}: expected 1.0 or 2.0")
        header_len = f.tell()
    if dtype.kind not in _PLAIN_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise NpzDamaged(f"member {name!r} has dtype {dtype}: only numeric, bool and unicode arrays are read")
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes != info.file_size - header_len:
        raise NpzDamaged(
            f"member {name!r} declares {list(shape)} {dtype} ({nbytes} bytes) but holds "
            f"{info.file_size - header_len} bytes"
        )
    return MemberHeader(name, tuple(shape), dtype, nbytes)


class SafeNpz:
    """An npz archive opened for header-checked reading. Use as a context manager.

    ``header(name)`` parses one member's header (and reads no data); ``read(name)`` reads that
    member, whose declared size the caller has checked, and nothing else.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._zip = zipfile.ZipFile(self.path)
        except (OSError, zipfile.BadZipFile, ValueError, EOFError, NotImplementedError) as e:
            raise NpzDamaged(f"not a readable zip archive ({e})") from None
        self._infos = {i.filename.removesuffix(".npy"): i for i in self._zip.infolist() if i.filename.endswith(".npy")}
        #: bytes the archive's other entries (not ``.npy`` members) declare: never read, still counted
        self.other_bytes = sum(i.file_size for i in self._zip.infolist() if not i.filename.endswith(".npy"))
        self._headers: dict[str, MemberHeader] = {}

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self._infos)

    def header(self, name: str) -> MemberHeader:
        if name not in self._headers:
            if name not in self._infos:
                raise KeyError(name)
            try:
                self._headers[name] = _header(self._zip, self._infos[name])
            except (OSError, ValueError, EOFError, zipfile.BadZipFile, RuntimeError, NotImplementedError) as e:
                raise NpzDamaged(f"cannot read the header of member {name!r} ({e})") from None
        return self._headers[name]

    def read(self, name: str) -> np.ndarray:
        """The member's array, exactly its declared shape (its header must have been checked)."""
        head = self.header(name)
        try:
            with self._zip.open(self._infos[name]) as f:
                a = np.lib.format.read_array(f, allow_pickle=False)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, RuntimeError, NotImplementedError) as e:
            raise NpzDamaged(f"cannot read member {name!r} ({e})") from None
        if a.shape != head.shape or a.dtype != head.dtype:  # pragma: no cover - numpy re-reads the same header
            raise NpzDamaged(f"member {name!r} changed while it was read")
        return a

    def close(self) -> None:
        self._zip.close()

    def __enter__(self) -> SafeNpz:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_identity(path: str | Path, names: tuple[str, ...], max_chars: int = 64) -> tuple[str, ...] | None:
    """The unicode scalars ``names`` of an npz, or None when it is not an npz holding them as such.

    Cheap and safe on any file: it reads the zip directory and these members' headers, and their
    data only when each is a unicode scalar of at most ``max_chars`` characters.
    """
    try:
        with SafeNpz(path) as z:
            out = []
            for name in names:
                head = z.header(name)
                if head.dtype.kind != "U" or head.shape != () or head.nbytes > 4 * max_chars:
                    return None
                out.append(str(z.read(name)))
            return tuple(out)
    except (NpzDamaged, KeyError, OSError):
        return None


_LOCAL_HEADER = b"PK\x03\x04"


def first_member(path: str | Path, max_bytes: int = 4096) -> tuple[str, bytes] | None:
    """Name and first bytes (at most ``max_bytes``, decompressed) of an archive's first entry, read
    from its local header: works when the end of the file, and with it the zip directory, is
    lost. None when the file does not start with a zip entry."""
    try:
        with open(path, "rb") as f:
            head = f.read(30 + 0xFFFF * 2 + max_bytes)
    except OSError:
        return None
    if len(head) < 30 or not head.startswith(_LOCAL_HEADER):
        return None
    method = int.from_bytes(head[8:10], "little")
    name_len, extra_len = int.from_bytes(head[26:28], "little"), int.from_bytes(head[28:30], "little")
    name = head[30 : 30 + name_len].decode("utf-8", "replace")
    data = head[30 + name_len + extra_len :]
    if method == zipfile.ZIP_DEFLATED:
        try:
            data = zlib.decompressobj(-15).decompress(data, max_bytes)
        except zlib.error:
            data = b""
    elif method != zipfile.ZIP_STORED:
        data = b""
    return name, data[:max_bytes]


def check_header(head: MemberHeader, kinds: str, shape: tuple[int | None, ...], what: str) -> None:
    """Raise NpzDamaged unless ``head`` has a dtype kind in ``kinds`` and ``shape`` (None: any length)."""
    ok = head.dtype.kind in kinds and len(head.shape) == len(shape)
    ok = ok and all(want is None or want == got for want, got in zip(shape, head.shape, strict=False))
    if not ok:
        want = "[" + ", ".join("N" if s is None else str(s) for s in shape) + "]"
        raise NpzDamaged(
            f"{what} ({head.name!r}) is {list(head.shape)} {head.dtype}, expected {want} of kind {'/'.join(kinds)}"
        )


class CheckedNpz(SafeNpz):
    """SafeNpz whose problems are UserErrors naming the file (``what``: e.g. "run file x.npz")."""

    def __init__(self, path: str | Path, what: str) -> None:
        super().__init__(path)
        self.what = what

    def __enter__(self) -> CheckedNpz:
        return self

    def damaged(self, why: object) -> UserError:
        return UserError(f"{self.what} is damaged: {why}")

    def has(self, name: str) -> bool:
        return name in self.names

    def checked_header(self, name: str, kinds: str, shape: tuple[int | None, ...]) -> MemberHeader:
        """The header of ``name``, which must exist, be of a dtype kind in ``kinds`` and of ``shape``."""
        try:
            head = self.header(name)
            check_header(head, kinds, shape, name)
        except KeyError:
            raise self.damaged(f"member {name!r} is missing") from None
        except NpzDamaged as e:
            raise self.damaged(e) from None
        return head

    def read(self, name: str, kinds: str = _PLAIN_KINDS, shape: tuple[int | None, ...] | None = None) -> np.ndarray:
        """``name``'s array once its header matches ``kinds`` and ``shape`` (None: any shape)."""
        if shape is None:
            try:
                shape = tuple(None for _ in self.header(name).shape)
            except KeyError:
                raise self.damaged(f"member {name!r} is missing") from None
            except NpzDamaged as e:
                raise self.damaged(e) from None
        self.checked_header(name, kinds, shape)
        try:
            return super().read(name)
        except NpzDamaged as e:
            raise self.damaged(e) from None

    def ints(self, a: np.ndarray, what: str, low: int, high: int) -> list[int]:
        """The values of an integer array, each within ``low..high``."""
        values = [int(v) for v in a.reshape(-1)]
        bad = [v for v in values if not low <= v <= high]
        if bad:
            raise self.damaged(f"{what} holds {bad[0]}: valid are {low}..{high}")
        return values

    def check_budget(self, names: list[str], bound: int, weights: dict[str, int] | None = None,
                     hint: str = "", others: bool = False, extra: int = 0) -> None:  # fmt: skip
        """Refuse the file when the members ``names`` declare more than ``bound`` bytes in all
        (``weights``: a member's bytes count that many times; ``others``: the entries that are
        not ``.npy`` members count too; ``extra``: bytes that using them allocates on top).
        Reads headers only."""
        raw = self.other_bytes if others else 0
        total = raw + int(extra)
        for name in names:
            try:
                nbytes = self.header(name).nbytes
            except NpzDamaged as e:
                raise self.damaged(e) from None
            raw += nbytes
            total += nbytes * (weights or {}).get(name, 1)
        if total > bound:
            counted = f" ({total / 2**20:.1f} MiB with what using them allocates)" if total != raw else ""
            raise UserError(
                f"{self.what} declares {raw / 2**20:.1f} MiB of arrays{counted}, over the {bound / 2**20:.1f} MiB "
                f"allowed for a file of {self.path.stat().st_size} bytes (the larger of {SMALL_BYTES >> 20} MiB and "
                f"{MAX_EXPANSION}x the file size, at most {MAX_TOTAL_BYTES >> 30} GiB): refusing it"
                + (f"; {hint}" if hint else "")
            )
