"""The run report: one self-contained HTML page, rendered for real in headless Chromium."""
from __future__ import annotations

import re
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

from helpers import BIN, CHROMIUM_FLAGS, PY, TINY, dump_dom, run, train


def test_report_renders_with_its_images_in_headless_chromium(lfw64, tmp_path, chromium):
    run_dir = tmp_path / "run"
    train(*TINY, f"data.shards={lfw64}", f"run_dir={run_dir}", "trainer.max_steps=20")
    # no prior fit: the page is tested (the flow fit is tested in test_priors)
    run([PY, "-m", "vaeforge.run", "task=sample", f"run_dir={run_dir}", "n=8", "sampler=prior"])
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


def charts(page: str) -> dict[str, str]:
    """Each chart of a page (as Chromium serialised its DOM) by title, in page order: title -> the SVG's markup."""
    found = re.findall(r'<svg class="chart".*?</svg>', page, re.S)
    return {re.search(r"<title>(.*?)</title>", svg).group(1): svg for svg in found}


def screenshot(chromium: str, page: Path, profile: Path, shot: Path) -> None:
    run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=1300,1500", f"--screenshot={shot}",
         page.as_uri()], timeout=120)
    assert shot.stat().st_size > 20_000
    print(f"screenshot: {shot}")


def test_report_charts_every_scalar_and_dots_short_series(lfw64, tmp_path, chromium):
    """A series logged once (val/loss here) is a visible dot, not an empty box, and a plugin's own train/ term
    is charted, after the known curves; an lr schedule that ran to its end carries no note."""
    run_dir = tmp_path / "run"
    train(*TINY, f"data.shards={lfw64}", f"run_dir={run_dir}", "optim.warmup_steps=0", "trainer.image_every=0",
          "trainer.max_steps=20")  # val_every 20: val/loss logged once; the lr schedule ends at step 20
    with SummaryWriter(str(run_dir / "tb")) as writer:  # a loss plugin's own term, as the engine logs it
        for step in (5, 10, 15, 20):
            writer.add_scalar("train/sharpness", 1.0 / step, step)
    run([str(BIN / "vaeforge"), "report", f"run_dir={run_dir}"])
    page = run_dir / "report.html"
    drawn = charts(dump_dom(chromium, page, tmp_path / "profile"))

    titles = list(drawn)
    assert titles[:3] == ["train/loss", "val/loss", "val/psnr"]
    assert titles.index("train/lr") < titles.index("train/sharpness") < titles.index("perf/images_per_sec")
    assert all(t.startswith(("train/", "val/", "perf/")) for t in titles)
    markers = re.findall(r'<circle class="marker" cx="([\d.]+)" cy="([\d.]+)" r="([\d.]+)"', drawn["val/loss"])
    assert len(markers) == 1  # the one point, drawn as a dot inside the chart
    cx, cy, r = map(float, markers[0])
    assert r >= 2 and 0 < cx < 360 and 0 < cy < 200
    assert len(re.findall(r"<circle", drawn["train/sharpness"])) == 4
    assert 'class="note"' not in drawn["train/lr"]
    screenshot(chromium, page, tmp_path / "profile2", tmp_path / "charts.png")


def test_report_says_where_a_cut_off_lr_schedule_stopped(lfw64, tmp_path, chromium):
    """A run stopped by trainer.max_time long before trainer.max_steps (what the demo's TRAIN_TIME used to
    do): its lr chart says how far the schedule got, with the step of the run's last checkpoint."""
    run_dir = tmp_path / "run"
    train(*TINY, f"data.shards={lfw64}", f"run_dir={run_dir}", "optim.warmup_steps=0", "trainer.image_every=0",
          "trainer.val_every=0", "trainer.max_steps=2000", "trainer.max_time=4")
    step = int(sorted((run_dir / "checkpoints").iterdir())[-1].name.removeprefix("step_"))
    run([str(BIN / "vaeforge"), "report", f"run_dir={run_dir}"])
    page = run_dir / "report.html"
    lr_chart = charts(dump_dom(chromium, page, tmp_path / "p"))["train/lr"]
    notes = re.findall(r'<text class="note"[^>]*>(.*?)</text>', lr_chart)
    assert 0 < step < 2000 and notes == [f"schedule stopped at {step / 2000:.0%} of its horizon",
                                         f"step {step:,} of trainer.max_steps 2,000"]
    screenshot(chromium, page, tmp_path / "p2", tmp_path / "cut.png")


def test_report_of_a_folder_that_is_not_a_run(tmp_path):
    proc = run([PY, "-m", "vaeforge.runs.report", f"run_dir={tmp_path}"], check=False)
    assert proc.returncode == 2 and "is not a vaeforge run folder" in proc.stderr
