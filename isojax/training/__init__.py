"""Training: the config and its resolved plan, the optimizer, the pure train step, the loop that runs it
across devices and hosts, checkpoints, metrics, preemption, and the workdir format every run writes."""
