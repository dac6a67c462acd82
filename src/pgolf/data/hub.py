"""The published challenge export on the Hugging Face hub (manifest-driven download).

Hub layout (dataset repos; sp1024 in willdepueoai/parameter-golf, sp4096/sp8192 in kevclark/parameter-golf):
    datasets/manifest.json                                    {"datasets": [...], "tokenizers": [...]}
    datasets/datasets/fineweb10B_<variant>/fineweb_{val,train}_NNNNNN.bin
    datasets/<tokenizer model_path / vocab_path from the manifest>, e.g. tokenizers/fineweb_1024_bpe.model
The manifest's dataset entry gives the shard counts (stats.files_val / stats.files_train) and the name of
its tokenizer entry. Local layout written to OUT: the shards, tokenizers/<file>, hub_manifest.json (the
upstream manifest) and, last, a pgolf manifest.json like the one `pgolf data build` writes.

Access goes through a `fetch(repo_id, filename) -> local path` function; the default uses
huggingface_hub.hf_hub_download, so HF_HUB_OFFLINE / HF_HOME / HF_ENDPOINT / tokens are handled by the
library, and its cache resumes interrupted transfers.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable

from huggingface_hub import constants as hf_constants
from huggingface_hub import errors as hf_errors
from huggingface_hub import hf_hub_download
from tqdm import tqdm

import pgolf
from pgolf.data.manifest import MANIFEST, tokenizer_record, write_manifest
from pgolf.data.shards import read_header
from pgolf.data.tokenizer import load_tokenizer
from pgolf.errors import InputError
from pgolf.logs import progress_enabled

try:  # the HTTP client of recent huggingface_hub releases; optional
    import httpx
except ImportError:  # pragma: no cover
    httpx = None

Fetch = Callable[[str, str], Path]

VARIANT_REPOS = {
    "sp1024": "willdepueoai/parameter-golf",
    "sp4096": "kevclark/parameter-golf",
    "sp8192": "kevclark/parameter-golf",
}
REMOTE_ROOT = "datasets"
HUB_MANIFEST = "hub_manifest.json"
BUILD_HINT = ("to work without the hub, build shards from a local corpus instead: "
              "`pgolf data build CORPUS... --tokenizer MODEL --out DIR`")


def dataset_name(variant: str) -> str:
    if not (variant.startswith("sp") and variant[2:].isdigit()):
        raise InputError(f"--variant {variant!r}: expected sp<VOCAB_SIZE>, e.g. sp1024, sp4096, sp8192")
    return f"fineweb10B_{variant}"


def _endpoint_reachable(endpoint: str, timeout: float) -> bool:
    """One TCP connect to the hub endpoint; huggingface_hub itself retries for ~20 s when it is down."""
    url = urllib.parse.urlparse(endpoint)
    if urllib.request.getproxies().get(url.scheme):  # behind a proxy a direct connect says nothing
        return True
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def hub_fetcher(etag_timeout: float = 10.0, probe_timeout: float = 5.0) -> Fetch:
    """fetch() over huggingface_hub; when the endpoint cannot be reached, it reads the local cache only."""
    offline_fn = getattr(hf_constants, "is_offline_mode", None)
    offline = offline_fn() if offline_fn else bool(hf_constants.HF_HUB_OFFLINE)
    local_only = offline or not _endpoint_reachable(hf_constants.ENDPOINT, probe_timeout)
    where = "HF_HUB_OFFLINE is set" if offline else f"{hf_constants.ENDPOINT} unreachable"

    def fetch(repo_id: str, filename: str) -> Path:
        try:
            return Path(hf_hub_download(repo_id=repo_id, filename=filename, repo_type="dataset",
                                        etag_timeout=etag_timeout, local_files_only=local_only))
        except FileNotFoundError as e:
            if local_only:
                raise FileNotFoundError(f"{where} and not in the local Hugging Face cache") from e
            raise

    return fetch


def mirror_fetcher(root: str | os.PathLike) -> Fetch:
    """fetch() from a local directory laid out like the hub repo (repo_id is ignored)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: mirror directory not found")

    def fetch(repo_id: str, filename: str) -> Path:
        path = root / filename
        if not path.is_file():
            raise FileNotFoundError(f"{path} not in the mirror")
        return path

    return fetch


def _fetch_errors() -> tuple[type[BaseException], ...]:
    errors: tuple[type[BaseException], ...] = (OSError, ConnectionError, TimeoutError, hf_errors.EntryNotFoundError,
                                                hf_errors.HfHubHTTPError, hf_errors.HFValidationError)
    return errors + ((httpx.HTTPError,) if httpx is not None else ())


def _get(fetch: Fetch, repo_id: str, filename: str) -> Path:
    try:
        return Path(fetch(repo_id, filename))
    except _fetch_errors() as e:
        raise InputError(f"{repo_id}/{filename}: cannot fetch ({type(e).__name__}: {e}); {BUILD_HINT}") from None


def _place(src: Path, dest: Path) -> None:
    """Hard-link (or copy) src to dest atomically: a temp name in dest's folder, then rename."""
    src = src.resolve()  # hub cache entries are symlinks into blobs/
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _shard_ok(path: Path) -> bool:
    try:
        read_header(path)
        return True
    except InputError:
        return False


