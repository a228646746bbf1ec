"""Grain pipeline: batch contract, bucketing, process slices, shuffling, resume, bad records."""
import json
import shutil

import numpy as np
import pytest

from stiv_jax.data import pipeline, reader, schema, tfrecord, writer

N = 90  # records: 60 of 4 frames, 30 of 2 frames (bucket shares 2:1)


def _record(i: int) -> schema.ClipRecord:
  frames = 2 if i % 3 == 0 else 4
  rng = np.random.default_rng(i)
  mask = np.zeros(6, bool)
  mask[: 2 + i % 4] = True
  return schema.ClipRecord(
      latents=rng.standard_normal((frames, 4, 4, 3)).astype(np.float32),
      text=rng.standard_normal((6, 8)).astype(np.float32), text_mask=mask,
      pooled=rng.standard_normal(8).astype(np.float32),
      # crop_top carries the record number so tests can identify examples in a batch.
      micro={"orig_height": 32, "orig_width": 32, "crop_top": i, "crop_left": 0, "stride": 1,
             "num_frames": frames},
      caption=f"clip {i}", clip_id=f"c{i}")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("pipeline") / "ds"
  with writer.ShardWriter(str(path), target_shard_bytes=8000) as w:
    for i in range(N):
      w.write(_record(i))
  assert w.written_manifest["num_shards"] > 3
  return str(path)


def ids(batch) -> list[int]:
  return [int(v) for v in batch["micro"][:, 2]]


def take(it, n):
  return [next(it) for _ in range(n)]


def test_batch_contract(data_dir):
  it = pipeline.make_iterator({"path": data_dir}, seed=0, batch_size=5)
  b = next(it)
  assert set(b) == {"latents", "text", "text_mask", "pooled", "micro"}
  assert b["latents"].dtype == np.float32 and b["latents"].shape[0] == 5
  assert b["latents"].shape[1:] in ((2, 4, 4, 3), (4, 4, 4, 3))
  assert b["text"].shape == (5, 6, 8) and b["text"].dtype == np.float32
  assert b["text_mask"].shape == (5, 6) and b["text_mask"].dtype == bool
  assert b["pooled"].shape == (5, 8) and b["micro"].shape == (5, 6)
  assert b["micro"].dtype == np.float32
  i = ids(b)[0]
  ref = _record(i)
  np.testing.assert_allclose(b["latents"][0], ref.latents, atol=1e-2)
  np.testing.assert_array_equal(b["text_mask"][0], ref.text_mask)
  np.testing.assert_array_equal(b["micro"][0], ref.micro_vector())


def test_buckets_one_shape_per_batch_interleaved_by_share(data_dir):
  it = pipeline.make_iterator({"path": data_dir}, seed=1, batch_size=5)
  assert it.batches_per_epoch == 60 // 5 + 30 // 5
  frames = []
  for b in take(it, it.batches_per_epoch):
    got = {int(n) for n in b["micro"][:, 5]}
    assert len(got) == 1 and got == {b["latents"].shape[1]}
    frames.append(b["latents"].shape[1])
  assert frames.count(4) == 12 and frames.count(2) == 6
  # Interleaved by share: each half of the epoch has about half of each bucket.
  assert 2 <= frames[:9].count(2) <= 4


def test_epochs_reshuffle_and_cover(data_dir):
  it = pipeline.make_iterator({"path": data_dir}, seed=2, batch_size=5)
  e0 = sum((ids(b) for b in take(it, it.batches_per_epoch)), [])
  e1 = sum((ids(b) for b in take(it, it.batches_per_epoch)), [])
  assert sorted(e0) == sorted(e1) == list(range(N))  # 90 = 12*5 + 6*5: nothing dropped
  assert e0 != e1
  again = pipeline.make_iterator({"path": data_dir}, seed=2, batch_size=5)
  assert sum((ids(b) for b in take(again, 3)), []) == e0[:15]
  other = pipeline.make_iterator({"path": data_dir}, seed=3, batch_size=5)
  assert sum((ids(b) for b in take(other, 3)), []) != e0[:15]


