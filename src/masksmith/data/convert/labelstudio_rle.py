"""Label Studio's brush RLE: the run-length bit stream its editor stores a brush mask in.

The stream (thi.ng's rle-pack, which Label Studio's editor uses) is read most significant bit first:

* 32 bits: how many values follow (width x height x 4: the mask is an RGBA image, row by row);
* 5 bits: the bits per value, minus 1;
* four times 4 bits: the four bit widths a group's count may use, each minus 1;
* then groups until that many values are out: 1 bit (1 = a run of one repeated value, 0 = literal
  values), 2 bits choosing one of the four count widths, the count minus 1 in that width, and then one
  value (a run) or `count` values (literals).

Label Studio's own converters take the alpha channel as the mask, a pixel being painted when it is
not 0; :func:`decode_brush` does the same.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["decode_brush", "decode_rle"]


class _Bits:
    """Most-significant-bit-first reads from a byte string; ValueError when it runs out."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.total = len(data) * 8

    def _need(self, bits: int) -> None:
        if self.pos + bits > self.total:
            raise ValueError(f"the RLE data ends early (bit {self.pos + bits} of {self.total} needed)")

    def read(self, bits: int) -> int:
        self._need(bits)
        end = self.pos + bits
        first, last = self.pos // 8, (end + 7) // 8
        chunk = int.from_bytes(self.data[first:last], "big")
        self.pos = end
        return (chunk >> (last * 8 - end)) & ((1 << bits) - 1)

    def read_many(self, count: int, bits: int) -> np.ndarray:
        """`count` values of `bits` bits each, as uint64."""
        self._need(count * bits)
        first, end = self.pos // 8, self.pos + count * bits
        raw = np.frombuffer(self.data, dtype=np.uint8, count=(end + 7) // 8 - first, offset=first)
        stream = np.unpackbits(raw)[self.pos - first * 8:end - first * 8].reshape(count, bits)
        self.pos = end
        weights = np.left_shift(np.uint64(1), np.arange(bits - 1, -1, -1, dtype=np.uint64))
        return stream.astype(np.uint64) @ weights


def decode_rle(data: bytes | Sequence[int], expected: int | None = None) -> np.ndarray:
    """The values a brush RLE holds, as a 1-D array (ValueError when it is malformed).

    `expected`, when given, is the number of values the stream must declare; it is checked before
    anything is allocated, so a stream claiming billions of values costs nothing.
    """
    if not isinstance(data, bytes):
        values = np.asarray(data)
        if values.ndim != 1 or (values.size and (values.dtype.kind not in "iu" or values.min() < 0
                                                 or values.max() > 255)):
            raise ValueError("the RLE must be a list of byte values 0..255")
        data = values.astype(np.uint8).tobytes()
    bits = _Bits(data)
    count = bits.read(32)
    if expected is not None and count != expected:
        raise ValueError(f"the RLE holds {count} values but the image needs {expected} (width x height x 4)")
    word = bits.read(5) + 1
    sizes = [bits.read(4) + 1 for _ in range(4)]
    out = np.zeros(count, dtype=np.uint8 if word <= 8 else np.uint16 if word <= 16 else np.uint32)
    i = 0
    while i < count:
        repeated = bits.read(1)
        stop = i + 1 + bits.read(sizes[bits.read(2)])
        if stop > count:
            raise ValueError(f"a group runs past the declared {count} values")
        if repeated:
            out[i:stop] = bits.read(word)
        else:
            out[i:stop] = bits.read_many(stop - i, word)
        i = stop
    return out


def decode_brush(data: bytes | Sequence[int], height: int, width: int) -> np.ndarray:
    """A brush RLE as an HxW bool mask: the alpha channel of its RGBA values, painted where not 0."""
    values = decode_rle(data, expected=height * width * 4)
    return values.reshape(height, width, 4)[:, :, 3] != 0
