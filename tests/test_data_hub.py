"""`pgolf data download`: manifest-driven layout from a local mirror, skip/resume, and fast offline errors.

No test touches the network: a local mirror directory, HF_HUB_OFFLINE=1, or a closed localhost port.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pgolf.cli import main
from pgolf.data.hub import download, mirror_fetcher
from pgolf.data.shards import read_header, write_shard

DS = "datasets/datasets/fineweb10B_sp1024"


@pytest.fixture
def mirror(tmp_path, shared_dir):
    """A directory laid out like willdepueoai/parameter-golf, with 1 val and 3 small train shards."""
    root = tmp_path / "mirror"
    (root / DS).mkdir(parents=True)
    (root / "datasets" / "tokenizers").mkdir()
    shutil.copy(shared_dir / "fineweb" / "sp1024" / "fineweb_val_000000.bin", root / DS)
    rng = np.random.default_rng(0)
    for i in range(3):
        write_shard(root / DS / f"fineweb_train_{i:06d}.bin", rng.integers(0, 1024, 5000 + i))
    for ext in ("model", "vocab"):
        shutil.copy(shared_dir / "tokenizers" / f"fineweb_1024_bpe.{ext}", root / "datasets" / "tokenizers")
    manifest = {
        "datasets": [
            {"name": "fineweb10B_sp1024", "tokenizer_name": "sp_bpe_1024",
             "stats": {"files_train": 3, "files_val": 1}},
            {"name": "fineweb10B_sp4096", "tokenizer_name": "sp_bpe_4096",
             "stats": {"files_train": 2, "files_val": 1}},
        ],
        "tokenizers": [{"name": "sp_bpe_1024", "model_path": "tokenizers/fineweb_1024_bpe.model",
                        "vocab_path": "tokenizers/fineweb_1024_bpe.vocab"}],
    }
    (root / "datasets" / "manifest.json").write_text(json.dumps(manifest))
    return root


def test_cli_download_from_mirror_then_inspect(tmp_path, mirror, capsys):
    out = tmp_path / "out"
    assert main(["data", "download", "--variant", "sp1024", "--train-shards", "2", "--out", str(out),
                 "--mirror", str(mirror), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["fetched"] == 1 + 2 + 2 and r["skipped"] == 0 and r["val_shards"] == 1 and r["train_shards"] == 2
    names = sorted(p.name for p in out.glob("fineweb_*.bin"))
    assert names == ["fineweb_train_000000.bin", "fineweb_train_000001.bin", "fineweb_val_000000.bin"]
    for n in names:
        assert (out / n).read_bytes() == (mirror / DS / n).read_bytes()
    assert (out / "tokenizers" / "fineweb_1024_bpe.model").is_file()
    assert (out / "tokenizers" / "fineweb_1024_bpe.vocab").is_file()
    m = json.loads((out / "manifest.json").read_text())
    assert m["tokenizer"]["path"] == "tokenizers/fineweb_1024_bpe.model" and m["tokenizer"]["vocab_size"] == 1024
    assert m["splits"]["train"]["tokens"] == 5000 + 5001
    assert m["source"]["repo_id"] == "willdepueoai/parameter-golf"
    # The manifest's relative tokenizer path is found by inspect: the val_bpb denominator follows.
    assert main(["data", "inspect", str(out), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["splits"]["val"]["bytes"] == 2_504_310 and r["splits"]["train"]["shards"] == 2


def _counting(fetch):
    calls = []

    def f(repo_id, filename):
        calls.append(filename)
        return fetch(repo_id, filename)

    return f, calls


def test_only_missing_or_invalid_files_are_fetched(tmp_path, mirror):
    out = tmp_path / "out"
    fetch, calls = _counting(mirror_fetcher(mirror))
    download("sp1024", out, train_shards=1, fetch=fetch)
    assert len(calls) == 1 + 1 + 1 + 2  # manifest, val, train 0, model + vocab
    calls.clear()
    r = download("sp1024", out, train_shards=3, fetch=fetch)  # more shards later: only the new ones
    assert calls == [f"{DS}/fineweb_train_000001.bin", f"{DS}/fineweb_train_000002.bin"]
    assert r["skipped"] == 1 + 1 + 2 and r["fetched"] == 2
    calls.clear()
    # A broken file under the final name (e.g. an interrupted copy by another tool); a new file, since
    # download() hard-links from the cache/mirror when it can and truncating in place would hit the source.
    dest = out / "fineweb_train_000001.bin"
    broken = dest.read_bytes()[:2000]
    dest.unlink()
    dest.write_bytes(broken)
    download("sp1024", out, train_shards=3, fetch=fetch)
    assert calls == [f"{DS}/fineweb_train_000001.bin"]
    read_header(out / "fineweb_train_000001.bin")
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_download_errors_exit_2(tmp_path, mirror, capsys):
    out = str(tmp_path / "out")
    base = ["data", "download", "--out", out, "--mirror", str(mirror)]
    assert main(base + ["--train-shards", "4"]) == 2
    assert "only 3 train shards" in capsys.readouterr().err
    assert main(base + ["--variant", "sp2048"]) == 2  # no known repo
    assert "--repo-id" in capsys.readouterr().err
    assert main(base + ["--variant", "sp2048", "--repo-id", "me/x"]) == 2  # not in the manifest
    assert "fineweb10B_sp2048" in capsys.readouterr().err
    assert main(base + ["--variant", "sp4096", "--train-shards", "1"]) == 2  # its tokenizer is not listed
    assert "sp_bpe_4096" in capsys.readouterr().err
    assert main(base + ["--variant", "bytes"]) == 2
    assert "sp<VOCAB_SIZE>" in capsys.readouterr().err
    (mirror / DS / "fineweb_train_000001.bin").unlink()
    assert main(base + ["--train-shards", "2"]) == 2
    err = capsys.readouterr().err
    assert "fineweb_train_000001.bin" in err and "pgolf data build" in err
    assert not (Path(out) / "manifest.json").exists()


def test_corrupt_source_shard_never_lands(tmp_path, mirror, capsys):
    src = mirror / DS / "fineweb_train_000000.bin"
    src.write_bytes(src.read_bytes()[:-10])
    out = tmp_path / "out"
    assert main(["data", "download", "--train-shards", "1", "--out", str(out), "--mirror", str(mirror)]) == 2
    assert "truncated" in capsys.readouterr().err
    assert not (out / "fineweb_train_000000.bin").exists()


def _run_cli(args, env_extra, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update({"HF_HOME": str(tmp_path / "hf_home"), **env_extra})
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pgolf.cli", *args], env=env, capture_output=True, text=True,
                          timeout=120)
    return proc, time.monotonic() - t0


def test_real_hub_path_offline_fails_fast_with_build_hint(tmp_path):
    proc, secs = _run_cli(["data", "download", "--variant", "sp1024", "--out", str(tmp_path / "out")],
                          {"HF_HUB_OFFLINE": "1"}, tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "willdepueoai/parameter-golf/datasets/manifest.json" in proc.stderr
    assert "HF_HUB_OFFLINE" in proc.stderr and "pgolf data build" in proc.stderr
    assert secs < 60


def test_real_hub_path_unreachable_endpoint_fails_fast(tmp_path):
    with socket.socket() as s:  # a localhost port that refuses connections
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc, secs = _run_cli(["data", "download", "--variant", "sp8192", "--out", str(tmp_path / "out")],
                          {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{port}",
                           "NO_PROXY": "*", "no_proxy": "*"}, tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "kevclark/parameter-golf" in proc.stderr and "unreachable" in proc.stderr
    assert "pgolf data build" in proc.stderr
    assert secs < 60
