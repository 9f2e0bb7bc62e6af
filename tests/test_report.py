"""The run report: one self-contained HTML page, rendered for real in headless Chromium."""
from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from helpers import BIN, PY, TINY, run, train

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's chromium, installed by the test setup when it is missing (root, package registry only)."""
    found = shutil.which("chromium")
    if found:
        return found
    install = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
    if subprocess.run(install, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update"], check=True, capture_output=True)
        subprocess.run(install, check=True, capture_output=True)
    return shutil.which("chromium") or pytest.fail("chromium did not install")


def test_report_renders_with_its_images_in_headless_chromium(lfw64, tmp_path, chromium):
    run_dir = tmp_path / "run"
    train(*TINY, f"data.shards={lfw64}", f"run_dir={run_dir}", "trainer.max_steps=20")
    run([PY, "-m", "vaeforge.run", "task=sample", f"run_dir={run_dir}", "n=8"])
    run([PY, "-m", "vaeforge.run", "task=reconstruct", f"run_dir={run_dir}", "input=val", "limit=4"])
    run([str(BIN / "vaeforge"), "report", f"run_dir={run_dir}"])
    page = run_dir / "report.html"
    text = page.read_text()
    assert "http://" not in text and "https://" not in text  # self-contained: nothing fetched
    assert text.count("<svg") >= 5 and "val/psnr" in text and "recipe: lfw_unet" in text
    dom = run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000",
               "--dump-dom", page.as_uri()], timeout=120).stdout
    images = re.search(r'data-images="(\d+)"', dom)
    decoded = re.search(r'data-decoded="(\d+)"', dom)
    assert images and decoded, dom[:500]
    # 2 TensorBoard grids + the sample and reconstruct grids, all decoded by the browser.
    assert int(images.group(1)) == int(decoded.group(1)) >= 4
    shot = tmp_path / "report.png"
    run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile2'}", "--window-size=1200,1600",
         f"--screenshot={shot}", page.as_uri()], timeout=120)
    assert shot.stat().st_size > 20_000


def test_report_of_a_folder_that_is_not_a_run(tmp_path):
    proc = run([PY, "-m", "vaeforge.runs.report", f"run_dir={tmp_path}"], check=False)
    assert proc.returncode == 2 and "is not a vaeforge run folder" in proc.stderr