def _parse_hub_manifest(path: Path) -> dict | None:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return obj if isinstance(obj, dict) and isinstance(obj.get("datasets"), list) else None


def _has_dataset(manifest: dict, dataset: str) -> bool:
    return any(isinstance(d, dict) and d.get("name") == dataset for d in manifest["datasets"])


def _load_hub_manifest(fetch: Fetch, repo_id: str, out: Path, dataset: str) -> dict:
    """The upstream manifest: the local copy if it knows the dataset, else a fresh fetch."""
    local = out / HUB_MANIFEST
    if local.is_file():
        manifest = _parse_hub_manifest(local)
        if manifest is not None and _has_dataset(manifest, dataset):
            return manifest
    remote = f"{REMOTE_ROOT}/manifest.json"
    _place(_get(fetch, repo_id, remote), local)
    manifest = _parse_hub_manifest(local)
    if manifest is None:
        raise InputError(f"{repo_id}/{remote}: expected a JSON object with a \"datasets\" list")
    if not _has_dataset(manifest, dataset):
        names = [d.get("name") for d in manifest["datasets"] if isinstance(d, dict)]
        raise InputError(f"{repo_id}/{remote}: no dataset {dataset!r} (it lists {names})")
    return manifest


def download(variant: str, out_dir: str | os.PathLike, train_shards: int = 80, repo_id: str | None = None,
             fetch: Fetch | None = None, progress: bool = False) -> dict:
    """Fetch the variant's val shards, the first `train_shards` train shards and its tokenizer into out_dir."""
    dataset = dataset_name(variant)
    repo_id = repo_id or VARIANT_REPOS.get(variant)
    if not repo_id:
        raise InputError(f"--variant {variant}: no known hub repo; pass --repo-id OWNER/NAME")
    if train_shards < 0:
        raise InputError(f"--train-shards must be >= 0, got {train_shards}")
    fetch = fetch or hub_fetcher()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # written last, once everything is in place

    hub = _load_hub_manifest(fetch, repo_id, out, dataset)
    entry = next(d for d in hub["datasets"] if d.get("name") == dataset)
    stats = entry.get("stats") or {}
    try:
        n_val, n_train = int(stats["files_val"]), int(stats["files_train"])
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{out / HUB_MANIFEST}: dataset {dataset} lacks stats.files_val/files_train") from None
    if train_shards > n_train:
        raise InputError(f"--train-shards {train_shards}: {repo_id} has only {n_train} train shards for {variant}")
    tok_entry = next((t for t in hub.get("tokenizers", []) if t.get("name") == entry.get("tokenizer_name")), None)
    if tok_entry is None:
        raise InputError(f"{out / HUB_MANIFEST}: tokenizer {entry.get('tokenizer_name')!r} of {dataset} not listed")
    tok_files = [str(tok_entry[k]) for k in ("model_path", "vocab_path", "path") if tok_entry.get(k)]
    model_files = [f for f in tok_files if f.endswith(".model")]
    if not model_files:
        raise InputError(f"{out / HUB_MANIFEST}: tokenizer {tok_entry.get('name')!r} has no .model file")

    shard_names = [f"fineweb_val_{i:06d}.bin" for i in range(n_val)]
    shard_names += [f"fineweb_train_{i:06d}.bin" for i in range(train_shards)]
    jobs = [(f"{REMOTE_ROOT}/datasets/{dataset}/{n}", out / n, True) for n in shard_names]
    jobs += [(f"{REMOTE_ROOT}/{f}", out / "tokenizers" / Path(f).name, False) for f in tok_files]

    fetched = skipped = 0
    for remote, dest, is_shard in tqdm(jobs, desc="download", unit="file", file=sys.stderr,
                                       disable=None if progress and progress_enabled() else True):
        if dest.is_file() and (_shard_ok(dest) if is_shard else True):
            skipped += 1
            continue
        src = _get(fetch, repo_id, remote)
        if is_shard:
            read_header(src)  # a corrupt or truncated source never lands under a final name
        _place(src, dest)
        fetched += 1

    model = out / "tokenizers" / Path(model_files[0]).name
    sp = load_tokenizer(model)
    splits = {}
    for split in ("val", "train"):
        shards = [{"name": n, "tokens": read_header(out / n)} for n in shard_names if n.startswith(f"fineweb_{split}_")]
        splits[split] = {"tokens": sum(s["tokens"] for s in shards), "shards": shards}
    manifest = {
        "pgolf_version": pgolf.__version__,
        "source": {"repo_id": repo_id, "variant": variant, "dataset": dataset,
                   "hub_manifest": HUB_MANIFEST},
        "tokenizer": tokenizer_record(model, sp.vocab_size(), relative_to=out),
        "splits": splits,
    }
    write_manifest(out, manifest)
    return {"dir": str(out), "repo_id": repo_id, "variant": variant, "dataset": dataset,
            "val_shards": n_val, "train_shards": train_shards, "fetched": fetched, "skipped": skipped,
            "tokenizer": str(model), "tokens": {s: v["tokens"] for s, v in splits.items()}}