def test_process_slices_disjoint_and_covering(data_dir):
  count, bs = 3, 2
  its = [pipeline.make_iterator({"path": data_dir}, seed=4, process_index=p,
                                process_count=count, batch_size=bs) for p in range(count)]
  seen = []
  for _ in range(its[0].batches_per_epoch):
    batches = [next(it) for it in its]
    assert len({b["latents"].shape for b in batches}) == 1  # same shape on every host
    step_ids = sum((ids(b) for b in batches), [])
    assert len(set(step_ids)) == count * bs
    seen += step_ids
  assert len(seen) == len(set(seen))  # disjoint over the epoch
  assert len(seen) == 60 // 6 * 6 + 30 // 6 * 6 == N  # covering


def test_resume_gives_exactly_the_next_batch(data_dir):
  cfg = {"path": data_dir}
  it = pipeline.make_iterator(cfg, seed=5, batch_size=4)
  take(it, 7)
  state = it.get_state()
  expected = take(it, 2)
  resumed = pipeline.make_iterator(cfg, seed=5, batch_size=4)
  resumed.set_state(state)
  for want, got in zip(expected, take(resumed, 2)):
    for k in want:
      np.testing.assert_array_equal(want[k], got[k])
  assert json.loads(state)["next_step"] == 7


def test_resume_across_worker_counts(data_dir):
  base = pipeline.make_iterator({"path": data_dir}, seed=6, batch_size=4)
  take(base, 3)
  state = base.get_state()
  want = [ids(b) for b in take(base, 3)]
  mp = pipeline.make_iterator({"path": data_dir, "worker_count": 2}, seed=6, batch_size=4)
  try:
    mp.set_state(state)
    assert [ids(b) for b in take(mp, 3)] == want
    state_mp = mp.get_state()
  finally:
    mp.close()
  back = pipeline.make_iterator({"path": data_dir, "read_threads": 0}, seed=6, batch_size=4)
  back.set_state(state_mp)
  assert ids(next(back)) == ids(next(base))


def test_orbax_checkpoint_round_trip(data_dir, tmp_path):
  import orbax.checkpoint as ocp
  it = pipeline.make_iterator({"path": data_dir}, seed=7, batch_size=3)
  take(it, 4)
  mngr = ocp.CheckpointManager(str(tmp_path / "ckpt"), item_names=("data",))
  mngr.save(4, args=ocp.args.Composite(data=pipeline.checkpoint_save_args(it)))
  mngr.wait_until_finished()
  want = ids(next(it))
  fresh = pipeline.make_iterator({"path": data_dir}, seed=7, batch_size=3)
  mngr.restore(4, args=ocp.args.Composite(data=pipeline.checkpoint_restore_args(fresh)))
  assert fresh.next_step == 4 and ids(next(fresh)) == want
  mngr.close()


def test_state_mismatch_refused(data_dir):
  state = pipeline.make_iterator({"path": data_dir}, seed=8, batch_size=4).get_state()
  other = pipeline.make_iterator({"path": data_dir}, seed=9, batch_size=4)
  with pytest.raises(ValueError, match="data.seed is 8 in the checkpoint but 9"):
    other.set_state(state)
  with pytest.raises(ValueError, match="format"):
    other.set_state(b'{"format": "x"}')


def test_finite_epochs_stop(data_dir):
  it = pipeline.make_iterator({"path": data_dir, "num_epochs": 1}, seed=0, batch_size=10)
  assert len(list(it)) == it.batches_per_epoch == 6 + 3


@pytest.fixture(scope="module")
def corrupt_dir(data_dir, tmp_path_factory):
  path = str(tmp_path_factory.mktemp("corrupt") / "ds")
  shutil.copytree(data_dir, path)
  ds = reader.open_dataset(path)
  victim = 10
  shard, offset = ds.location(victim)
  with open(shard, "r+b") as f:
    f.seek(offset + tfrecord.HEADER_BYTES + 20)
    b = f.read(1)
    f.seek(offset + tfrecord.HEADER_BYTES + 20)
    f.write(bytes([b[0] ^ 0xFF]))
  return path, shard, offset


def test_bad_record_fatal_names_file_and_offset(corrupt_dir):
  path, shard, offset = corrupt_dir
  it = pipeline.make_iterator({"path": path, "shuffle": False}, seed=0, batch_size=5)
  with pytest.raises(tfrecord.TFRecordError) as err:
    take(it, it.batches_per_epoch)
  assert err.value.path == shard and err.value.offset == offset


