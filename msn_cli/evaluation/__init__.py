"""``msn evaluate``: the paper's per-branch mIoU tables, slide scores, comparisons and figures.

mIoU (the definition every msn number uses; :mod:`msn_cli.metrics` computes it)
--------------------------------------------------------------------------------
One confusion matrix (rows: truth, columns: prediction) is accumulated over **every labelled
pixel** of everything evaluated: all patches of the split (store mode) or all pixels of the slide
(slide mode; "pooled" adds the matrices of all slides). Pixels whose truth is 255 (ignore:
outside the image, unannotated with ``--unannotated ignore``) are not counted. The IoU of class
c is TP / (TP + FP + FN) read off that matrix, and the mIoU is the mean IoU over the classes
that occur in the truth **or** in the prediction:

* a class absent from both has no IoU (``null`` in JSON, "-" in tables) and does not count;
* a class absent from the truth but predicted somewhere has IoU 0 and counts (false positives
  are punished);
* a class in the truth but never predicted has IoU 0 and counts.

Scores are accumulated over pixels, not averaged per patch or per slide, so a large slide
weighs more than a small one. The JSON holds fractions in 0..1; the tables print percent, like
the paper.

Store mode JSON (``msn evaluate --store S --checkpoints C --json FILE``)
------------------------------------------------------------------------
::

    {"kind": "store", "method": "MSN (bisenet)", "split": "test", "n_patches": 120,
     "classes": ["normal", ...], "params_m": 15.6, "fusion_params_m": 0.0137,
     "miou":      {"x1": 0.46, "x2": 0.47, "x3": 0.42, "fusion": 0.48,
                   "x2@y1": 0.44, "x3@y1": 0.39},
     "iou":       {"x1": [per class, null = absent], ..., "fusion": [...], "x2@y1": ...},
     "confusion": {"x1": [[truth x prediction counts]], ...},
     "pixels":    {"x1": labelled pixels counted, ...},
     "outputs": ["x1", "x2", "x3", "fusion"], "stages": ["meta", "memrm", "fusion"],
     "backbone": "bisenet", "fusion_type": "meta", "branches": "shared", "input": "x3",
     "checkpoints": "...", "store": "...", "schema_version": 1}

X1 is scored against Y1, X2 against Y2, X3 against Y3 and the fusion (in X1's frame) against
Y1. ``x2@y1`` and ``x3@y1`` score S2′ and S3′ against Y1 as well: X2's and X3's maps cropped to
X1's field of view and upsampled to X1's pixels (the maps the fusion takes in), so every branch
is also scored on the fusion's target. Every key of ``miou``/``iou``/``confusion``/``pixels``
(the four outputs and the two aligned maps) is present; its value is ``null`` where that output
does not exist yet (no Mem-RM: the meta-branch applied to X1, X2, X3, i.e. Table 3's
"Meta-branch" row; no fusion: ``fusion`` is null) or was not scored (``--outputs``; a
single-input baseline has only its own input's output, and ``x2@y1``/``x3@y1`` only with X2/X3).
Results written before ``x2@y1``/``x3@y1`` existed lack those keys; readers take them as null.

``params_m`` counts the parameters (in millions) of the parts the finished stages trained: the
meta-branch, plus the Mem-RMs, plus the fusion; for a finished MSN that is the whole model
(Table 1's "# Parm (M)"). For independent experts (``train-fusion --experts``) it is the three
experts plus the fusion. ``fusion_params_m`` is the fusion's own count (Table 5's "# F (M)"),
``null`` without one.

Slide mode JSON (``msn evaluate --pred mask.tif --truth labels --json FILE``)
------------------------------------------------------------------------------
::

    {"kind": "slides", "method": "...", "classes": [...], "n_slides": 2,
     "slides": [{"name", "pred", "truth", "slide", "size": [w, h], "miou", "iou",
                 "confusion", "pixels", "unpredicted_pixels"}, ...],
     "pooled": {"miou", "iou", "confusion", "pixels", "unpredicted_pixels"},
     "schema_version": 1}

``unpredicted_pixels`` counts labelled pixels the prediction marks 255 (e.g. outside the tissue
``predict`` segmented): they are left out of the matrix and reported so that they are seen.
"""

from __future__ import annotations

# OUTPUTS and TARGETS are defined in msn_cli.vocab; evaluation/report.py still imports them here.
from msn_cli.vocab import OUTPUTS, TARGETS

__all__ = ["OUTPUTS", "SCHEMA_VERSION", "TARGETS"]

SCHEMA_VERSION = 1
