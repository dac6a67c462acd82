"""A shard directory's manifest.json, and the checks every reader of a shard directory runs.

The manifest (written last by `pgolf data build`, `data download` and `pgolf run`'s RUN/data) names
the tokenizer (path, sha256, vocab size) and lists every shard with its token count. A directory
with a manifest must hold exactly the listed shards; one without a manifest must hold shards with
valid headers numbered 0..n-1 per split. A tokenizer given by the user must be the one the manifest
names (same sha256), or the byte counts, and so val_bpb, would silently be wrong.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from pgolf.atomic import atomic_write_json, read_json_object
from pgolf.data.shards import list_shards, read_header
from pgolf.data.tokenizer import file_sha256
from pgolf.errors import InputError

MANIFEST = "manifest.json"
FORMAT = "pgolf-shards"
SPLITS = ("val", "train")
_NAME = re.compile(r"^fineweb_(val|train|val_bytes)_(\d{6})\.bin$")


def write_manifest(directory: str | os.PathLike, manifest: dict) -> None:
    atomic_write_json(Path(directory) / MANIFEST, dict(manifest, format=FORMAT))


def read_manifest(directory: str | os.PathLike) -> dict | None:
    """DIR/manifest.json, or None when the directory has none."""
    return read_json_object(Path(directory) / MANIFEST)


def manifest_tokenizer(directory: str | os.PathLike) -> tuple[Path | None, str | None]:
    """(path, sha256) of the tokenizer DIR/manifest.json names; a relative path is relative to DIR."""
    tok = ((read_manifest(directory) or {}).get("tokenizer") or {})
    path = tok.get("path")
    if not path:
        return None, tok.get("sha256")
    p = Path(path)
    return (p if p.is_absolute() else Path(directory) / p), tok.get("sha256")


def tokenizer_record(path: str | os.PathLike, vocab_size: int, relative_to: Path | None = None) -> dict:
    p = Path(path)
    shown = os.path.relpath(p.resolve(), relative_to.resolve()) if relative_to is not None else str(p.resolve())
    return {"path": shown, "sha256": file_sha256(p), "vocab_size": int(vocab_size)}


def check_tokenizer_match(tokenizer: str | os.PathLike, expected_sha: str | None, owner: str) -> str:
    """The tokenizer's sha256; InputError naming both files when `owner` recorded another one."""
    sha = file_sha256(tokenizer)
    if expected_sha and sha != expected_sha:
        raise InputError(f"{tokenizer}: tokenizer sha256 {sha[:12]}... differs from the one {owner} was made with "
                         f"({expected_sha[:12]}...); pass the matching tokenizer")
    return sha


def resolve_tokenizer(directory: str | os.PathLike, given: str | os.PathLike | None) -> Path:
    """The tokenizer for DIR: `given` (checked against the manifest's sha256) or the manifest's own."""
    named, sha = manifest_tokenizer(directory)
    if given:
        path = Path(given)
        if not path.is_file():
            raise InputError(f"{path}: tokenizer model not found")
        check_tokenizer_match(path, sha, str(Path(directory) / MANIFEST))
        return path
    if named is None:
        raise InputError(f"{directory}: no tokenizer given (--tokenizer MODEL) and no manifest.json naming one; "
                         "val_bpb needs the tokenizer's byte tables")
    if not named.is_file():
        raise InputError(f"{Path(directory) / MANIFEST}: tokenizer {named} not found; pass --tokenizer MODEL")
    check_tokenizer_match(named, sha, str(Path(directory) / MANIFEST))
    return named


def validate_shard_dir(directory: str | os.PathLike) -> dict[str, list[Path]]:
    """Shard paths per split after checking the directory is one consistent set (see module doc)."""
    d = Path(directory)
    if not d.is_dir():
        raise InputError(f"{d}: data directory not found")
    found = {s: list_shards(d, s) for s in SPLITS}
    found["val_bytes"] = list_shards(d, "val_bytes")
    manifest = read_manifest(d)
    if manifest is not None:
        splits = manifest.get("splits")
        if not isinstance(splits, dict):
            raise InputError(f"{d / MANIFEST}: no 'splits' object")
        for split, paths in found.items():
            listed = (splits.get(split) or {}).get("shards") or []
            names = {s.get("name"): s.get("tokens") for s in listed if isinstance(s, dict)}
            extra = sorted(p.name for p in paths if p.name not in names)
            if extra:
                raise InputError(f"{d}: {extra[0]} is not listed in {MANIFEST} (a mix of two builds?); rebuild the directory")
            for name, tokens in names.items():
                p = d / name
                if not p.is_file():
                    raise InputError(f"{d}: {name} listed in {MANIFEST} is missing")
                if isinstance(tokens, int) and read_header(p) != tokens:
                    raise InputError(f"{p}: {read_header(p)} tokens, {MANIFEST} lists {tokens}; rebuild the directory")
        return found
    for split, paths in found.items():
        for i, p in enumerate(paths):
            m = _NAME.match(p.name)
            if m is None or int(m.group(2)) != i:
                raise InputError(f"{d}: {split} shards are not numbered 0..{len(paths) - 1} ({p.name}); "
                                 "an incomplete or mixed directory (no manifest.json to check against)")
            read_header(p)
    return found
