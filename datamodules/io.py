"""I/O helpers of the data layer.

* :func:`read_tsv` -- read a tab-separated table with required columns and clear errors.
* :class:`NpyRowWriter` -- write a ``.npy`` file row block by row block with plain file writes
  (no writable memmap, so dirty pages never inflate the writer's RSS).
* :class:`RowAccumulator` -- a float64 on-disk accumulator of rows (sums + counts), used to
  average repeated trials without holding them in RAM.
* :class:`MmapRows` -- read rows of a ``.npy`` file through an ``mmap.mmap`` owned by this
  object, dropping the mapped pages (``madvise(MADV_DONTNEED)``) every so often so the
  reader's RSS stays bounded however large the file is; pickles without the mapping so
  DataLoader workers reopen it lazily.
* :func:`output_is_current` -- whether an output folder or file was already built from the same
  inputs and parameters.

Bad input is a :class:`litbrain.errors.DataError`; outputs are written with
:mod:`litbrain.utils.io` (temporary name, then rename).
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from litbrain.errors import DataError
from litbrain.utils.io import fmt_list as _fmt_list

__all__ = [
    "DataError",
    "read_tsv",
    "NpyRowWriter",
    "RowAccumulator",
    "MmapRows",
    "read_npy_header",
]


# ----------------------------------------------------------------------------- TSV
def read_tsv(path: str | os.PathLike, required: dict[str, type], what: str = "") -> "Any":
    """Read a TSV file into a pandas DataFrame, checking required columns and their types.

    ``required`` maps column name -> python type (``str``, ``int``, ``float``); string columns
    are read as ``str`` (so ids such as ``"007"`` keep their zeros). Raises :class:`DataError`
    naming the file, the column and the fix.
    """
    import pandas as pd

    path = Path(path)
    label = f"{path}" + (f" ({what})" if what else "")
    if not path.is_file():
        raise DataError(f"{label}: file not found; fix: create it with tab-separated columns {list(required)}")
    dtypes = {k: str for k, t in required.items() if t is str}
    try:
        df = pd.read_csv(path, sep="\t", dtype=dtypes, keep_default_na=False, na_values=[])
    except Exception as exc:  # pandas raises several types for malformed files
        raise DataError(f"{label}: cannot be parsed as a tab-separated table ({exc}); fix: write it as TSV "
                        f"with a header row and columns {list(required)}") from exc
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(f"{label}: missing column(s) {missing} (found {list(df.columns)}); "
                        f"fix: add them (tab-separated, header row)")
    for col, typ in required.items():
        if typ is str:
            df[col] = df[col].astype(str)
            empty = np.flatnonzero(df[col].str.len().to_numpy() == 0)
            if empty.size:
                raise DataError(f"{label}: column '{col}' is empty on row(s) {_fmt_list(empty + 2)} "
                                f"(file line numbers); fix: fill in every value")
            continue
        try:
            values = pd.to_numeric(df[col], errors="raise")
        except Exception as exc:
            raise DataError(f"{label}: column '{col}' must be {typ.__name__} ({exc}); fix: correct the values") from exc
        if typ is int:
            arr = values.to_numpy()
            if arr.dtype.kind == "f":
                if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
                    bad = np.flatnonzero(~np.isfinite(arr) | (arr != np.round(arr)))
                    raise DataError(f"{label}: column '{col}' must hold integers; bad value(s) on file line(s) "
                                    f"{_fmt_list(bad + 2)}; fix: correct them")
            values = values.astype(np.int64)
        else:
            values = values.astype(np.float64)
        df[col] = values
    return df


# ----------------------------------------------------------------------------- npy writing / reading
def read_npy_header(fp) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """Read the header of an open ``.npy`` file; return (shape, fortran_order, dtype, data offset)."""
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
    else:  # pragma: no cover - numpy only writes 1.0/2.0/3.0
        shape, fortran, dtype = np.lib.format._read_array_header(fp, version)
    return tuple(shape), fortran, dtype, fp.tell()


class NpyRowWriter:
    """Write a C-ordered ``.npy`` array of known shape with plain ``write`` calls.

    ``append(block)`` writes rows sequentially; ``write_rows_at(start, block)`` writes at a row
    offset (``os.pwrite``), for scattered output. ``close()`` checks every row was written
    when only sequential appends were used.
    """

    def __init__(self, path: str | os.PathLike, shape: Sequence[int], dtype: Any):
        self.path = Path(path)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self._f = open(self.path, "wb")
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": self.shape}
        np.lib.format.write_array_header_2_0(self._f, header) if self._needs_v2(header) else \
            np.lib.format.write_array_header_1_0(self._f, header)
        self.offset = self._f.tell()
        self.rows_written = 0
        self._scattered = False
        total = self.offset + self.row_bytes * self.shape[0]
        self._f.truncate(total)  # sparse file of the final size: pwrite anywhere is valid

    @staticmethod
    def _needs_v2(header: dict) -> bool:
        return len(repr(header)) > 65000

    def append(self, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, dtype=self.dtype)
        n = block.shape[0] if block.ndim else 1
        if self.rows_written + n > self.shape[0]:
            raise ValueError(f"{self.path}: writing past the declared {self.shape[0]} rows")
        self._f.seek(self.offset + self.rows_written * self.row_bytes)
        self._f.write(block.tobytes())
        self.rows_written += n

    def write_rows_at(self, start: int, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, dtype=self.dtype)
        self._f.flush()
        os.pwrite(self._f.fileno(), block.tobytes(), self.offset + int(start) * self.row_bytes)
        self._scattered = True

    def close(self) -> None:
        if self._f.closed:
            return
        self._f.close()
        if not self._scattered and self.rows_written != self.shape[0]:
            raise ValueError(f"{self.path}: {self.rows_written} rows written, {self.shape[0]} declared")

    def __enter__(self) -> "NpyRowWriter":
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.close()
        else:
            self._f.close()


class RowAccumulator:
    """Sum rows into an on-disk float64 table (``pread``/``pwrite``), then read out means.

    Memory use is O(row width), independent of the number of rows or additions.
    """

    def __init__(self, path: str | os.PathLike, n_rows: int, width: int):
        self.path = Path(path)
        self.n_rows, self.width = int(n_rows), int(width)
        self.row_bytes = self.width * 8
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        os.ftruncate(self._fd, self.n_rows * self.row_bytes)  # zeros
        self.counts = np.zeros(self.n_rows, dtype=np.int64)

    def add(self, rows: np.ndarray, values: np.ndarray) -> None:
        """Add ``values[i]`` to row ``rows[i]`` (rows may repeat)."""
        for r, v in zip(np.asarray(rows, dtype=np.int64), np.asarray(values)):
            off = int(r) * self.row_bytes
            cur = np.frombuffer(os.pread(self._fd, self.row_bytes, off), dtype=np.float64)
            os.pwrite(self._fd, (cur + v).tobytes(), off)
            self.counts[r] += 1

    def iter_means(self, chunk_rows: int = 256) -> Iterator[np.ndarray]:
        """Yield the means of consecutive row blocks (float64)."""
        for a in range(0, self.n_rows, chunk_rows):
            b = min(a + chunk_rows, self.n_rows)
            buf = os.pread(self._fd, (b - a) * self.row_bytes, a * self.row_bytes)
            sums = np.frombuffer(buf, dtype=np.float64).reshape(b - a, self.width)
            yield sums / np.maximum(self.counts[a:b, None], 1)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


class MmapRows:
    """Rows of a ``.npy`` file read through a private ``mmap.mmap`` with bounded RSS.

    ``take(sorted_rows)`` returns a copy of those rows (any integer index array; sorted
    indices read the file sequentially). After ``release_every`` bytes have been touched the
    mapping's pages are dropped with ``madvise(MADV_DONTNEED)`` -- the data stay in the page
    cache, but no longer count toward this process's RSS.
    """

    # Default: drop the pages after every read. Page faults map more than the rows touched
    # (fault-around), so a byte budget let RSS grow with the file (1.27x at 10x the data).
    def __init__(self, path: str | os.PathLike, release_every: int = 1):
        self.path = str(path)
        self.release_every = int(release_every)
        with open(self.path, "rb") as f:
            shape, fortran, dtype, offset = read_npy_header(f)
        if fortran:
            raise DataError(f"{self.path}: Fortran-ordered array; fix: re-run prepare")
        self.shape, self.dtype, self.offset = shape, dtype, offset
        self._mm: mmap.mmap | None = None
        self._arr: np.ndarray | None = None
        self._touched = 0

    def __len__(self) -> int:
        return self.shape[0]

    def _open(self) -> np.ndarray:
        if self._arr is None:
            n = int(np.prod(self.shape, dtype=np.int64))
            if n == 0:
                self._arr = np.empty(self.shape, dtype=self.dtype)
                return self._arr
            with open(self.path, "rb") as f:
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            self._arr = np.frombuffer(self._mm, dtype=self.dtype, count=n, offset=self.offset).reshape(self.shape)
        return self._arr

    def take(self, rows: np.ndarray) -> np.ndarray:
        arr = self._open()
        out = arr[rows]  # fancy indexing copies
        self._touched += out.nbytes
        if self._touched >= self.release_every:
            self.release()
        return out

    def release(self) -> None:
        """Drop this process's mapped pages (RSS) without closing the mapping."""
        self._touched = 0
        if self._mm is not None and hasattr(self._mm, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            with contextlib.suppress(OSError, ValueError):
                self._mm.madvise(mmap.MADV_DONTNEED)

    def close(self) -> None:
        self._arr = None
        if self._mm is not None:
            with contextlib.suppress(BufferError):  # a view still alive: let GC close it
                self._mm.close()
            self._mm = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_mm"] = None
        state["_arr"] = None
        state["_touched"] = 0
        return state

    def __del__(self) -> None:  # pragma: no cover - best effort
        with contextlib.suppress(Exception):
            self.close()


def read_manifest_json(data_dir: str | os.PathLike, what: str, prepare: str,
                       accept: Callable[[dict], bool]) -> dict:
    """``manifest.json`` of a prepared folder, checked by ``accept``; every failure is one DataError.

    ``what`` names the kind of folder ("prepared fMRI dataset"), ``prepare`` the verb that writes it.
    """
    d = Path(data_dir)
    if not d.is_dir():
        raise DataError(f"{d}: {what} folder not found; fix: run `{prepare}` to create it, or correct data_dir")
    mpath = d / "manifest.json"
    if not mpath.is_file():
        raise DataError(f"{mpath}: not found, {d} is not a {what}; fix: run `{prepare}` with this folder as out_dir")
    try:
        m = json.loads(mpath.read_text())
    except Exception as exc:
        raise DataError(f"{mpath}: unreadable ({exc}); fix: re-run `{prepare}` with --overwrite true") from None
    if not isinstance(m, dict) or not accept(m):
        got = {k: m.get(k) for k in ("kind", "format_version")} if isinstance(m, dict) else type(m).__name__
        raise DataError(f"{mpath}: not a {what} of this litbrain version ({got}); fix: re-run `{prepare}` "
                        f"with --overwrite true")
    return m


def synthetic_is_current(out: Path, params: dict, record: str, overwrite: bool) -> bool:
    """Whether ``out`` already holds the synthetic dataset that ``params`` would write.

    ``record`` is the generator's JSON file inside ``out`` whose ``"parameters"`` are compared. True:
    nothing to do (re-running a demo is cheap); False: write it (absent, or ``overwrite``). A
    different dataset at ``out`` is refused, so one is never replaced by accident.
    """
    if not out.exists() or overwrite:
        return False
    try:
        existing = json.loads((out / record).read_text()).get("parameters")
    except (OSError, ValueError):
        existing = None
    if existing == params:
        return True
    raise DataError(f"{out}: already exists with other parameters; fix: pass --overwrite true (overwrite=True in "
                    f"Python) or choose another directory")


def content_fingerprint(files: Sequence[tuple[str, Path]], params: dict) -> str:
    """sha256 of the parameters and of every ``(name, file)``'s content, streamed in 1 MiB blocks.

    Outputs record it: the same bytes under the same names give the same fingerprint wherever they
    were copied and whatever their modification times; one changed byte gives another. A missing
    file hashes as missing (the validation that follows names it).
    """
    import hashlib

    h = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode())
    for name, path in files:
        h.update(b"\0" + str(name).encode() + b"\0")
        try:
            with open(path, "rb") as f:
                while block := f.read(1 << 20):
                    h.update(block)
        except FileNotFoundError:
            h.update(b"<missing>")
    return h.hexdigest()[:32]


