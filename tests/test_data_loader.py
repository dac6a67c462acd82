"""Training loaders: disjoint ranks, determinism, coverage, wrap-around, resume, prefetch, validation.

Shard tokens are their own global stream positions (all distinct), so a batch tells which positions it read.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pgolf.data.loader import SequentialLoader, ShuffledLoader, make_loader
from pgolf.data.shards import write_shard
from pgolf.errors import InputError

SIZES = [3000, 4500, 2200]


@pytest.fixture
def shards(tmp_path):
    paths, base = [], 0
    for i, n in enumerate(SIZES):
        p = tmp_path / f"fineweb_train_{i:06d}.bin"
        write_shard(p, np.arange(base, base + n))
        paths.append(p)
        base += n
    return paths


def _take(loader, n):
    out = [loader.next_batch() for _ in range(n)]
    loader.close()
    return out


def _check_xy(x, y, rows, seq_len):
    assert x.dtype == torch.int64 and y.dtype == torch.int64
    assert x.shape == y.shape == (rows, seq_len)
    assert x.is_contiguous() and y.is_contiguous()
    assert torch.equal(x[:, 1:], y[:, :-1])


def test_sequential_ranks_take_consecutive_disjoint_spans(shards):
    seq, mbt, world = 16, 64, 3
    loaders = [SequentialLoader(shards, seq, mbt, rank=r, world_size=world) for r in range(world)]
    total = sum(SIZES)
    stream = np.arange(total)
    seen = [set() for _ in range(world)]
    steps = total // (world * (mbt + 1))  # one pass, no wrap yet
    for step in range(steps):
        for r, ld in enumerate(loaders):
            x, y = ld.next_batch()
            _check_xy(x, y, mbt // seq, seq)
            start = step * world * (mbt + 1) + r * (mbt + 1)
            np.testing.assert_array_equal(x.flatten().numpy(), stream[start: start + mbt])  # crosses shards too
            assert int(y.flatten()[-1]) == start + mbt
            seen[r] |= set(x.flatten().tolist()) | set(y.flatten().tolist())
    for a in range(world):
        for b in range(a + 1, world):
            assert not seen[a] & seen[b]
    # Together the ranks read a contiguous prefix of the stream.
    assert set().union(*seen) == set(range(steps * world * (mbt + 1)))


def test_sequential_wraps_around_the_stream(shards):
    total = sum(SIZES)
    ld = SequentialLoader(shards, 100, 1000, 0, 1)
    batches = _take(ld, 12)  # 12 * 1001 > total: wraps once
    flat = np.concatenate([torch.cat([x.flatten(), y.flatten()[-1:]]).numpy() for x, y in batches])
    np.testing.assert_array_equal(flat, np.arange(len(flat)) % total)


def _positions(batches):
    return [x.flatten().tolist() for x, _ in batches]


@pytest.mark.parametrize("world,shard_ids", [(2, [0, 1, 2]), (3, [0, 1, 2]), (2, [1]), (3, [0, 2])])
def test_shuffled_epoch_covers_every_window_once_and_ranks_are_disjoint(shards, world, shard_ids):
    """One sequence per batch, exactly one epoch per rank: x positions are the shard's phase grid."""
    paths = [shards[i] for i in shard_ids]
    seq = 50
    covered = []
    for r in range(world):
        ld = ShuffledLoader(paths, seq, seq, rank=r, world_size=world, seed=7)
        n = len(ld.plan(0)[1])
        batches = _take(ld, n)
        for x, y in batches:
            _check_xy(x, y, 1, seq)
            row = x[0].numpy()
            np.testing.assert_array_equal(row, np.arange(row[0], row[0] + seq))  # one contiguous window
        covered.append([p for pos in _positions(batches) for p in pos])
        assert len(set(covered[-1])) == len(covered[-1])
        assert ld.state_dict()["epoch"] == 0 and ld.state_dict()["index"] == n
    for a in range(world):
        for b in range(a + 1, world):
            assert not set(covered[a]) & set(covered[b])
    # Union over ranks: for every shard all full windows on its grid (phase + k*seq), nothing else.
    union = set().union(*map(set, covered))
    expected = set()
    starts = np.cumsum([0] + SIZES)
    for s in shard_ids:
        first = min(p for p in union if starts[s] <= p < starts[s + 1])
        phase = first - starts[s]
        assert 0 <= phase < seq
        n = (SIZES[s] - 1 - phase) // seq
        expected |= set(range(starts[s] + phase, starts[s] + phase + n * seq))
    assert union == expected


