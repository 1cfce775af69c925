"""Training: the optimizer (`optim`), the pure train step (`train_step`), the loop that runs it across devices
and hosts (`loop`), a config resolved before it trains (`plan`), metrics for files and people (`metrics`),
stopping on a signal (`preemption`), and the step's speed and memory (`benchmark`)."""
