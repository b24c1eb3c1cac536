"""Shared machinery of the three training stages (``msn train-meta``, ``train-memrm``,
``train-fusion``): the run context (device, threads, precision, DDP), data loading and
augmentation, the on-disk cache of frozen outputs, the resumable epoch loop, the gap-layer
analysis and the figures. Imports torch: only ever imported inside a command's body.

* :mod:`~msn_cli.training.context`: device, threads, AMP, torchrun/DDP (rank 0 writes).
* :mod:`~msn_cli.training.data`: augmentation, the fit set (with hold-out), loaders.
* :mod:`~msn_cli.training.cache`: float16 ``.npy`` memmaps of frozen features/outputs.
* :mod:`~msn_cli.training.loop`: :class:`~msn_cli.training.loop.StageRun` (resume, per-epoch
  atomic ``last.pt``, history, curves), the loss, validation.
* :mod:`~msn_cli.training.gaps`: the gap-layer analysis of the paper's Fig. 1.
"""
