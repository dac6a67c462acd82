"""Shared fixtures: the offline data under ../shared (skipped with a reason when absent)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """/work/shared/data: official tokenizers, the 901 FineWeb val docs and their shards."""
    data = SHARED / "data"
    if not (data / "fineweb" / "val_docs_901.jsonl").is_file():
        pytest.skip(f"offline data not found under {data} (see shared/data/PROVENANCE.md)")
    return data


@pytest.fixture(scope="session")
def sp1024_model(shared_dir: Path) -> Path:
    return shared_dir / "tokenizers" / "fineweb_1024_bpe.model"


@pytest.fixture(scope="session")
def sp8192_model(shared_dir: Path) -> Path:
    return shared_dir / "tokenizers" / "fineweb_8192_bpe.model"


@pytest.fixture(scope="session")
def val_docs(shared_dir: Path) -> Path:
    return shared_dir / "fineweb" / "val_docs_901.jsonl"


@pytest.fixture()
def one_thread():
    """One torch thread: tiny models gain nothing from threads, and 2 shared cores thrash when
    oversubscribed. Opt in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)



def exit_child() -> None:
    """End a spawned gloo worker once its results are written. torch 2.13's gloo teardown sometimes
    aborts at interpreter exit ("terminate called without an active exception", about 1 run in 10),
    after all the work is done; os._exit skips those static destructors."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
