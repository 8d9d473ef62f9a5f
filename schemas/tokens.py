"""A micro-batch's token ids in one compact binary value, so that the ids the producer computed
to validate and pack the items are the ids the worker runs: no text is tokenized twice.

Layout (little-endian): b"BT" magic, a version byte, the id width in bytes (2 or 4), the row
count (uint32), each row's length (uint32 × rows), then every row's ids back to back. Rows are
the micro-batch's texts in item order, special tokens included, truncated as the item asked.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Sequence

import numpy as np
import torch

_MAGIC = b"BT\x01"
_HEADER = struct.Struct("<3sBI")


class BadTokens(ValueError):
    """A stored token value that this format cannot read."""


def from_rows(rows: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ids → (lengths, flat ids), the form the worker runs."""
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    ids = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64,
                      count=int(lengths.sum()))
    return lengths, ids


def pack_ids(rows: Sequence[Sequence[int]]) -> bytes:
    lengths, flat = from_rows(rows)
    width = 2 if flat.size == 0 or int(flat.max()) < 1 << 16 else 4
    ids = flat.astype("<u2" if width == 2 else "<u4")
    return (_HEADER.pack(_MAGIC, width, len(rows)) + lengths.astype("<u4").tobytes()
            + ids.tobytes())


def unpack_lengths_and_ids(blob: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(lengths (rows,), ids (sum of lengths,)) as read-only numpy views of `blob`."""
    if len(blob) < _HEADER.size:
        raise BadTokens(f"token value of {len(blob)} bytes is shorter than its header")
    magic, width, rows = _HEADER.unpack_from(blob)
    if magic != _MAGIC or width not in (2, 4):
        raise BadTokens(f"not a token value (header {blob[:_HEADER.size]!r})")
    lengths = np.frombuffer(blob, dtype="<u4", count=rows, offset=_HEADER.size)
    start = _HEADER.size + 4 * rows
    ids = np.frombuffer(blob, dtype="<u2" if width == 2 else "<u4", offset=start)
    if ids.size != int(lengths.sum()):
        raise BadTokens(f"token value holds {ids.size} ids for lengths summing to "
                        f"{int(lengths.sum())}")
    return lengths, ids


def padded(lengths: np.ndarray, ids: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) tensors of shape (rows, longest), zero-padded, filled without a Python loop
    per row: the mask is `column < length`, and the flat ids land in its true cells in
    row-major order, which is the rows' order."""
    width = int(lengths.max()) if lengths.size else 0
    mask = np.arange(width)[None, :] < lengths[:, None]
    out = np.zeros(mask.shape, dtype=np.int64)
    out[mask] = ids
    return torch.from_numpy(out), torch.from_numpy(mask.astype(np.int64))


def select_rows(lengths: np.ndarray, ids: np.ndarray, rows: Sequence[int]
                ) -> tuple[np.ndarray, np.ndarray]:
    """The (lengths, ids) of a subset of rows, in the order given (a run of consecutive rows,
    the usual case, is two slices)."""
    starts = np.concatenate(([0], np.cumsum(lengths, dtype=np.int64)))
    if len(rows) and list(rows) == list(range(rows[0], rows[0] + len(rows))):
        first, end = rows[0], rows[0] + len(rows)
        return lengths[first:end], ids[starts[first]:starts[end]]
    picked = np.asarray(rows, dtype=np.int64)
    sub = lengths[picked]
    if not len(picked):
        return sub, ids[:0]
    return sub, np.concatenate([ids[starts[r]:starts[r] + lengths[r]] for r in picked])
