from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from model_zoo.builders.color_classifier import build_color_classifier, build_slow_color_classifier
from model_zoo.datasets.synthetic_video import write_color_video
from tests.helpers import Proc, free_port, start_mosquitto, start_s3
from tests.pg import PostgresServer

# The suite runs on two workers, a file at a time each (`make test`: pytest -n 2 --dist loadfile
# --no-loadscope-reorder: xdist would otherwise order files by their number of tests). The longest files go
# first, so that neither worker is left alone with one at the end.
SLOW_FIRST = (
    "test_jobs.py",
    "test_ray_jobs.py",
    "test_demo.py",
    "test_zoo.py",
    "test_faults.py",
    "test_rollouts.py",
    "test_brokers.py",
    "test_console.py",
    "test_job_storage.py",
    "test_slots.py",
    "test_hardening.py",
    "test_e2e.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FIRST)))  # stable: the rest keep their order


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Mosquitto on a free port for the whole session; yields its URL."""
    proc, port = start_mosquitto(tmp_path_factory.mktemp("mosquitto"))
    yield f"mqtt://127.0.0.1:{port}"
    proc.stop()


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's S3 server on a free port for the session (each test makes its own bucket); yields its URL."""
    port = free_port()
    proc = start_s3(port, tmp_path_factory.mktemp("s3") / "s3.log")
    yield f"http://127.0.0.1:{port}"
    proc.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A private PostgreSQL server on a free port for the session (each test makes its own database)."""
    pg = PostgresServer()
    yield pg
    pg.stop()


CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A real headless Chromium (Debian's, which `make test` installs), driven by Playwright."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"{CHROMIUM} is missing: run `make test` (it installs Debian's chromium) or apt-get install chromium"
        )
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture(scope="session")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("assets")
    return {
        "model_v1": build_color_classifier(d / "color_v1.onnx", sharpness=12.0),
        "model_v2": build_color_classifier(d / "color_v2.onnx", sharpness=20.0),
        "model_v3": build_color_classifier(d / "color_v3.onnx", sharpness=16.0),
        "model_slow": build_slow_color_classifier(d / "color_slow.onnx"),
        "video": write_color_video(d / "camera.avi", seconds=6.0),
        "not_onnx": _write(d / "notes.onnx", b"this is not a model\n" * 10),
    }


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


__all__ = ["Proc"]
