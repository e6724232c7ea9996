"""Image store, atomic writes and the crash-isolating process map."""

import os

import numpy as np
import pandas as pd
import pytest

from cxr_pipeline import parallel
from cxr_pipeline.data import atomic
from cxr_pipeline.data.image_store import ImageStore, from_stored, to_stored


def test_store_round_trip_and_random_access(tmp_path):
    store = ImageStore(tmp_path / "store")
    rng = np.random.default_rng(0)
    first = rng.random((5, 16, 16)).astype(np.float32)
    second = rng.random((3, 16, 16)).astype(np.float32)
    a = store.write_shard(to_stored(first))
    b = store.write_shard(to_stored(second))
    np.testing.assert_allclose(store.read(b, 2), second[2], atol=1 / 65535)
    batch = store.read_many([b, a, a, b], [1, 4, 0, 0])
    expected = np.stack([second[1], first[4], first[0], second[0]])
    np.testing.assert_allclose(batch, expected, atol=1 / 65535)
    assert store.remove_unreferenced({b}) == 1
    assert store.shard_names() == {b}
    assert not [p for p in (tmp_path / "store").rglob("*.tmp")]


def test_store_rejects_wrong_dtype(tmp_path):
    with pytest.raises(ValueError):
        ImageStore(tmp_path).write_shard(np.zeros((1, 4, 4), dtype=np.float32))


def test_stored_precision_is_16_bit():
    values = np.linspace(0, 1, 1000, dtype=np.float32)
    assert np.abs(from_stored(to_stored(values)) - values).max() <= 0.5 / 65535 + 1e-7


def test_atomic_write_leaves_the_old_file_when_the_writer_fails(tmp_path):
    dest = tmp_path / "table.parquet"
    atomic.write_parquet(dest, pd.DataFrame({"a": [1, 2]}))
    with pytest.raises(RuntimeError), atomic.atomic_path(dest) as tmp:
        tmp.write_bytes(b"half a file")
        raise RuntimeError("crash while writing")
    assert pd.read_parquet(dest)["a"].tolist() == [1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.parquet"]


def square_or_die(x: int) -> int:
    if x == 13:
        os._exit(1)  # what a segfaulting decoder looks like to the parent
    return x * x


def crashed(x: int, error: BaseException) -> int:
    return -x


def test_ordered_map_keeps_order_and_isolates_a_crashing_item():
    results = list(parallel.ordered_map(square_or_die, range(30), workers=2, on_crash=crashed, batch_size=3))
    assert results == [-13 if x == 13 else x * x for x in range(30)]


def test_submitting_to_a_pool_a_crash_already_broke_gives_a_failed_future_not_an_exception():
    # ordered_map refills its queue while results come back; when a worker has just crashed, the
    # refill must not raise out of the map (a corrupt file never stops a run): the failed future
    # is handled where results are read, by re-running what was lost
    from concurrent.futures.process import BrokenProcessPool

    pool = parallel._executor(1)
    try:
        with pytest.raises(BrokenProcessPool):
            pool.submit(square_or_die, 13).result()
        failed = parallel._submit(pool, square_or_die, 2)
        with pytest.raises(BrokenProcessPool):
            failed.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def test_ordered_map_in_process_baseline():
    assert list(parallel.ordered_map(abs, [-1, 2, -3], workers=1, on_crash=crashed)) == [1, 2, 3]
