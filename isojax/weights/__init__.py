"""Weights from outside a training run: weight files read into tensors (`files`, `torchfile`; what the tensors
mean is each family's reader, in its own file), models built and filled from them (`pretrained`), and finished
isojax runs opened by path (`runs`, `isojax.load`)."""
