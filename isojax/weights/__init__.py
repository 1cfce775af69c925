"""Weights from outside a training run: published files (`formats/`: vision_transformer and big_vision
`.npz`, timm, torch files read without torch) turned into isojax models (`pretrained`), and finished
isojax runs opened by name or path (`runs`, `isojax.load`)."""
