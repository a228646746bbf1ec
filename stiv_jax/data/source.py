"""Grain random-access data source over all shards of a latent-shard dataset."""
from __future__ import annotations

from stiv_jax.data import reader as reader_lib
from stiv_jax.data import schema as schema_lib


class LatentShardSource:
  """`grain.sources.RandomAccessDataSource` of CRC-checked record bytes, by global index.

  Global index order is shard order then record order (the manifest's); the per-record byte
  offsets come from the index sidecars, so any record is one `pread` away. Picklable: Grain
  worker processes reopen the shard files lazily.
  """

  def __init__(self, path: str, *, check_crc: bool = True):
    self.dataset = reader_lib.open_dataset(path, check_crc=check_crc)

  def __len__(self) -> int:
    return len(self.dataset)

  def __getitem__(self, index: int) -> bytes:
    return self.dataset.read(int(index))

  def decode(self, index: int) -> schema_lib.ClipRecord:
    """The decoded record (schema and bucket checked; errors name file and offset)."""
    return self.dataset.decode(int(index))

  def __repr__(self) -> str:
    return (f"LatentShardSource({self.dataset.root!r}, records={len(self)}, "
            f"shards={len(self.dataset.shard_paths)})")
