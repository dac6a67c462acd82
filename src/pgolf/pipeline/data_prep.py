"""Turn `--data` / `--val-data` into one shard directory for a run.

--data: a shard directory (used in place), corpus files (tokenized into RUN/data), or nothing (the
published export for the recipe's vocabulary is downloaded). --val-data: an optional separate
validation source, a shard directory or corpus files (all its documents are validation). When the
splits come from different places, RUN/data links them together and gets a manifest, so RUN/data
can be passed back as --data. Preparation runs on rank 0 between barriers.
"""
from __future__ import annotations

from pathlib import Path

from pgolf import runtime
from pgolf.config import Config
from pgolf.data.build import build_shards
from pgolf.data.hub import download
from pgolf.data.manifest import manifest_tokenizer, read_manifest, resolve_tokenizer, tokenizer_record, write_manifest
from pgolf.data.shards import list_shards, read_header
from pgolf.data.tokenizer import load_tokenizer
from pgolf.errors import InputError
from pgolf.logs import log


def _has_shards(d: Path, split: str) -> bool:
    return d.is_dir() and bool(list_shards(d, split))


def _link_split(src: Path, dest: Path, split: str) -> list[dict]:
    shards = []
    for p in list_shards(src, split):
        target = dest / p.name
        if target.exists() or target.is_symlink():
            target.unlink()
        target.symlink_to(p.resolve())
        shards.append({"name": p.name, "tokens": read_header(p)})
    return shards


def _build(inputs: list[str], tokenizer: str | None, out: Path, val_docs: int, what: str, progress: bool,
           caseops: bool) -> Path:
    for item in inputs:
        if not (Path(item).is_file() or any(ch in item for ch in "*?[")):
            raise InputError(f"{what} {item}: not a shard directory or a corpus file")
    if not tokenizer:
        raise InputError(f"{what} is a text corpus: pass --tokenizer MODEL (or set data.tokenizer)")
    build_shards(inputs, tokenizer, out, val_docs=val_docs, progress=progress, caseops=caseops)
    return out


def _shard_dir(items: list[str] | None) -> Path | None:
    """The directory if `items` names exactly one directory, else None (corpus files)."""
    return Path(items[0]) if items and len(items) == 1 and Path(items[0]).is_dir() else None


def prepare_data(cfg: Config, data: list[str] | None, val_data: list[str] | None, tokenizer: str | None,
                 run_data: Path, val_docs: int = 50_000, progress: bool = True) -> tuple[Path, Path]:
    """(shard dir with both splits, tokenizer path) for a run; see the module doc."""
    tok = tokenizer or cfg.data.tokenizer or None
    if not data and cfg.data.path:
        data = [cfg.data.path]
    if not data:
        variant = f"sp{cfg.model.vocab_size}"
        dest = Path("data") / variant
        if runtime.is_main():
            log.info(f"no --data: downloading the published {variant} export (val + 1 train shard) to {dest}")
            download(variant, dest, train_shards=1, progress=progress)
        runtime.barrier()
        data = [str(dest)]
    src = _shard_dir(data)
    if src is not None:
        if not _has_shards(src, "train"):
            raise InputError(f"{src}: no fineweb_train_*.bin shards (build them with `pgolf data build`)")
        if not val_data:
            if not _has_shards(src, "val"):
                raise InputError(f"{src}: no fineweb_val_*.bin shards; pass --val-data")
            return src, resolve_tokenizer(src, tok)
        if tok is None:
            named, _ = manifest_tokenizer(src)
            tok = str(named) if named is not None else None
    if runtime.is_main():
        run_data.mkdir(parents=True, exist_ok=True)
        if src is None:  # corpus: all docs train when a separate val source is given
            src = _build(data, tok, run_data / "build", 0 if val_data else val_docs, "--data", progress,
                         cfg.data.caseops)
        vsrc = _shard_dir(val_data) if val_data else src
        if vsrc is not None and not _has_shards(vsrc, "val"):
            raise InputError(f"{vsrc}: no fineweb_val_*.bin shards")
        if vsrc is None:
            vsrc = _build(val_data, tok, run_data / "val_build", 10 ** 15, "--val-data", progress, cfg.data.caseops)
        tok_path = resolve_tokenizer(src, tok)
        resolve_tokenizer(vsrc, str(tok_path))  # both splits must come from the same tokenizer
        splits = {"train": {"shards": _link_split(src, run_data, "train")},
                  "val": {"shards": _link_split(vsrc, run_data, "val")}}
        if _has_shards(vsrc, "val_bytes"):
            splits["val_bytes"] = {"shards": _link_split(vsrc, run_data, "val_bytes")}
        for split in splits.values():
            split["tokens"] = sum(s["tokens"] for s in split["shards"])
        sp = load_tokenizer(tok_path)
        write_manifest(run_data, {"tokenizer": tokenizer_record(tok_path, sp.vocab_size()), "splits": splits,
                                  "sources": {"train": str(src), "val": str(vsrc)}})
    runtime.barrier()
    if read_manifest(run_data) is None:
        raise InputError(f"{run_data}: data preparation left no manifest")
    return run_data, resolve_tokenizer(run_data, None)
