"""The eager PyTorch model as a runner (``exporter.runtime.Runner``), so verify and bench run
it as they run every artifact: the model's feeds (BGR 0..255) in, ``pha`` and ``fgr`` out,
every further output an artifact may have (``err_sm`` and ``ref_sm`` of MattingRefine;
``err`` and ``hid`` of MattingBase), and ``ref``, the map of refined patches (none for
MattingBase), which verification compares patch by patch.
"""

from __future__ import annotations

import numpy as np
import torch

from exporter.config import ExportConfig
from exporter.runtime import Feeds, Runner

__all__ = ["EagerRunner"]


class EagerRunner(Runner):
    runtime = "torch"

    def __init__(self, model: torch.nn.Module, config: ExportConfig, label: str) -> None:
        super().__init__(label, {"checkpoint": label}, (1, 3, config.height, config.width))
        self.model = model.eval()
        self.config = config

    @property
    def name(self) -> str:
        return "eager PyTorch"

    def infer(self, feeds: Feeds) -> dict[str, np.ndarray]:
        # The original takes RGB 0..1; the feeds are BGR 0..255 (the exported model reverses
        # and scales inside its graph).
        src, bgr = (torch.from_numpy(np.ascontiguousarray(feeds[name][:, ::-1]) / 255) for name in ("src", "bgr"))
        with torch.no_grad():
            outputs = self.model(src.float(), bgr.float())
        if self.config.model_type == "base":
            pha, fgr, err, hid = (t.numpy() for t in outputs)
            ref = np.zeros((pha.shape[0], 1, pha.shape[2] // 4, pha.shape[3] // 4), np.float32)
            return {"pha": pha, "fgr": fgr, "err": err, "hid": hid, "ref": ref}
        pha, fgr, _, _, err_sm, ref_sm = (t.numpy() for t in outputs)
        return {"pha": pha, "fgr": fgr, "err_sm": err_sm, "ref_sm": ref_sm, "ref": ref_sm}