def test_shuffled_same_seed_same_batches_new_epochs_reshuffle(shards):
    a = _take(ShuffledLoader(shards, 32, 128, 0, 2, seed=3), 30)
    b = _take(ShuffledLoader(shards, 32, 128, 0, 2, seed=3), 30)
    c = _take(ShuffledLoader(shards, 32, 128, 0, 2, seed=4), 30)
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    assert not all(torch.equal(xa, xc) for (xa, _), (xc, _) in zip(a, c))
    ld = ShuffledLoader(shards, 32, 128, 0, 2, seed=3)
    phases = {int(ld.plan(e)[1][np.argmin(ld.plan(e)[1])]) % 32 for e in range(6)}
    orders = {tuple(ld.plan(e)[1][:5]) for e in range(6)}
    assert len(phases) > 1 and len(orders) == 6
    # The stream runs across epoch boundaries without stopping.
    ld.close()
    n0 = len(ShuffledLoader(shards, 32, 128, 0, 2, seed=3).plan(0)[1])
    ld2 = ShuffledLoader(shards, 32, 128, 0, 2, seed=3)
    _take(ld2, n0 // 4 + 2)
    assert ld2.state_dict()["epoch"] == 1


@pytest.mark.parametrize("kind", ["sequential", "shuffled"])
@pytest.mark.parametrize("prefetch", [0, 3])
def test_resume_gives_the_same_following_batches(shards, kind, prefetch):
    def make(pf):
        return make_loader(kind, shards, 40, 160, rank=1, world_size=2, seed=11, prefetch=pf)

    ref = _take(make(0), 60)  # long enough to wrap / cross epochs
    run = make(prefetch)
    for _ in range(25):
        run.next_batch()
    state = json.loads(json.dumps(run.state_dict()))  # survives a checkpoint round trip
    run.close()
    resumed = make(prefetch)
    resumed.load_state_dict(state)
    tail = _take(resumed, 35)
    for (xr, yr), (xt, yt) in zip(ref[25:], tail):
        assert torch.equal(xr, xt) and torch.equal(yr, yt)


def test_prefetch_matches_no_prefetch_and_reload_discards_read_ahead(shards):
    plain = _take(ShuffledLoader(shards, 40, 80, 0, 1, seed=1), 20)
    ld = ShuffledLoader(shards, 40, 80, 0, 1, seed=1, prefetch=4)
    first = [ld.next_batch() for _ in range(5)]
    state = ld.state_dict()
    [ld.next_batch() for _ in range(3)]
    ld.load_state_dict(state)  # rewinds past what the thread had read ahead
    rest = _take(ld, 15)
    for (xp, _), (xq, _) in zip(plain, first + rest):
        assert torch.equal(xp, xq)


def test_state_for_another_loader_is_refused(shards):
    seq = SequentialLoader(shards, 10, 20)
    shuf = ShuffledLoader(shards, 10, 20, seed=0)
    with pytest.raises(InputError, match="sequential"):
        shuf.load_state_dict(seq.state_dict())
    with pytest.raises(InputError, match="seed"):
        shuf.load_state_dict({**shuf.state_dict(), "seed": 5})
    with pytest.raises(InputError, match="pos"):
        seq.load_state_dict({"kind": "sequential", "pos": 10 ** 9})


def test_loader_validation(shards, tmp_path):
    bad = tmp_path / "fineweb_train_000009.bin"
    write_shard(bad, np.array([1, 2, 5000, 3]))
    for cls in (SequentialLoader, ShuffledLoader):
        with pytest.raises(InputError, match=f"{bad}.*5000 >= vocab size 1024"):
            cls([bad], 2, 2, vocab_size=1024)
    with pytest.raises(InputError, match="multiple of seq_len"):
        SequentialLoader(shards, 16, 40)
    with pytest.raises(InputError, match="rank"):
        ShuffledLoader(shards, 16, 32, rank=2, world_size=2)
    with pytest.raises(InputError, match="no sequence"):
        ShuffledLoader([bad], 8, 8)  # 4 tokens: no window of 9
    with pytest.raises(InputError, match="< one step"):
        SequentialLoader([bad], 2, 4, world_size=1)
    with pytest.raises(InputError, match="not a loader"):
        make_loader("random", shards, 16, 32)
    with pytest.raises(InputError, match="not found"):
        SequentialLoader([tmp_path / "missing.bin"], 16, 32)


def test_prefetch_hands_a_failed_step_to_the_consumer(shards):
    ld = SequentialLoader(shards, 10, 20, prefetch=2)
    real, calls = ld._step, []

    def flaky(state):
        calls.append(state["pos"])
        if len(calls) == 3:
            raise InputError("shard vanished")
        return real(state)

    ld._step = flaky
    ld.next_batch()
    ld.next_batch()
    with pytest.raises(InputError, match="vanished"):
        ld.next_batch()
    ld.close()
    assert ld._pool is None and not ld._ahead
