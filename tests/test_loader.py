"""The streaming loader: disjoint shards per rank, equal batch counts, deterministic per-epoch order."""
from __future__ import annotations

import itertools

import pytest

from vaeforge.data.stream import StreamSpec, eval_batches, train_loader
from vaeforge.data.manifest import read_manifest, shard_paths
from vaeforge.errors import DataError


def epoch_keys(lfw64, rank, world, epoch=0, workers=0, batches=6, batch_size=8, seed=0):
    shards = shard_paths(lfw64, read_manifest(lfw64), "train")
    spec = StreamSpec(tuple(shards), batch_size, batches, rank, world, seed, epoch, 64)
    out = []
    for batch in train_loader(spec, workers):
        assert batch["image"].shape == (batch_size, 3, 64, 64) and batch["image"].dtype.is_floating_point is False
        out.append(batch["key"])
    return out


def test_ranks_get_disjoint_samples_and_equal_batches(lfw64):
    per_rank = [epoch_keys(lfw64, r, 2, batches=7) for r in range(2)]
    assert [len(b) for b in per_rank] == [7, 7]
    seen = [set(itertools.chain(*b)) for b in per_rank]
    assert not seen[0] & seen[1]


def test_two_workers_still_yield_exactly_the_quota(lfw64):
    assert len(epoch_keys(lfw64, 0, 2, workers=2, batches=5)) == 5


def test_order_is_deterministic_per_epoch_and_changes_across_epochs(lfw64):
    assert epoch_keys(lfw64, 0, 1, epoch=3) == epoch_keys(lfw64, 0, 1, epoch=3)
    assert epoch_keys(lfw64, 0, 1, epoch=3) != epoch_keys(lfw64, 0, 1, epoch=4)
    assert epoch_keys(lfw64, 0, 1, seed=1) != epoch_keys(lfw64, 0, 1, seed=0)


def test_a_worker_cycles_its_shards_when_the_quota_exceeds_them(lfw64):
    # 16 shards over 8 ranks: 2 shards (~1,130 images) per rank, but 200 batches of 8 are asked for.
    keys = list(itertools.chain(*epoch_keys(lfw64, 0, 8, batches=200)))
    assert len(keys) == 1600 and len(set(keys)) < len(keys)


def test_too_few_shards_for_ranks_and_workers_is_a_clear_error(lfw64):
    with pytest.raises(DataError, match="too few for 32 ranks"):
        epoch_keys(lfw64, 20, 32)


def test_eval_batches_cover_the_val_split_once(lfw64):
    manifest = read_manifest(lfw64)
    shards = shard_paths(lfw64, manifest, "val")
    keys = [k for r in range(2) for b in eval_batches(shards, 50, r, 2) for k in b["key"]]
    assert len(keys) == len(set(keys)) == manifest["splits"]["val"]["count"]


def raised_in(filename: str, exc: BaseException) -> BaseException:
    """``exc`` as raised by code in ``filename`` (its traceback names that file)."""
    try:
        exec(compile("raise exc", filename, "exec"), {"exc": exc})
    except BaseException as caught:  # noqa: BLE001 - handed back to the test
        return caught
    raise AssertionError("not raised")


def test_a_worker_dying_while_it_hands_a_batch_over_is_a_worker_death():
    """A killed loader worker shows up either as PyTorch's RuntimeError or, mid hand-over, as a reset connection
    in the shared-memory receive code: both are named as a worker death; the same errors elsewhere are not (and
    a reset connection is not mistaken for a failed peer rank)."""
    from vaeforge.data.stream import worker_death
    from vaeforge.train.distributed import peer_failed

    reset = ConnectionResetError(104, "Connection reset by peer")
    handover = raised_in("/usr/lib/python3/multiprocessing/resource_sharer.py", reset)
    death = worker_death(handover)
    assert death is not None and "data loader worker process died (it was handing a batch over" in str(death)
    assert worker_death(raised_in("/torch/multiprocessing/reductions.py", EOFError())) is not None
    killed = RuntimeError("DataLoader worker (pid 123) is killed by signal: Killed. ")
    assert "DataLoader worker (pid 123) is killed by signal: Killed." in str(worker_death(killed))
    assert worker_death(raised_in("/site-packages/urllib3/connection.py", ConnectionResetError(104, "reset"))) is None
    assert worker_death(RuntimeError("shape mismatch")) is None
    assert not peer_failed(handover, world=2)
    assert peer_failed(RuntimeError("Connection reset by peer"), world=2)