def output_is_current(out: Path, fingerprint: str, overwrite: bool, read_meta: Callable[[Path], dict | None],
                      made: str = "prepared", foreign: str = "is not a prepared dataset",
                      field: str = "out_dir") -> bool:
    """True when ``out`` already holds an output built from the same inputs and parameters.

    ``read_meta(out)`` returns the stored metadata (with its ``fingerprint``) or None when ``out``
    is not one of ours. Otherwise an existing ``out`` is refused unless ``overwrite`` (one clear
    DataError naming ``field``); the callers then rebuild it atomically. Shared by the fMRI and
    sEEG prepare steps and the embedding caches.
    """
    if not out.exists():
        return False
    meta = read_meta(out)
    if meta is not None and meta.get("fingerprint") == fingerprint:
        return True
    if not overwrite:
        what = f"was {made} from other inputs or parameters" if meta else f"exists and {foreign}"
        raise DataError(f"{out}: {what}; fix: pass --overwrite true (overwrite=True in Python) to replace it, "
                        f"or choose another {field}")
    return False


def _read_manifest(out: Path) -> dict | None:
    try:
        return json.loads((out / "manifest.json").read_text())
    except Exception:
        return None


def prepared_is_current(out: Path, fingerprint: str, overwrite: bool) -> bool:
    """:func:`output_is_current` for a prepared dataset folder (its ``manifest.json``)."""
    return output_is_current(out, fingerprint, overwrite, _read_manifest)
