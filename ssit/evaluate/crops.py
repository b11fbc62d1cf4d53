"""Cache of 512x512 fundus crops for raw grading datasets.

Raw photographs go through the same fundus crop as the pre-training shards
once; the crop is stored as a JPEG named by a hash of the source path, modification time and
size, so a changed file is cropped again and an unchanged one never is.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from ssit.atomic_write import replacing
from ssit.error_text import first_line

LOGGER = logging.getLogger(__name__)
CROP_QUALITY = 95


class CropError(RuntimeError):
    """Raw images that could not be read or cropped."""


def default_cache_dir() -> Path:
    """``$SSIT_CACHE/crops`` when set, else ``~/.cache/ssit/crops``."""
    root = os.environ.get("SSIT_CACHE")
    return Path(root) / "crops" if root else Path.home() / ".cache" / "ssit" / "crops"


def cache_path(source: Path, cache_dir: Path) -> Path:
    """Where the crop of ``source`` lives: a hash of its absolute path, mtime and size."""
    stat = source.stat()
    identity = f"{source.resolve()}|{stat.st_mtime_ns}|{stat.st_size}"
    digest = hashlib.sha1(identity.encode()).hexdigest()
    return cache_dir / digest[:2] / f"{digest[2:22]}.jpg"


def crop_to_file(source: Path, target: Path) -> str | None:
    """Crop one photograph to ``target`` (atomically); return an error text instead of raising."""
    from ssit.prepare.crop import crop_fundus
    from ssit.prepare.decode import load_image
    from ssit.prepare.image_size import DEFAULT_MAX_PIXELS

    try:
        result = crop_fundus(load_image(source, max_pixels=DEFAULT_MAX_PIXELS).rgb)
        with replacing(target) as partial:
            Image.fromarray(result.image).save(partial, format="JPEG", quality=CROP_QUALITY)
    except Exception as error:  # any unreadable image is reported by name, not raised here
        return f"{source}: {first_line(error)}"
    return None


def cached_crops(sources: Sequence[Path], cache_dir: Path, num_workers: int = 0) -> list[Path]:
    """Return the cached crop of every source, cropping the missing ones in parallel.

    Raises CropError naming the files that could not be cropped (the others stay cached).
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    targets = [cache_path(Path(source), cache_dir) for source in sources]
    todo = [(Path(s), t) for s, t in zip(sources, targets, strict=True) if not t.exists()]
    if todo:
        LOGGER.info("cropping %d of %d images into %s", len(todo), len(targets), cache_dir)
        failures = _crop_all(todo, num_workers)
        if failures:
            shown = "; ".join(failures[:3])
            raise CropError(f"{len(failures)} image(s) could not be cropped, e.g. {shown}")
    return targets


def _crop_all(todo: list[tuple[Path, Path]], num_workers: int) -> list[str]:
    progress = tqdm(total=len(todo), desc="crop", unit="img", mininterval=2.0)
    failures: list[str] = []
    if num_workers <= 1:
        for source, target in todo:
            error = crop_to_file(source, target)
            if error:
                failures.append(error)
            progress.update()
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(num_workers, mp_context=context) as pool:
            for error in pool.map(crop_to_file, *zip(*todo, strict=True), chunksize=8):
                if error:
                    failures.append(error)
                progress.update()
    progress.close()
    return failures
