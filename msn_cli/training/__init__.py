"""Shared machinery of the three training stages (``msn train-meta``, ``train-memrm``,
``train-fusion``): the run context (device, threads, precision, DDP), data loading and
augmentation, the on-disk cache of frozen outputs, the resumable epoch loop, the gap-layer
analysis and the figures. Imports torch: only ever imported inside a command's body.

* :mod:`~msn_cli.training.context`: device, threads, AMP, torchrun/DDP (rank 0 writes).
* :mod:`~msn_cli.training.data`: augmentation, the fit set (with hold-out), loaders.
* :mod:`~msn_cli.training.cache`: float16 ``.npy`` memmaps of frozen features/outputs.
* :mod:`~msn_cli.training.trainer`: :class:`~msn_cli.training.trainer.Trainer`, the one
  resumable loop (restart, resume, config, epochs with validation, per-epoch atomic
  ``last.pt``, history, curves, final weights) that runs what a stage declares
  (:class:`~msn_cli.training.trainer.Plan`).
* :mod:`~msn_cli.training.loop`: one epoch (``fit_epoch``), the loss, validation.
* :mod:`~msn_cli.training.alternate`: what ``train-fusion --alternate`` declares.
* :mod:`~msn_cli.training.gaps`: the gap-layer analysis of the paper's Fig. 1.
"""
