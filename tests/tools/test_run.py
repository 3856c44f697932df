"""``python -m adatriton.run`` (issue 24): a converted model over a folder of scikit-image's photographs writes one
output, one overlay and one level map per image and a CSV row each, whose multiply-adds are ``count_macs`` on the
same map; ``--weights`` loads a state_dict; the entry module runs as ``python -m``."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

import adatriton
from adatriton import LevelMap
from adatriton.tools.run import main

ROOT = Path(__file__).resolve().parents[2]
PHOTOS = ("astronaut", "coffee", "chelsea")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def photos(tmp_path) -> Path:
    data = pytest.importorskip("skimage.data")
    image = pytest.importorskip("PIL.Image")
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in PHOTOS:
        image.fromarray(getattr(data, name)()).save(folder / f"{name}.png")
    return folder


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def _levels(out: Path, stem: str, num_levels: int) -> LevelMap:
    return LevelMap(torch.from_numpy(np.load(out / "levels" / f"{stem}.npy")).long()[None], num_levels)


def test_a_segmentation_model_over_three_photographs(photos, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--model", "deeplabv3_resnet50", "--conversion", "8to32", "--mask", "edges", "--fraction", "0.3"]
    main([*argv, "--images", str(photos), "--out", str(out), "--size", "96", "--device", "cpu", "--no-progress"])
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith("3 images, deeplabv3_resnet50 at 8->32 with edges masks") and "dense OS8" in summary

    image = pytest.importorskip("PIL.Image")
    assert sorted(p.name for p in (out / "outputs").iterdir()) == sorted(f"{n}.png" for n in PHOTOS)
    assert sorted(p.name for p in (out / "overlays").iterdir()) == sorted(f"{n}.png" for n in PHOTOS)
    rows = _rows(out)
    assert [r["image"] for r in rows] == sorted(f"{n}.png" for n in PHOTOS)

    # The multiply-adds of every row: count_macs of the same architecture on the image's size and saved map.
    model = torchvision.models.segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None)
    net = adatriton.convert(model, "8->32")
    dense = {s: adatriton.convert(model, s) for s in ("8", "16")}
    for row in rows:
        stem, h, w = Path(row["image"]).stem, int(row["height"]), int(row["width"])
        assert max(h, w) == 96
        segmentation = image.open(out / "outputs" / f"{stem}.png")
        assert segmentation.mode == "P" and segmentation.size == (w, h)
        assert np.asarray(segmentation).max() < 21
        assert np.asarray(image.open(out / "overlays" / f"{stem}.png")).shape == (h, w, 3)
        levels = _levels(out, stem, 2)
        meta = torch.empty(1, 3, h, w, device="meta")
        assert int(row["macs"]) == adatriton.count_macs(net, meta, levels).total
        assert int(row["macs_os8"]) == adatriton.count_macs(dense["8"], meta).total
        assert int(row["macs_os16"]) == adatriton.count_macs(dense["16"], meta).total
        assert float(row["vs_os8"]) == pytest.approx(int(row["macs"]) / int(row["macs_os8"]))
        fractions = [float(row[f"fraction_{v}"]) for v in range(3)]
        assert fractions == pytest.approx(levels.fractions().tolist()) and sum(fractions) == pytest.approx(1.0)
        assert 0 < fractions[0] < 1  # the edge source made a mixed map
        assert float(row["time_ms"]) >= float(row["forward_ms"]) > 0


@pytest.mark.parametrize("name", ["resnet18", "resnet50"], ids=["graph-path", "resnet-path"])
def test_weights_are_loaded_and_the_output_is_the_converted_models(name, photos, tmp_path):
    """``--weights`` loads the state_dict (through ``read_checkpoint`` for a graph-path model, through
    ``load_authors_state_dict`` for a ResNet): the saved output is the converted model's on the saved map."""
    torch.manual_seed(5)
    model = getattr(torchvision.models, name)(num_classes=10).eval()
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    out = tmp_path / "out"
    argv = ["--model", name, "--num-classes", "10", "--conversion", "8:32", "--mask", "synthetic"]
    argv += ["--fraction", "0.5", "--weights", str(tmp_path / "weights.pt"), "--seed", "1"]
    rows = main([*argv, "--images", str(photos), "--out", str(out), "--size", "64", "--device", "cpu", "--no-progress"])
    assert len(rows) == 3 and len(_rows(out)) == 3
    graph = {"example_input": torch.empty(1, 3, 64, 64), "unsupported": "densify"} if name == "resnet18" else {}
    net = adatriton.convert(model, "8->32", **graph).eval()
    image = pytest.importorskip("PIL.Image")
    for row in rows:
        stem = Path(row["image"]).stem
        saved = np.load(out / "outputs" / f"{stem}.npy")
        rgb = torch.from_numpy(
            np.array(image.open(photos / row["image"]).convert("RGB").resize((row["width"], row["height"]), resample=2))
        )
        x = rgb.permute(2, 0, 1)[None].float() / 255
        mean, std = torch.tensor(adatriton.masks.IMAGENET_MEAN), torch.tensor(adatriton.masks.IMAGENET_STD)
        x = (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
        with torch.no_grad():
            expected = net(x, _levels(out, stem, 2))
        assert saved.shape == (1, 10) and np.allclose(saved, expected.numpy(), rtol=0, atol=1e-5)


def test_bad_arguments_are_usage_errors(photos, tmp_path, capsys):
    for argv, message in (
        (["--conversion", "8"], "is dense"),
        (["--model", "no_such_model"], "unknown model"),
        (["--mask", "keypoints", "--fraction", "0.3"], "--fraction applies"),
        (["--size", "1", "2", "3"], "--size takes"),
    ):
        with pytest.raises(SystemExit) as err:
            main([*argv, "--images", str(photos), "--out", str(tmp_path / "out")])
        assert err.value.code == 2 and message in capsys.readouterr().err


def test_what_the_user_can_fix_is_a_message_not_a_traceback(photos, tmp_path):
    torch.save({"no": torch.zeros(1)}, tmp_path / "other.pt")
    cases = (
        (["--model", "resnet18", "--weights", str(tmp_path / "other.pt")], "does not fit resnet18"),
        (["--model", "resnet50", "--mask", "keypoints"], "keypoint masks are for '1->8'"),
    )
    for argv, message in cases:
        with pytest.raises(SystemExit, match=message):
            main([*argv, "--images", str(photos), "--out", str(tmp_path / "out"), "--size", "32", "--no-progress"])


@pytest.mark.subprocess
def test_python_dash_m_adatriton_run_is_the_command():
    done = subprocess.run(
        [sys.executable, "-m", "adatriton.run", "--help"], capture_output=True, text=True, cwd=ROOT, check=True
    )
    for flag in ("--model", "--conversion", "--mask", "--fraction", "--images", "--out", "--weights"):
        assert flag in done.stdout
