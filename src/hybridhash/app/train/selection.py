"""Model selection of a training run: the scores computed after an epoch, with labels (val or query
mAP) and without (the label-free copy score, :mod:`hybridhash.metrics.copies`), as a mixin of the
:class:`~.loop.Trainer`."""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np

from ... import metrics as M
from ...engines.encoding import encode_images
from ..evaluation import class_ids_or_multihot, copy_score
from .recipe import selection_metric


class Selection:
    """What a trainer scores its epochs with; needs its ``config``, ``protocol``, ``model``, ``cache``,
    ``preprocess``, ``eval_transform``, ``device``, ``amp`` and ``labelled``."""

    @property
    def metric_name(self) -> str:
        """The score that selects the best epoch: the label-free one on data without labels or when asked."""
        return selection_metric(self.config.select_on, self.labelled)

    def _train_images(self):
        """The training images through the evaluation pipeline, (B, 3, H, W) batches on the device."""
        if self.cache is not None:
            for i in range(0, self.cache.images.shape[0], self.config.eval_batch_size):
                yield self.cache.images[i:i + self.config.eval_batch_size].to(self.device)
            return
        from torch.utils.data import DataLoader

        ds = self.protocol.train.with_transform(self.eval_transform)
        for x, _, _ in DataLoader(ds, batch_size=self.config.eval_batch_size, num_workers=self.config.workers):
            yield x.to(self.device)

    # ----------------------------------------------------------------------------------------
    def _encode(self, name: str) -> np.ndarray:
        c = self.config
        if name == "train" and self.cache is not None:
            data = self.cache.images
        else:
            data = getattr(self.protocol, name).with_transform(self.eval_transform)
        return encode_images(self.model, data, batch_size=c.eval_batch_size, device=self.device,
                             workers=c.workers, amp=self.amp)

    def copy_score(self, val_codes: Optional[np.ndarray] = None) -> float:
        """The label-free score: each validation image's fixed augmented copy retrieved among the
        validation originals (:func:`hybridhash.metrics.copy_retrieval_map`)."""
        c = self.config
        originals = self._encode("val") if val_codes is None else val_codes
        return copy_score(self.model, self.protocol.val, seed=c.seed, batch_size=c.eval_batch_size,
                          device=self.device, workers=c.workers, dataset_name=self.protocol.name,
                          originals=originals, amp=self.amp, preprocess=self.preprocess)["copy_map"]

    def scores(self) -> Dict[str, float]:
        """The selection scores of this epoch: ``val_map`` or ``query_map`` (labelled data), and with
        ``select_on`` "val" or "copy" the label-free ``val_copy_map`` (logged beside the true one)."""
        if self.config.select_on == "query":
            return {"query_map": self.select_metric()}
        val = self._encode("val")
        out = {"val_map": self.select_metric(val)} if self.labelled else {}
        out["val_copy_map"] = self.copy_score(val)
        return out

    def select_metric(self, val_codes: Optional[np.ndarray] = None) -> float:
        """mAP of labelled data: val queries against the training images (``select_on`` "val" / "copy"),
        or the protocol's queries against its database (``"query"``), at the protocol's K."""
        p = self.protocol
        if self.config.select_on != "query":
            q, d = self._encode("val") if val_codes is None else val_codes, self._encode("train")
            ql, dl = p.val.labels, p.train.labels
        else:
            q, d = self._encode("query"), self._encode("database")
            ql, dl = p.query.labels, p.database.labels
        ql, dl = class_ids_or_multihot(ql, p.multi_label), class_ids_or_multihot(dl, p.multi_label)
        return M.mean_average_precision(q, d, ql, dl, topk=p.topk)

