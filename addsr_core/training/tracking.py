"""Metrics and images: TensorBoard when installed, always ``metrics.jsonl``; main process only.

TensorBoard is optional (the ``train`` extra installs it). Without it, training still runs: the
scalars go to ``<output_dir>/metrics.jsonl``, images to ``<output_dir>/samples/*.png``, and one
message says how to get TensorBoard.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

TENSORBOARD_MISSING = (
    "TensorBoard is not installed, so metrics go to {dir}/metrics.jsonl and images to {dir}/samples/ only. "
    "To get TensorBoard logs: pip install tensorboard  (or pip install 'addsr-diffusion-sr[train]')."
)


def _summary_writer(log_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter  # imports tensorboard; ImportError when absent
    except ImportError:
        return None
    return SummaryWriter(str(log_dir))


class Tracker:
    def __init__(self, output_dir, enabled: bool = True, report_to: str = "tensorboard", stream=None):
        self.dir = Path(output_dir)
        self.enabled = enabled
        self.writer = None
        self.stream = stream if stream is not None else sys.stderr
        self.message = None
        if not enabled:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        if report_to == "tensorboard":
            self.writer = _summary_writer(self.dir / "tensorboard")
            if self.writer is None:
                self.message = TENSORBOARD_MISSING.format(dir=self.dir)
                print(self.message, file=self.stream)

    def scalars(self, values: dict, step: int) -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in values.items()}
        with open(self.dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": int(step), **clean}) + "\n")
        if self.writer is not None:
            for k, v in clean.items():
                self.writer.add_scalar(k, v, step)

    def images(self, name: str, images01: torch.Tensor, step: int) -> None:
        """[B,3,H,W] in [0,1] side by side, to TensorBoard and/or ``samples/<name>-<step>.png``."""
        if not self.enabled:
            return
        grid = torch.cat(list(images01.detach().float().clamp(0, 1).cpu()), dim=-1)  # [3,H,B*W]
        if self.writer is not None:
            self.writer.add_image(name, grid, step)
        else:
            from PIL import Image

            out = self.dir / "samples"
            out.mkdir(parents=True, exist_ok=True)
            arr = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            Image.fromarray(arr).save(out / f"{name.replace('/', '_')}-{int(step):08d}.png")

    def text(self, name: str, text: str, step: int) -> None:
        if self.enabled and self.writer is not None:
            self.writer.add_text(name, text, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
            self.writer = None
