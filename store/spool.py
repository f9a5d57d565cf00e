"""A durable, size-bounded, append-only spool of line-protocol batches.

Records are appended to segment files ``seg-<n>.lp`` and fsynced before ``append``
returns. Each record is a 16-byte header — magic, payload length, CRC-32 of the payload,
number of points — followed by the payload. The delivered position is kept in ``ack``
(``<segment> <offset>``), replaced atomically (write, fsync, rename, fsync directory)
after every acknowledged delivery; fully delivered segments are deleted.

After a crash, ``open`` scans from the delivered position and cuts a torn tail (a record
whose header or CRC does not check out) off the last segment: a record is either wholly
in the spool or not at all, so what ``append`` acknowledged is never lost and what it did
not acknowledge never half-arrives. A batch delivered just before a crash, whose ``ack``
was not yet written, is delivered again: InfluxDB overwrites the identical points.

When pending bytes would exceed ``max_bytes`` the new record is refused (``append``
returns False) and the caller counts and reports the drop: the oldest data is kept
because it is what the outage was about.
"""

from __future__ import annotations

import fcntl
import os
import struct
import threading
import zlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from models.errors import StoreError
from models.files import open_private, private_dir

_HEADER = struct.Struct("<IIII")  # magic, length, crc32, points
_MAGIC = 0x31504C50  # "PLP1"
SEGMENT_BYTES = 16 << 20
_CACHE_BYTES = 64 << 20


@dataclass(frozen=True, slots=True)
class Record:
    """Where one spooled batch lives."""

    segment: int
    offset: int  # of the header
    length: int  # of the payload
    points: int

    @property
    def end(self) -> int:
        """Offset just past the record."""
        return self.offset + _HEADER.size + self.length


class Spool:
    """Append batches durably; hand them out in order; forget them once acknowledged."""

    def __init__(self, directory: Path, max_bytes: int = 1 << 30, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.dir = Path(directory)
        self.max_bytes = int(max_bytes)
        self.segment_bytes = int(segment_bytes)
        try:
            private_dir(self.dir)  # spooled telemetry is the site's business: 0700 / 0600 (models/files.py)
            self._lockf = open_private(self.dir / "lock", "a")
        except OSError as exc:
            raise StoreError(f"spool {self.dir}: {exc}") from exc
        try:
            fcntl.flock(self._lockf, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lockf.close()
            raise StoreError(f"spool {self.dir} is in use by another process") from None
        self._lock = threading.Lock()
        self._records: deque[Record] = deque()
        # Payloads appended by this process, kept until delivered (up to _CACHE_BYTES), so
        # the sender does not read back from disk what it was just handed.
        self._cache: dict[tuple[int, int], bytes] = {}
        self._cache_bytes = 0
        self.pending_bytes = 0
        self.pending_points = 0
        self._recover()
        # Appends after a restart go to a fresh segment, so the ``ack`` offset only ever
        # refers to a segment that no longer grows.
        self._seg = max([*self._segments(), self._ack[0]]) + 1
        self._fh = open_private(self.dir / self._name(self._seg), "ab")
        self._size = 0

    @staticmethod
    def _name(seg: int) -> str:
        return f"seg-{seg:012d}.lp"

    def _segments(self) -> list[int]:
        return sorted(int(p.stem[4:]) for p in self.dir.glob("seg-*.lp"))

    def _recover(self) -> None:
        ack_path = self.dir / "ack"
        self._ack = (0, 0)
        if ack_path.exists():
            seg, off = ack_path.read_text().split()
            self._ack = (int(seg), int(off))
        segs = [s for s in self._segments() if s >= self._ack[0]]
        for s in self._segments():
            if s < self._ack[0]:
                (self.dir / self._name(s)).unlink()
        for s in segs:
            path = self.dir / self._name(s)
            data = path.read_bytes()
            pos = self._ack[1] if s == self._ack[0] else 0
            good = pos
            while pos + _HEADER.size <= len(data):
                magic, length, crc, points = _HEADER.unpack_from(data, pos)
                body = data[pos + _HEADER.size: pos + _HEADER.size + length]
                if magic != _MAGIC or len(body) != length or zlib.crc32(body) != crc:
                    break
                self._records.append(Record(s, pos, length, points))
                self.pending_bytes += _HEADER.size + length
                self.pending_points += points
                pos += _HEADER.size + length
                good = pos
            if good < len(data):
                # A torn tail: the append that wrote it never returned, so nothing is lost.
                with path.open("r+b") as fh:
                    fh.truncate(max(good, self._ack[1] if s == self._ack[0] else 0))
                    fh.flush()
                    os.fsync(fh.fileno())

    def append(self, payload: bytes, points: int) -> bool:
        """Append one batch and fsync it; False (nothing written) if the bound would be exceeded."""
        rec_bytes = _HEADER.size + len(payload)
        with self._lock:
            if self.pending_bytes + rec_bytes > self.max_bytes:
                return False
            if self._size > 0 and self._size + rec_bytes > self.segment_bytes:
                self._fh.close()
                self._seg += 1
                self._fh = open_private(self.dir / self._name(self._seg), "ab")
                self._size = 0
                self._fsync_dir()
            header = _HEADER.pack(_MAGIC, len(payload), zlib.crc32(payload), points)
            try:
                self._fh.write(header + payload)
                self._fh.flush()
                os.fsync(self._fh.fileno())
            except OSError as exc:
                raise StoreError(f"spool {self.dir}: {exc}") from exc
            self._records.append(Record(self._seg, self._size, len(payload), points))
            if self._cache_bytes + len(payload) <= _CACHE_BYTES:
                self._cache[(self._seg, self._size)] = payload
                self._cache_bytes += len(payload)
            self._size += rec_bytes
            self.pending_bytes += rec_bytes
            self.pending_points += points
            return True

    def peek(self, max_points: int) -> list[Record]:
        """The oldest pending records, at least one, up to ``max_points`` points in all."""
        with self._lock:
            out: list[Record] = []
            total = 0
            for r in self._records:
                if out and total + r.points > max_points:
                    break
                out.append(r)
                total += r.points
            return out

    def read(self, rec: Record) -> bytes:
        """The payload of ``rec``."""
        with self._lock:
            cached = self._cache.get((rec.segment, rec.offset))
        if cached is not None:
            return cached
        with (self.dir / self._name(rec.segment)).open("rb") as fh:
            fh.seek(rec.offset + _HEADER.size)
            return fh.read(rec.length)

    def ack(self, upto: Record) -> None:
        """Mark every record up to and including ``upto`` delivered."""
        with self._lock:
            while self._records:
                r = self._records[0]
                if (r.segment, r.offset) > (upto.segment, upto.offset):
                    break
                self._records.popleft()
                if self._cache.pop((r.segment, r.offset), None) is not None:
                    self._cache_bytes -= r.length
                self.pending_bytes -= _HEADER.size + r.length
                self.pending_points -= r.points
            self._ack = (upto.segment, upto.end)
            tmp = self.dir / "ack.tmp"
            with open_private(tmp, "w") as fh:
                fh.write(f"{upto.segment} {upto.end}\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.dir / "ack")
            self._fsync_dir()
            for s in self._segments():
                if s < upto.segment or (s == upto.segment and s != self._seg and not self._records):
                    (self.dir / self._name(s)).unlink()

    def _fsync_dir(self) -> None:
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def __len__(self) -> int:
        return len(self._records)

    def close(self) -> None:
        """Close files and release the directory lock."""
        with self._lock:
            self._fh.close()
            fcntl.flock(self._lockf, fcntl.LOCK_UN)
            self._lockf.close()
