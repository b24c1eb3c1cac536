"""The words every layer of msn shares: branch, label and output names, the ignore label.

The ground floor of the package: it imports nothing, so any module (store, models, training,
evaluation, prediction, the CLI) can use it without an import circle. A name defined here is
defined nowhere else.

Example:
    >>> [TARGETS[o] for o in OUTPUTS]
    ['y1', 'y2', 'y3', 'y1']
"""

from __future__ import annotations

#: Label of pixels outside the image or unannotated; never a class. Losses and metrics skip it.
IGNORE = 255

#: The three inputs, finest first: X1 (base resolution), X2, X3 (the widest field of view).
BRANCHES = ("x1", "x2", "x3")

#: Each branch's labels, at that branch's own scale and pixels.
LABELS = ("y1", "y2", "y3")

#: What an MSN predicts: one segmentation per branch and their fusion (the paper's S1, S2, S3
#: and the fused map).
OUTPUTS = (*BRANCHES, "fusion")

#: The label each output is scored against: a branch against its own labels, the fusion
#: against Y1 (it predicts at X1's pixels).
TARGETS: dict[str, str] = {"x1": "y1", "x2": "y2", "x3": "y3", "fusion": "y1"}

#: S2′ and S3′: the X2 and X3 branches' maps aligned into X1's frame (up(crop(S)), as the
#: fusion sees them), scored against Y1 like the fusion; each one's key in a store result.
ALIGNED: dict[str, str] = {"x2": "x2@y1", "x3": "x3@y1"}

#: The label key of each branch.
LABEL_OF: dict[str, str] = dict(zip(BRANCHES, LABELS, strict=True))
