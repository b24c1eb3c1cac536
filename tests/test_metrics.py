"""The one confusion matrix: filled from numpy arrays or, on a torch device, from logits."""

from __future__ import annotations

import numpy as np
import torch

from msn_cli.metrics import ConfusionMatrix, DeviceConfusion
from msn_cli.vocab import IGNORE


def test_device_confusion_equals_the_numpy_matrix():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 8, 8, generator=gen)
    target = torch.randint(0, 4, (3, 8, 8), generator=gen).to(torch.uint8)
    target[0, :2] = IGNORE
    device = DeviceConfusion(4, "cpu")
    device.update(logits, target.long())
    device.update(logits[:1], target[:1].long())
    numpy = ConfusionMatrix(4)
    for lo, t in ((logits, target), (logits[:1], target[:1])):
        numpy.update(lo.argmax(1).numpy(), t.numpy())

    class Summing:  # what a training Context does across processes: here, twice the counts
        def all_sum(self, t):
            return 2 * t

    np.testing.assert_array_equal(device.result().matrix, numpy.matrix)
    np.testing.assert_array_equal(device.result(Summing()).matrix, 2 * numpy.matrix)
    assert device.result().pixels == 4 * 64 - 2 * 16  # sample 0, twice, has 16 ignored pixels
