"""PyTorch reader: an IterableDataset over a split's shards, without TensorFlow. It reads ed_cxr outputs (another
cohort's is refused before any record is read: use readers.tf_data for those).

    from torch.utils.data import DataLoader
    from beam_pipeline.readers.pytorch import MimicCxrEdDataset
    data = MimicCxrEdDataset("OUTPUT", "train", normalization="imagenet")
    loader = DataLoader(data, batch_size=32, num_workers=4, collate_fn=data.collate)
    for batch in loader:
        logits = model(batch["image"], batch["input_ids"], batch["attention_mask"])  # image float32 [B,3,size,size]
        loss = masked_bce_with_logits(logits, batch["labels"], batch["mask"])

``collate`` pads token ids with the tokenizer's pad id and adds attention masks; everything else is stacked by
PyTorch's default collate. ``labels`` and ``mask`` are float32 [B, 14] in ``label_order``: ``labels`` is 1 or 0 where
``mask`` is 1 and -1 where it is 0 (an uncertain label under ``--uncertain_policy=ignore``; every label of an
unlabelled study, whose ``labels_present`` is 0), so a loss that ignores the mask never trains on a silent 0.
``masked_bce_with_logits`` averages over the valid labels only. ``supervised=True`` yields ``(image, labels, mask)``
tuples instead of dicts (PyTorch's default collate batches them).

Each DataLoader worker of each process reads its own share: whole shards when there are at least as many shards as
readers (worker ``w`` of ``W`` in process ``r`` of ``R`` takes shards ``r*W + w``, step ``R*W``), else every reader
walks all shards and keeps every ``R*W``-th record. Processes come from ``torch.distributed`` when it is
initialised, or from ``rank``/``world_size``. Every record is read by exactly one reader per pass; order within a
reader is the shard order (shuffle with a buffer or by shard if you need it). DataLoader workers are forked: in a
process that has also loaded TensorFlow or gRPC, pass ``multiprocessing_context="spawn"`` (a forked child can abort in
their thread code).
"""

from __future__ import annotations

from typing import Iterator

import cv2
import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import IterableDataset, default_collate, get_worker_info

from beam_pipeline.fileio.tfrecord import parse_example, read_records
from beam_pipeline.readers.common import open_run, require_cohort, shard_files
from beam_pipeline.readers.normalization import mean_std

_TENSORS = {"labels/binary": ("labels", torch.float32), "labels/mask": ("mask", torch.float32),
            "labels/chexpert": ("labels_raw", torch.float32), "features/values": ("features", torch.float32),
            "features/missing": ("features_missing", torch.float32)}
_IDS = ("subject_id", "study_id", "stay_id")
_SCALARS = {"labels/present": "labels_present", "after_ed_departure": "after_ed_departure",
            "hours_from_arrival": "hours_from_arrival"}
_TEXT = {"labels/status": "labels_status", "study_datetime": "study_datetime", "ed_outtime": "ed_outtime"}


def masked_bce_with_logits(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy on logits averaged over the labels whose mask is 1 (0 when there are none). The -1
    stored where the mask is 0 never enters the loss."""
    losses = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels.clamp(min=0), reduction="none")
    return (losses * mask).sum() / mask.sum().clamp(min=1)
_TOKENS = {"note/input_ids": "input_ids", "note/enhanced_input_ids": "enhanced_input_ids"}


class MimicCxrEdDataset(IterableDataset):
    def __init__(self, output: str, split: str, *, normalization: str = "imagenet", channels: int = 3,
                 rank: int | None = None, world_size: int | None = None, supervised: bool = False):
        super().__init__()
        folder, metadata = open_run(output)
        require_cohort(metadata, output, "MimicCxrEdDataset (beam_pipeline.readers.pytorch)")
        if metadata["image"] is None:
            raise ValueError(f"{output} was built with --images=false: there is no image to decode")
        self.files = shard_files(folder, split, metadata)
        self.num_records = metadata["counts"]["per_split"][split]
        mean, std = mean_std(normalization, channels)
        self._mean = np.asarray(mean, np.float32).reshape(-1, 1, 1)
        self._std = np.asarray(std, np.float32).reshape(-1, 1, 1)
        self._channels = channels
        self._rank, self._world_size = rank, world_size
        self._supervised = supervised
        self._pad_id = metadata["text"]["tokenizer"]["pad_token_id"] or 0

    def _reader(self) -> tuple[int, int]:
        """(index, count) of this reader among all DataLoader workers of all processes."""
        if self._world_size is not None:
            rank, world = self._rank or 0, self._world_size
        elif torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        else:
            rank, world = 0, 1
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        return rank * workers + worker, world * workers

    def __iter__(self) -> Iterator[dict]:
        index, count = self._reader()
        by_shard = len(self.files) >= count
        files = self.files[index::count] if by_shard else self.files
        position = 0
        for path in files:
            for raw in read_records(path):
                if by_shard or position % count == index:
                    sample = self._sample(parse_example(raw))
                    yield (sample["image"], sample["labels"], sample["mask"]) if self._supervised else sample
                position += 1

    def _sample(self, example: dict) -> dict:
        pixels = cv2.imdecode(np.frombuffer(example["image/encoded"][0], np.uint8), cv2.IMREAD_GRAYSCALE)
        image = np.repeat(pixels[None].astype(np.float32) / 255.0, self._channels, axis=0)
        sample = {"image": torch.from_numpy((image - self._mean) / self._std),
                  "dicom_id": example["dicom_id"][0].decode(), "split": example["split"][0].decode(),
                  "note": example["note/text"][0].decode("utf-8")}
        sample.update({name: example[name][0] for name in _IDS})
        sample.update({key: example[name][0] for name, key in _SCALARS.items() if name in example})
        sample.update({key: example[name][0].decode() for name, key in _TEXT.items() if name in example})
        sample.update({key: torch.tensor(example[name], dtype=dtype) for name, (key, dtype) in _TENSORS.items()})
        sample.update({key: torch.tensor(example[name], dtype=torch.long) for name, key in _TOKENS.items()
                       if name in example})
        if "rag/ids" in example:
            sample.update(enhanced_note=example["note/enhanced"][0].decode("utf-8"),
                          rag_ids=[i.decode() for i in example["rag/ids"]],
                          rag_scores=torch.tensor(example["rag/scores"], dtype=torch.float32))
        return sample

    def collate(self, samples: list[dict]) -> dict:
        """Pad token ids to the longest in the batch (+ attention masks); rag_ids stay a list per sample.
        Supervised (image, labels, mask) tuples are simply stacked."""
        if isinstance(samples[0], tuple):
            return default_collate(samples)
        batch = {}
        for key in (k for k in _TOKENS.values() if k in samples[0]):
            sequences = [s[key] for s in samples]
            batch[key] = pad_sequence(sequences, batch_first=True, padding_value=self._pad_id)
            batch[key.replace("input_ids", "attention_mask")] = pad_sequence(
                [torch.ones_like(s) for s in sequences], batch_first=True)
        if "rag_ids" in samples[0]:
            batch["rag_ids"] = [s["rag_ids"] for s in samples]
        rest = [{k: v for k, v in s.items() if k not in batch} for s in samples]
        return {**default_collate(rest), **batch}

    def __len__(self) -> int:
        """Records in the split (all readers together), for progress bars."""
        return self.num_records
