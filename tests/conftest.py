"""Shared tiny-data fixtures. Everything here is made in memory or in tmp_path; no test needs a
download or ../shared. Keep fixtures small and generic so that any test module can use them."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from sdn.data import DataSplits, ImageSet, load_dataset


def make_imageset(
    n: int, num_classes: int = 10, size: int = 32, seed: int = 0, index_pixels: bool = False
) -> ImageSet:
    """``n`` random uint8 images with balanced labels (0, 1, ..., num_classes - 1, 0, ...).

    With ``index_pixels`` each image's first two pixels of channel 0 encode its index
    (``i % 256``, ``i // 256``), so tests can tell which samples ended up where.
    """
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    if index_pixels:
        idx = torch.arange(n)
        images[:, 0, 0, 0] = (idx % 256).to(torch.uint8)
        images[:, 0, 0, 1] = (idx // 256).to(torch.uint8)
    labels = torch.arange(n, dtype=torch.int64) % num_classes
    return ImageSet(images, labels)


def image_indices(imageset: ImageSet) -> list[int]:
    """Decode the indices written by ``make_imageset(index_pixels=True)``."""
    px = imageset.images[:, 0, 0, :2].to(torch.int64)
    return (px[:, 0] + 256 * px[:, 1]).tolist()


@pytest.fixture
def imageset_factory() -> Callable[..., ImageSet]:
    """``imageset_factory(n, num_classes=10, size=32, seed=0, index_pixels=False)``."""
    return make_imageset


@pytest.fixture(scope="session")
def tiny_digits() -> DataSplits:
    """Real digits data, cut down: 50 train, 20 val, the full 359-image test split.

    Loading digits takes about 50 ms and needs no network; tests must not modify the tensors.
    """
    return load_dataset("digits", val_size=20, train_subset=50)


@pytest.fixture
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the decoded-image cache and the default data root into tmp_path for one test."""
    cache = tmp_path / "sdn-cache"
    monkeypatch.setenv("SDN_CACHE_DIR", str(cache))
    monkeypatch.setenv("SDN_DATA_ROOT", str(tmp_path / "sdn-data"))
    return cache


# --- services -----------------------------------------------------------------------------------
# Ray 2.60 turns token auth on for local clusters and keeps the token in ~/.ray; tests run without
# it. Telemetry off everywhere. Set before any test imports ray or mlflow.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance (2 CPUs) for the whole test session."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def quickstart_report(tmp_path_factory: pytest.TempPathFactory):
    """The quickstart-shaped home and its HTML report (``report_home.build_report``), built once
    (about 40 s on 2 cores) for the report, browser and sample tests. Its path holds a space and
    a non-ASCII letter. Tests only read it, except the report tests' CLI runs, which add
    ``reports/``, ``mlflow.db`` and ``mlartifacts/`` to the home; a test that changes the data
    works on ``report_home.copy_home``."""
    from report_home import build_report

    return build_report(tmp_path_factory.mktemp("report home ü"))


@pytest.fixture(scope="module")
def single_torch_thread():
    """Run a module's tiny models on one torch thread, restoring the setting afterwards.

    Tiny models gain nothing from a second thread, and on shared cores OpenMP's spinning threads
    made the training tests about 8x slower. Use with
    ``pytestmark = pytest.mark.usefixtures("single_torch_thread")``.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
