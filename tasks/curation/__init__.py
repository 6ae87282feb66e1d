"""Curation behind the curate stage. The streamed driver is `stream.curate_pool`; the pool is
read by `shards` (tar / Parquet, hostile members quarantined) and written back by
`shard_writer`. Steps: `filters` and `language` (DataComp), `image_hash`, `dedup`, `near_dup`,
`semdedup`, `clip_score` (with `scoring_model`), `metadata`, `matching` and `balancing`
(MetaCLIP); `report` checks the row accounting and draws the head/tail figure."""
