"""Segmentation metrics: one confusion matrix, IoU per class, mIoU.

:class:`ConfusionMatrix` is the matrix (numpy); :class:`DeviceConfusion` fills the same one on
a torch device during training validation.

Definition (used by every stage, ``evaluate`` and the README): the confusion matrix is
accumulated over every labelled pixel (truth != 255) of everything evaluated; IoU of class c is
TP / (TP + FP + FN); mIoU is the mean over the classes that occur in the truth or in the
prediction. A class absent from both has no IoU (NaN, ``null`` in JSON) and does not count;
a class present in only one of them has IoU 0.

Example:
    >>> cm = ConfusionMatrix(3)
    >>> cm.update(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 255]))
    >>> cm.matrix.tolist()
    [[1, 0, 0], [0, 1, 0], [0, 1, 0]]
    >>> [round(float(v), 3) for v in cm.iou()], round(cm.miou(), 3)
    ([1.0, 0.5, 0.0], 0.5)
"""

from __future__ import annotations

import numpy as np

from msn_cli.vocab import IGNORE


class ConfusionMatrix:
    """Rows: truth; columns: prediction. Accepts numpy arrays or torch tensors."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE) -> None:
        if num_classes < 1:
            raise ValueError("num_classes must be >= 1")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, pred, target) -> None:
        p, t = _numpy(pred).ravel(), _numpy(target).ravel()
        if p.shape != t.shape:
            raise ValueError(f"prediction has {p.size} pixels, truth {t.size}")
        keep = t != self.ignore_index
        p, t = p[keep].astype(np.int64), t[keep].astype(np.int64)
        n = self.num_classes
        bad = (t < 0) | (t >= n) | (p < 0) | (p >= n)
        if bad.any():
            raise ValueError(f"labels outside 0..{n - 1} (other than {self.ignore_index})")
        self.matrix += np.bincount(t * n + p, minlength=n * n).reshape(n, n)

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        self.matrix += other.matrix
        return self

    def iou(self) -> np.ndarray:
        """IoU per class; NaN for a class absent from truth and prediction."""
        tp = np.diag(self.matrix).astype(np.float64)
        union = self.matrix.sum(0) + self.matrix.sum(1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, tp / np.maximum(union, 1), np.nan)

    def miou(self) -> float:
        """Mean IoU over present classes (NaN when nothing was labelled)."""
        iou = self.iou()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")

    @property
    def pixels(self) -> int:
        return int(self.matrix.sum())


class DeviceConfusion:
    """The same matrix accumulated on a torch device from logits, with no sync per batch
    (training validation); :meth:`result` brings it back as a :class:`ConfusionMatrix`."""

    def __init__(self, num_classes: int, device) -> None:
        import torch

        self.n = num_classes
        self.counts = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)

    def update(self, logits, target) -> None:
        """Add a batch: ``logits`` (B, Nc, H, W), ``target`` (B, H, W) class indices."""
        import torch

        with torch.no_grad():
            pred = logits.argmax(1).flatten()
            t = target.flatten()
            keep = t != IGNORE
            idx = t[keep] * self.n + pred[keep]
            self.counts += torch.bincount(idx, minlength=self.n * self.n)

    def result(self, ctx=None) -> ConfusionMatrix:
        """The matrix, summed over processes by ``ctx.all_sum`` (a training Context) if given."""
        counts = self.counts if ctx is None else ctx.all_sum(self.counts)
        cm = ConfusionMatrix(self.n)
        cm.matrix += counts.cpu().numpy().reshape(self.n, self.n)
        return cm


def _numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)
