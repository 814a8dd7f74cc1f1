"""Training data: HR folders degraded on the fly, or paired folders made offline; tags as prompts.

Both datasets return the same sample::

    {"gt": [3,R,R] in [0,1],      # target (USM-sharpened in the official recipe)
     "cond": [3,R,R] in [0,1],    # ControlNet condition: LR bicubic-upsampled to R (``sr_bicubic``)
     "prompt": str,               # RAM tags, or "" with probability ``null_text_ratio``
     "path": str, "skipped": [paths that failed to decode and were replaced]}

Determinism: ``ResumableSampler`` yields ``(index, seed)``; everything random about a sample (crop,
flip, degradation, empty prompt) comes from that seed, so samples do not depend on worker count or
process, and the sampler's ``state_dict`` resumes the stream exactly.

Bad files never crash training: unreadable or tiny images are found by a header scan when the
dataset is built (``report()`` lists them); a file that still fails to decode later is replaced by
the next good one and named in the sample's ``skipped`` list.

Paired folders are matched by file stem after sorting (the official ``PairedCaptionDataset`` zips
three unsorted ``glob`` lists, which can pair an LR with another image's GT).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import AddSRError
from ..imaging.prepare import load_image
from .config import DataConfig
from .degradation import degrade, quantize_uint8, upsample_condition

RAM_MEAN = (0.485, 0.456, 0.406)
RAM_STD = (0.229, 0.224, 0.225)
_REPORT_EXAMPLES = 20


class DataError(AddSRError):
    """A dataset that cannot be built, with what to fix."""


# --------------------------------------------------------------------------------------------- #
# Report of what was skipped
# --------------------------------------------------------------------------------------------- #
@dataclass
class DataReport:
    found: int = 0
    used: int = 0
    skipped: dict = field(default_factory=dict)  # reason -> list of paths
    missing_tags: int = 0

    def skip(self, reason: str, path: str) -> None:
        self.skipped.setdefault(reason, []).append(str(path))

    @property
    def skipped_count(self) -> int:
        return sum(len(v) for v in self.skipped.values())

    def summary(self) -> str:
        lines = [f"{self.used} of {self.found} images usable; {self.skipped_count} skipped."]
        for reason, paths in sorted(self.skipped.items()):
            shown = ", ".join(paths[:3]) + (" ..." if len(paths) > 3 else "")
            lines.append(f"  {reason}: {len(paths)} ({shown})")
        if self.missing_tags:
            lines.append(f"  {self.missing_tags} images have no tags (they train with an empty prompt).")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "found": self.found,
            "used": self.used,
            "missing_tags": self.missing_tags,
            "skipped": {k: len(v) for k, v in self.skipped.items()},
            "examples": {k: v[:_REPORT_EXAMPLES] for k, v in self.skipped.items()},
        }


# --------------------------------------------------------------------------------------------- #
# Files, tags, per-sample randomness
# --------------------------------------------------------------------------------------------- #
def list_images(folder: str | os.PathLike, extensions: Sequence[str]) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"Image folder not found: {str(folder)!r}.")
    exts = tuple(e.lower() for e in extensions)
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in exts)


def probe_size(path: Path) -> tuple[int, int]:
    """(height, width) from the file header, without decoding the pixels."""
    with Image.open(path) as im:
        w, h = im.size
    return h, w


def load_tags(source: str | os.PathLike | None) -> dict[str, str]:
    """stem -> tag string, from a folder of ``<stem>.txt`` or a ``.json``/``.jsonl`` file."""
    if not source:
        return {}
    path = Path(source)
    if path.is_dir():
        return {p.stem: p.read_text(encoding="utf-8").strip() for p in sorted(path.glob("*.txt"))}
    if not path.is_file():
        raise DataError(f"Tag source not found: {str(path)!r} (a folder of <stem>.txt or a .json/.jsonl file).")
    if path.suffix.lower() == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise DataError(f"{str(path)!r} must map image stems (or file names) to tag strings.")
        return {Path(k).stem: _tag_text(v, path) for k, v in data.items()}
    if path.suffix.lower() == ".jsonl":
        tags = {}
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            row = json.loads(line)
            name = row.get("file") or row.get("image") or row.get("stem")
            if name is None or "tags" not in row:
                raise DataError(f"{str(path)!r} line {n}: each line needs 'file' (or 'stem') and 'tags'.")
            tags[Path(name).stem] = _tag_text(row["tags"], path)
        return tags
    raise DataError(f"Tag file {str(path)!r} must be .json or .jsonl (or pass a folder of .txt files).")


def _tag_text(value, path) -> str:
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return ", ".join(value)
    raise DataError(f"Tags in {str(path)!r} must be strings or lists of strings, got {value!r}.")


def sample_seed(base_seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([base_seed, epoch, index]).generate_state(1, dtype=np.uint64)[0] >> 1)


def sample_rngs(seed: int) -> tuple[np.random.Generator, torch.Generator]:
    return np.random.default_rng(seed), torch.Generator().manual_seed(seed)


class ResumableSampler(torch.utils.data.Sampler):
    """Yields ``(index, sample_seed)``: a seeded shuffle per epoch, sharded over ``num_replicas``.

    ``state_dict()`` records (epoch, position); loading it continues the stream where it stopped.
    Every rank sees ``ceil(n / num_replicas)`` samples per epoch (the permutation wraps around).
    """

    def __init__(self, length: int, seed: int, shuffle: bool = True, num_replicas: int = 1, rank: int = 0):
        if length < 1:
            raise DataError("The dataset is empty: no usable images were found (see the data report).")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} must be in [0, {num_replicas}).")
        self.length, self.seed, self.shuffle = length, int(seed), shuffle
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch = 0
        self.position = 0  # samples of this rank already yielded in this epoch

    def __len__(self) -> int:
        return -(-self.length // self.num_replicas)

    def _order(self, epoch: int) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(self.length, generator=g).tolist()
        else:
            order = list(range(self.length))
        total = len(self) * self.num_replicas
        order = (order * (total // self.length + 1))[:total]
        return order[self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self._order(self.epoch)
        while self.position < len(order):
            index = order[self.position]
            self.position += 1
            yield index, sample_seed(self.seed, self.epoch, index)
        self.epoch += 1
        self.position = 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: Mapping) -> None:
        if int(state["seed"]) != self.seed:
            raise ValueError(f"sampler seed {state['seed']} in the checkpoint differs from the configured {self.seed}.")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


def _unpack(item) -> tuple[int, int]:
    if isinstance(item, (tuple, list)):
        return int(item[0]), int(item[1])
    return int(item), sample_seed(0, 0, int(item))


def _prompt(tags: Mapping[str, str], stem: str, null_text_ratio: float, rng: np.random.Generator) -> str:
    if rng.uniform() < null_text_ratio:
        return ""
    return tags.get(stem, "")


def _load_rgb(path: Path) -> torch.Tensor:
    return load_image(path).rgb[0]  # [3,H,W] float in [0,1]; alpha dropped, gray -> RGB


def collate(samples: list[dict]) -> dict:
    """Stack images; keep prompts/paths as lists and flatten the per-sample ``skipped`` lists."""
    out = {k: torch.stack([s[k] for s in samples]) for k in ("gt", "cond")}
    out["prompt"] = [s["prompt"] for s in samples]
    out["path"] = [s["path"] for s in samples]
    out["skipped"] = [p for s in samples for p in s["skipped"]]
    return out


class _SkippingDataset(torch.utils.data.Dataset):
    """Shared: the list of usable items, and replacement of items that fail to decode."""

    items: list
    report: DataReport

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, item) -> dict:
        index, seed = _unpack(item)
        skipped = []
        for attempt in range(len(self.items)):
            entry = self.items[(index + attempt) % len(self.items)]
            try:
                pixels = self._read(entry)
            except (OSError, ValueError, SyntaxError) as err:  # PIL raises all three on broken files
                name = entry[0] if isinstance(entry, tuple) else entry
                skipped.append(f"{name}: {type(err).__name__}: {err}")
                continue
            sample = self._make(entry, pixels, seed)  # errors past decoding are bugs: let them raise
            sample["skipped"] = skipped
            return sample
        raise DataError(f"No image in the dataset could be decoded; first errors: {skipped[:3]}")

    def summary(self) -> str:
        return self.report.summary()

    def _read(self, entry):  # pragma: no cover - abstract
        raise NotImplementedError

    def _make(self, entry, pixels, seed: int) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError


# --------------------------------------------------------------------------------------------- #
# HR folders, degraded on the fly
# --------------------------------------------------------------------------------------------- #
class HRDegradationDataset(_SkippingDataset):
    """HR images -> (USM-sharpened) ``R``x``R`` crop, LR by the Real-ESRGAN degradation, condition.

    Image handling follows the official ``RealESRGANDataset``: images with fewer than ``min_pixels``
    pixels or files under ``min_file_kb`` are rejected, then random horizontal flip, reflect-101
    padding up to ``R`` and a random ``R``x``R`` crop.
    """

    def __init__(
        self,
        folders: Sequence[str | os.PathLike],
        cfg: DataConfig,
        tags: Mapping[str, str] | None = None,
        return_lr: bool = False,
    ):
        if isinstance(folders, (str, os.PathLike)):
            folders = [folders]
        if not folders:
            raise DataError("data.hr_folders is empty: list at least one folder of HR images.")
        self.cfg = cfg
        self.return_lr = return_lr  # also return the R/scale LR (making paired folders offline)
        self.report = DataReport()
        self.tags = dict(tags or {})
        self.items: list[str] = []
        for folder in folders:
            for path in list_images(folder, cfg.extensions):
                self.report.found += 1
                reason = self._reject_reason(path)
                if reason:
                    self.report.skip(reason, str(path))
                    continue
                self.items.append(str(path))
                if self.tags and path.stem not in self.tags:
                    self.report.missing_tags += 1
        self.report.used = len(self.items)

    def _reject_reason(self, path: Path) -> str | None:
        cfg = self.cfg
        try:
            h, w = probe_size(path)
        except (OSError, ValueError, SyntaxError):
            return "unreadable"
        if os.path.getsize(path) < cfg.min_file_kb * 1024:
            return f"file smaller than {cfg.min_file_kb:g} KB"
        if h * w < cfg.min_pixels:
            return f"fewer than {cfg.min_pixels} pixels"
        if 2 * min(h, w) <= cfg.resolution:  # reflect padding up to R needs a side > R/2
            return f"a side not above {cfg.resolution // 2} px"
        return None

    def _read(self, path: str) -> torch.Tensor:
        return _load_rgb(Path(path))

    def _make(self, path: str, img: torch.Tensor, seed: int) -> dict:
        rng, gen = sample_rngs(seed)
        img = random_flip_pad_crop(img, self.cfg.resolution, rng, hflip=self.cfg.use_hflip)
        dcfg = self.cfg.degradation
        gt, lr = degrade(img, dcfg, rng, gen, quantize=False)
        # make_paired_data upsamples the float LR, then writes all three images as 8-bit PNGs
        cond = upsample_condition(lr, gt.shape[-2:], quantize=dcfg.quantize_uint8)
        if dcfg.quantize_uint8:
            gt, lr = quantize_uint8(gt), quantize_uint8(lr)
        prompt = _prompt(self.tags, Path(path).stem, self.cfg.null_text_ratio, rng)
        sample = {"gt": gt, "cond": cond, "prompt": prompt, "path": path}
        if self.return_lr:
            sample["lr"] = lr
        return sample


def random_flip_pad_crop(img: torch.Tensor, size: int, rng: np.random.Generator, hflip: bool = True) -> torch.Tensor:
    """Official order: flip (p=0.5), reflect-101 pad to at least ``size``, random ``size`` crop."""
    if hflip and rng.uniform() < 0.5:
        img = img.flip(-1)
    h, w = img.shape[-2:]
    pad_h, pad_w = max(0, size - h), max(0, size - w)
    if pad_h or pad_w:
        img = F.pad(img[None], (0, pad_w, 0, pad_h), mode="reflect")[0]
        h, w = img.shape[-2:]
    top = int(rng.integers(0, h - size + 1))
    left = int(rng.integers(0, w - size + 1))
    return img[:, top : top + size, left : left + size].contiguous()


# --------------------------------------------------------------------------------------------- #
# Paired folders, made offline
# --------------------------------------------------------------------------------------------- #
CONDITION_FOLDERS = ("sr_bicubic", "lr")  # preferred first: sr_bicubic is what the official trains on


class PairedFolderDataset(_SkippingDataset):
    """``<root>/gt`` with ``<root>/sr_bicubic`` (or ``<root>/lr``, upsampled here), paired by stem.

    Tags come from ``<root>/tag/<stem>.txt`` unless a tag source is given. Pairs larger than the
    resolution are cropped at the same random place; smaller ones are skipped as tiny. No flip, as
    in the official paired dataset.
    """

    def __init__(self, roots: Sequence[str | os.PathLike], cfg: DataConfig, tags: Mapping[str, str] | None = None):
        if isinstance(roots, (str, os.PathLike)):
            roots = [roots]
        if not roots:
            raise DataError("data.paired_roots is empty: list at least one folder holding gt/ and sr_bicubic/ (or lr/).")
        self.cfg = cfg
        self.report = DataReport()
        self.tags: dict[str, str] = {}
        self.items: list[tuple[str, str, str]] = []  # (gt, condition, stem key into tags)
        for r, root in enumerate(roots):
            root = Path(root)
            gt_files = {p.stem: p for p in list_images(root / "gt", cfg.extensions)}
            cond_dir = next((root / d for d in CONDITION_FOLDERS if (root / d).is_dir()), None)
            if cond_dir is None:
                raise DataError(f"{str(root)!r} has no sr_bicubic/ or lr/ folder next to gt/.")
            cond_files = {p.stem: p for p in list_images(cond_dir, cfg.extensions)}
            root_tags = dict(tags) if tags is not None else load_tags(root / "tag" if (root / "tag").is_dir() else None)
            self.report.found += len(gt_files.keys() | cond_files.keys())
            for stem in sorted(gt_files.keys() - cond_files.keys()):
                self.report.skip(f"no partner in {cond_dir.name}/", str(gt_files[stem]))
            for stem in sorted(cond_files.keys() - gt_files.keys()):
                self.report.skip("no partner in gt/", str(cond_files[stem]))
            for stem in sorted(gt_files.keys() & cond_files.keys()):
                gt_path, cond_path = gt_files[stem], cond_files[stem]
                reason = self._reject_reason(gt_path, cond_path)
                if reason:
                    self.report.skip(reason, str(gt_path))
                    continue
                key = f"{r}/{stem}"
                self.items.append((str(gt_path), str(cond_path), key))
                if stem in root_tags:
                    self.tags[key] = root_tags[stem]
                else:
                    self.report.missing_tags += 1
        self.report.used = len(self.items)

    def _reject_reason(self, gt_path: Path, cond_path: Path) -> str | None:
        try:
            gh, gw = probe_size(gt_path)
            ch, cw = probe_size(cond_path)
        except (OSError, ValueError, SyntaxError):
            return "unreadable"
        if min(gh, gw) < self.cfg.resolution:
            return f"gt smaller than {self.cfg.resolution} px"
        if cond_path.parent.name == "sr_bicubic" and (ch, cw) != (gh, gw):
            return "sr_bicubic size differs from gt"
        if cond_path.parent.name == "lr" and (gh * cw != gw * ch or gh % ch):
            return "lr is not an integer downscale of gt"
        return None

    def _read(self, entry: tuple[str, str, str]) -> tuple[torch.Tensor, torch.Tensor]:
        return _load_rgb(Path(entry[0])), _load_rgb(Path(entry[1]))

    def _make(self, entry: tuple[str, str, str], pixels, seed: int) -> dict:
        gt_path, cond_path, key = entry
        gt, cond = pixels
        rng, _ = sample_rngs(seed)
        if cond.shape[-2:] != gt.shape[-2:]:  # an lr/ folder: bicubic up, as make_paired_data does
            cond = upsample_condition(cond, gt.shape[-2:], quantize=True)
        size = self.cfg.resolution
        h, w = gt.shape[-2:]
        top = int(rng.integers(0, h - size + 1))
        left = int(rng.integers(0, w - size + 1))
        crop = (slice(None), slice(top, top + size), slice(left, left + size))
        prompt = _prompt(self.tags, key, self.cfg.null_text_ratio, rng)
        return {"gt": gt[crop].contiguous(), "cond": cond[crop].contiguous(), "prompt": prompt, "path": gt_path}


def build_dataset(cfg: DataConfig) -> _SkippingDataset:
    tags = load_tags(cfg.tags) if cfg.tags else None
    if cfg.source == "hr":
        return HRDegradationDataset(cfg.hr_folders, cfg, tags)
    return PairedFolderDataset(cfg.paired_roots, cfg, tags)


# --------------------------------------------------------------------------------------------- #
# RAM inputs (the official dataset computes them per sample; same maths on a batch)
# --------------------------------------------------------------------------------------------- #
def ram_input(images01: torch.Tensor) -> torch.Tensor:
    """[B,3,H,W] in [0,1] -> RAM input: bicubic to 384 (no antialias), clamp to [0,1], ImageNet norm."""
    x = F.interpolate(images01, size=(384, 384), mode="bicubic").clamp(0.0, 1.0)
    mean = torch.tensor(RAM_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(RAM_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


__all__ = [
    "DataError",
    "DataReport",
    "HRDegradationDataset",
    "PairedFolderDataset",
    "ResumableSampler",
    "build_dataset",
    "collate",
    "load_tags",
    "ram_input",
    "random_flip_pad_crop",
]
