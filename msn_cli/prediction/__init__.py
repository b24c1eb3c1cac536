"""The pieces of ``msn predict`` (the stage itself is :mod:`msn_cli.stages.predict`).

* :mod:`~msn_cli.prediction.config`: the run's settings (``PredictConfig``) and its slides
  (``PredictJob``).
* :mod:`~msn_cli.prediction.predictor`: the checkpoint, loaded once, as a batch function.
* :mod:`~msn_cli.prediction.bands`: who owns which level-0 pixel, the walk over a slide's bands
  (tissue, batching, worker threads) and the painter that fills one band at a time.
* :mod:`~msn_cli.prediction.partial`: ``<out>.partial/``, the finished bands of a run.
* :mod:`~msn_cli.prediction.assemble`: the TIFF, probabilities, GeoJSON and overlay.
"""
