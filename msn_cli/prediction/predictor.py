"""The checkpoint, loaded once, and the output that becomes the mask."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from msn_cli.errors import MsnError
from msn_cli.io.checkpoints import CheckpointDir
from msn_cli.io.slide import fingerprint
from msn_cli.prediction.config import PredictConfig


class Predictor:
    """The checkpoint, loaded once, and the output that becomes the mask."""

    def __init__(self, config: PredictConfig) -> None:
        import torch

        from msn_cli.inference import available_outputs
        from msn_cli.runtime import configure_threads, resolve_device

        ck = CheckpointDir(config.checkpoints)
        card = ck.read_card()
        if int(card.model.get("num_classes", -1)) != len(card.classes):
            raise MsnError(ck.model_json, "class names and num_classes disagree")
        if config.classes is not None and [c.lower() for c in config.classes] != [
            c.lower() for c in card.classes
        ]:
            raise MsnError(
                ck.path,
                f"trained for classes {', '.join(card.classes)}, not {', '.join(config.classes)}",
            )
        if not ck.completed():
            ck.require("meta")  # names the command to run
        self.device = resolve_device(config.device)
        configure_threads(self.device)
        torch.backends.cudnn.benchmark = self.device.type == "cuda"
        try:
            self.model, self.stages = ck.load_model(self.device, weights=config.weights)
        except MsnError as exc:  # torch's load_state_dict message spans many lines
            text = " ".join(exc.message.split())
            raise MsnError(None, text if len(text) < 400 else text[:397] + "...") from exc
        outputs = available_outputs(self.stages, card.input)
        if not outputs:  # later stages without the meta-branch they were built on
            ck.require("meta")
        branch = config.branch or ("fusion" if "fusion" in outputs else outputs[0])
        if branch not in outputs:
            raise MsnError(
                ck.path,
                f"--branch {branch}: this checkpoint predicts {', '.join(outputs)} "
                f"(finished stages: {', '.join(self.stages)})",
            )
        self.card, self.branch, self.amp = card, branch, config.amp
        self.classes = list(card.classes)
        self.patch_size = card.patch_size
        #: The file each stage's weights came from (``--weights``).
        self.files = dict(ck.loaded)
        h = hashlib.sha256(ck.model_json.read_bytes())
        for name, path in self.files.items():
            h.update(f"{name}:{fingerprint(path)};".encode())
        self.key = h.hexdigest()[:32]

    def __call__(self, xs: Sequence[np.ndarray], probabilities: bool):
        """uint8 triplets ``(n, P, P, 3)`` -> labels ``(n, P, P)`` uint8 in X1's frame and,
        when asked, softmax probabilities ``(n, C, P, P)`` float16."""
        import torch

        from msn_cli.inference import run_branches
        from msn_cli.runtime import autocast, to_input

        p = self.patch_size
        with torch.inference_mode(), autocast(self.device, self.amp):
            ts = [
                to_input(
                    torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2),
                    self.device,
                    normalize=self.card.normalize,
                )
                for x in xs
            ]
            logits = run_branches(self.model, self.stages, self.card, *ts, outputs=(self.branch,))[
                self.branch
            ]
            if self.branch in ("x2", "x3"):
                logits = self.model.align(logits, self.branch, (p, p))
            if tuple(logits.shape[-2:]) != (p, p):
                raise MsnError(None, f"model output {tuple(logits.shape)} is not {p}x{p}")
            labels = logits.argmax(1).to(torch.uint8).cpu().numpy()
            probs = logits.float().softmax(1).half().cpu().numpy() if probabilities else None
        return labels, probs
