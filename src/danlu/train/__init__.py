"""Training: one loop; objectives; packing; mixing; checkpoints; distributed."""