def test_bad_record_skip_counts(corrupt_dir):
  path, _, _ = corrupt_dir
  it = pipeline.make_iterator({"path": path, "bad_records": "skip"}, seed=0, batch_size=5)
  batches = take(it, it.batches_per_epoch)
  assert it.metrics()["data/bad_records"] == 1
  assert all(b["latents"].shape[0] == 5 for b in batches)
  assert 10 not in sum((ids(b) for b in batches), [])
  assert json.loads(it.get_state())["bad_records"] == 1


def test_config_errors(data_dir, tmp_path):
  with pytest.raises(reader.DatasetError, match=str(tmp_path / "missing")):
    pipeline.make_iterator({"path": str(tmp_path / "missing")}, seed=0, batch_size=2)
  with pytest.raises(ValueError, match="data.path: not set"):
    pipeline.make_iterator({}, seed=0, batch_size=2)
  with pytest.raises(ValueError, match="data.num_epochs: 0"):
    pipeline.make_iterator({"path": data_dir, "num_epochs": 0}, seed=0, batch_size=2)
  with pytest.raises(ValueError, match="data.bad_records"):
    pipeline.make_iterator({"path": data_dir, "bad_records": "ignore"}, seed=0, batch_size=2)
  with pytest.raises(reader.DatasetError, match="no bucket has a full global batch of 200"):
    pipeline.make_iterator({"path": data_dir}, seed=0, batch_size=100, process_count=2)
  cfg = pipeline.default_config()
  cfg.path = data_dir
  assert next(pipeline.make_iterator(cfg, seed=0, batch_size=2))["latents"].shape[0] == 2


def test_epoch_plan_interleave_is_proportional():
  bucket_of = np.array([0] * 300 + [1] * 100 + [2] * 20)
  plan, which = pipeline.epoch_plan(bucket_of, 3, seed=0, epoch=0, global_batch=10)
  assert plan.shape == (42, 10)
  assert all(len(set(bucket_of[row])) == 1 for row in plan)
  assert np.array_equal(bucket_of[plan[:, 0]], which)
  # In any window of 10 consecutive batches bucket 0 holds about 30/42 of them.
  for lo in range(0, 32, 4):
    assert 5 <= np.sum(which[lo: lo + 10] == 0) <= 9


def test_loader_examples_per_s(data_dir):
  rate = pipeline.loader_examples_per_s({"path": data_dir}, batch_size=5, num_batches=10)
  assert rate > 100


def test_holdout_is_fixed_excluded_from_training_and_served(data_dir):
  cfg = {"path": data_dir, "holdout": 12}
  held = pipeline.holdout_indices(N, 12)
  assert list(held) == list(pipeline.holdout_indices(N, 12)) and len(set(held)) == 12
  it = pipeline.make_iterator(cfg, seed=3, batch_size=6)
  seen = {i for b in take(it, it.batches_per_epoch) for i in ids(b)}
  it.close()
  assert not seen & set(held.tolist())  # never trained on, whatever data.seed
  batches = pipeline.held_out_batches(cfg, batch_size=5)
  got = [i for b in batches for i in ids(b)]
  assert sorted(got) == sorted(held.tolist())
  assert all(len({b["latents"].shape[1:]}) == 1 and b["caption"].shape == (len(ids(b)),)
             for b in batches)
  assert [c for b in batches for c in b["caption"]] == [f"clip {i}" for i in got]
  assert pipeline.held_out_batches({"path": data_dir}, batch_size=5) == []
  with pytest.raises(ValueError, match="data.holdout"):
    pipeline.make_iterator({"path": data_dir, "holdout": N}, seed=0, batch_size=6)
  with pytest.raises(ValueError, match="data.holdout"):
    pipeline.make_iterator({"path": data_dir, "holdout": -1}, seed=0, batch_size=6)
  # The iterator state records the holdout: a checkpoint restores only onto the same split.
  a = pipeline.make_iterator(cfg, seed=0, batch_size=6)
  b = pipeline.make_iterator({"path": data_dir, "holdout": 5}, seed=0, batch_size=6)
  with pytest.raises(ValueError, match="holdout"):
    b.set_state(a.get_state())
