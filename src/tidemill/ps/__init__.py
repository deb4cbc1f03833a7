"""Parameter servers: sharded, collision-free embedding tables trained by sparse optimizers."""
