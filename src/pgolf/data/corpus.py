"""Text corpora: documents from .txt / .jsonl files, plain or compressed (.zst, .xz, .gz).

Rules (kept deliberately simple and well defined):
- a .txt file holds one document per line (a trailing "\\n" or "\\r\\n" is stripped);
- a .jsonl file holds one JSON object per line with a string field "text";
- blank lines and empty documents are skipped;
- files (or glob patterns) are read in the order given, each glob's matches sorted.
Bad input raises InputError naming the file and line: a missing file, a glob that matches nothing,
invalid UTF-8, a NUL byte, a jsonl line that is not an object with a string "text", no documents at all,
or a compressed file that is corrupt or ends early ("truncated": checked before its last line is used).
"""
from __future__ import annotations

import glob
import gzip
import io
import json
import lzma
import os
import zlib
from pathlib import Path
from typing import BinaryIO, Iterator, Sequence

import zstandard

from pgolf.errors import InputError

TEXT_SUFFIXES = (".txt", ".jsonl")
COMPRESSED_SUFFIXES = (".zst", ".xz", ".gz")


def expand_paths(patterns: Sequence[str | os.PathLike]) -> list[Path]:
    """Resolve paths and glob patterns to files, in the order given; validates existence and type."""
    if not patterns:
        raise InputError("no corpus files given")
    out: list[Path] = []
    for pat in patterns:
        s = str(pat)
        if glob.has_magic(s):
            matches = sorted(Path(m) for m in glob.glob(s))
            if not matches:
                raise InputError(f"{s}: glob matches no files")
        else:
            matches = [Path(s)]
        for p in matches:
            if not p.is_file():
                raise InputError(f"{p}: corpus file not found")
            corpus_kind(p)  # fail early on an unsupported name
            out.append(p)
    return out


def corpus_kind(path: Path) -> tuple[str, str]:
    """(format, compression) from the file name, e.g. ("jsonl", ".zst")."""
    name = path.name.lower()
    comp = ""
    for c in COMPRESSED_SUFFIXES:
        if name.endswith(c):
            comp, name = c, name[: -len(c)]
            break
    for s in TEXT_SUFFIXES:
        if name.endswith(s):
            return s[1:], comp
    raise InputError(f"{path}: unsupported corpus file (expected .txt or .jsonl, optionally .zst/.xz/.gz)")


class _ZstdFrames(io.RawIOBase):
    """Decompresses concatenated zstd frames and raises at the end of the input when a frame is
    unfinished (the stdlib-like readers of zstandard stop silently there)."""

    def __init__(self, path: Path):
        self._f = open(path, "rb")
        self._d = zstandard.ZstdDecompressor().decompressobj()
        self._pending, self._pos = b"", 0
        self._fed = False  # the current frame has consumed input

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while self._pos >= len(self._pending):
            self._pending, self._pos = b"", 0
            chunk = self._f.read(1 << 20)
            if not chunk:
                if self._fed and not self._d.eof:
                    raise EOFError("compressed stream is truncated (zstd frame unfinished)")
                return 0
            while chunk:
                if self._d.eof:  # the previous frame ended: the rest starts a new one
                    self._d = zstandard.ZstdDecompressor().decompressobj()
                    self._fed = False
                self._pending += self._d.decompress(chunk)
                self._fed = True
                chunk = self._d.unused_data if self._d.eof else b""
        n = min(len(b), len(self._pending) - self._pos)
        b[:n] = self._pending[self._pos:self._pos + n]
        self._pos += n
        return n

    def close(self) -> None:
        self._f.close()
        super().close()


def _open_binary(path: Path, comp: str) -> BinaryIO:
    if comp == ".gz":
        return gzip.open(path, "rb")
    if comp == ".xz":
        return lzma.open(path, "rb")
    if comp == ".zst":
        return io.BufferedReader(_ZstdFrames(path), buffer_size=1 << 20)
    return open(path, "rb", buffering=1 << 20)


def _decode(raw: bytes, path: Path, lineno: int) -> str:
    if b"\x00" in raw:
        raise InputError(f"{path}:{lineno}: NUL byte in document")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}:{lineno}: invalid UTF-8 at byte {e.start} of the line") from None


def _jsonl_text(line: str, path: Path, lineno: int) -> str:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict) or "text" not in obj:
        raise InputError(f"{path}:{lineno}: jsonl line has no \"text\" field")
    text = obj["text"]
    if not isinstance(text, str):
        raise InputError(f"{path}:{lineno}: \"text\" is {type(text).__name__}, expected a string")
    if "\x00" in text:
        raise InputError(f"{path}:{lineno}: NUL character in document")
    try:
        text.encode("utf-8")  # JSON escapes can smuggle in lone surrogates
    except UnicodeEncodeError:
        raise InputError(f"{path}:{lineno}: invalid UTF-8 (lone surrogate escape) in \"text\"") from None
    return text


def iter_file(path: Path) -> Iterator[str]:
    """Documents of one corpus file, in order."""
    fmt, comp = corpus_kind(path)
    try:
        f = _open_binary(path, comp)
    except OSError as e:
        raise InputError(f"{path}: cannot open ({e})") from None
    with f:
        lineno = 0
        try:
            for raw in f:
                lineno += 1
                line = _decode(raw, path, lineno)
                line = line.rstrip("\n").rstrip("\r")
                if not line.strip():
                    continue
                text = _jsonl_text(line, path, lineno) if fmt == "jsonl" else line
                if text:
                    yield text
        except EOFError:  # the compressed data ends before its end marker
            raise InputError(f"{path}: truncated compressed file (it ends after line {lineno}); "
                             "re-download or re-create it") from None
        except _decompress_errors(comp) as e:  # corrupt compressed data
            raise InputError(f"{path}: corrupt compressed data after line {lineno} ({e})") from None


def _decompress_errors(comp: str) -> tuple[type[BaseException], ...]:
    return (OSError, lzma.LZMAError, zlib.error, zstandard.ZstdError)


def iter_documents(patterns: Sequence[str | os.PathLike]) -> Iterator[str]:
    """All documents of the corpus files in order; InputError if there are none."""
    paths = expand_paths(patterns)
    n = 0
    for p in paths:
        for text in iter_file(p):
            n += 1
            yield text
    if n == 0:
        names = ", ".join(str(p) for p in paths)
        raise InputError(f"{names}: empty corpus (no documents)")
