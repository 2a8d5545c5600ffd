"""Training: the run's setup, the jitted steps, sharding, checkpoints, the run folder and the trainer."""
