"""Training on several processes beyond plain DDP: FSDP2 sharding of sparse models
(:mod:`.fsdp`), sharded checkpoints (:mod:`.checkpoint`) and data parallelism for the sparse
kernel path (:mod:`.data_parallel`)."""
