"""``python -m adatriton.run``: a converted model over a folder of images, with its level maps and multiply-adds.

    python -m adatriton.run --model deeplabv3_resnet50 --conversion 8to32 --mask edges --fraction 0.3 \\
        --images DIR --out OUT

For every image (``.png``, ``.jpg``, ``.jpeg``, ``.bmp``, ``.tif``, ``.tiff``, ``.webp`` in ``DIR``, sorted by name) it
writes, under ``OUT``:

- ``outputs/<name>.png``: a segmentation model's argmax class ids (a palette PNG, the PASCAL VOC colours); for other
  models ``outputs/<name>.npy``, the output tensor (logits, features) as float32;
- ``overlays/<name>.png``: the level map over the image (:func:`adatriton.viz.overlay`);
- ``levels/<name>.npy``: the level map itself (``(Hf, Wf)`` int8 on the finest grid);
- one row of ``results.csv``: ``image``, ``height``, ``width``, ``fraction_0`` .. ``fraction_K`` (area at each level),
  ``macs`` (:func:`adatriton.count_macs` on that map), ``macs_os8`` / ``macs_os16`` (the dense network at OS8 /
  OS16 on the same input size), ``vs_os8`` / ``vs_os16`` (the ratios), and ``mask_ms``, ``forward_ms``,
  ``time_ms`` (wall-clock milliseconds of the mask, of the forward, of both).

Then a summary line. Images are read as RGB (PIL, which torchvision brings), optionally resized (``--size``),
normalised with the ImageNet statistics and run one at a time; the mask source is attached at conversion
(``adatriton.convert(..., mask=source.with_normalization())``), so the forward is the drop-in ``net(images)``.
The weights are random unless ``--weights`` names a state_dict, read through
:func:`adatriton.load_authors_state_dict` (torchvision and the authors' layouts) for the ResNet and segmentation
models and :func:`adatriton.models.read_checkpoint` + ``load_state_dict`` for the others.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn

from ..analysis.macs import count_macs
from ..core.levelmap import LevelMap
from ..masks.common import MaskInputError
from ..masks.density import synthetic
from ..masks.sources import IMAGENET_MEAN, IMAGENET_STD, MaskSource, edges, keypoints
from ..models.attach import attached_levels
from ..models.checkpoints import CheckpointError, load_authors_state_dict, read_checkpoint
from ..models.convert import convert
from ..models.graph.rules import GraphConversionError, parse_graph_output_stride
from ..runtime.backend import BACKENDS
from ..runtime.extras import require
from ..viz import overlay
from .cli import device, fraction, output_stride, positive_int

__all__ = ["IMAGE_SUFFIXES", "RUN_MASKS", "RUN_MODELS", "main", "run_folder"]

#: Named ``--model`` choices besides every torchvision classification model name (which take the graph path).
RUN_MODELS = ("resnet50", "resnet101", "deeplabv3_resnet50", "deeplabv3_resnet101", "fcn_resnet50", "fcn_resnet101")
#: ``--mask`` choices.
RUN_MASKS = ("edges", "keypoints", "synthetic")
#: Image files read from ``--images``.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

_SEGMENTATION = {
    "deeplabv3_resnet50": torchvision.models.segmentation.deeplabv3_resnet50,
    "deeplabv3_resnet101": torchvision.models.segmentation.deeplabv3_resnet101,
    "fcn_resnet50": torchvision.models.segmentation.fcn_resnet50,
    "fcn_resnet101": torchvision.models.segmentation.fcn_resnet101,
}


def _model_name(text: str) -> str:
    """argparse ``type``: a named model or a torchvision classification model."""
    if text in RUN_MODELS or text in torchvision.models.list_models(module=torchvision.models):
        return text
    raise argparse.ArgumentTypeError(
        f"unknown model {text!r}: one of {', '.join(RUN_MODELS)}, or a torchvision classification model name "
        "(torchvision.models.list_models(module=torchvision.models), e.g. mobilenet_v3_large)"
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m adatriton.run",
        description="Run a converted model over a folder of images: outputs, level-map overlays and a CSV of level "
        "fractions, multiply-adds (against the dense OS8 / OS16 networks) and times.",
    )
    p.add_argument(
        "--model",
        type=_model_name,
        default="deeplabv3_resnet50",
        metavar="MODEL",
        help=f"{', '.join(RUN_MODELS)} or any torchvision classification model (default: %(default)s)",
    )
    p.add_argument(
        "--conversion",
        "--output-stride",
        dest="conversion",
        type=output_stride,
        default="8->32",
        help="adaptive output stride, e.g. 8to32, 8to16, 16to32 (8:32 and a quoted '8->32' too; default: 8to32)",
    )
    p.add_argument(
        "--mask",
        choices=RUN_MASKS,
        default="edges",
        help="mask source: edges (Sobel, masks.edges), keypoints (SIFT, '1->8' networks only) or "
        "synthetic (random blobs, masks.synthetic) (default: %(default)s)",
    )
    p.add_argument(
        "--fraction",
        type=fraction,
        default=None,
        help="target level-0 area in [0, 1] for edges (default: the edge threshold 0.15) and synthetic (default 0.3)",
    )
    p.add_argument("--images", type=Path, required=True, help="folder of images")
    p.add_argument("--out", type=Path, required=True, help="output folder (created)")
    p.add_argument("--weights", type=Path, default=None, help="state_dict to load (default: random weights)")
    p.add_argument(
        "--size",
        type=positive_int,
        nargs="+",
        default=None,
        metavar="N",
        help="resize: one N (longer side N, aspect kept) or H W (default: the image's own size)",
    )
    p.add_argument(
        "--num-classes",
        type=positive_int,
        default=None,
        help="classes of the model (default: torchvision's, 21 for segmentation, 1000 otherwise)",
    )
    p.add_argument(
        "--device",
        type=device,
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cpu, cuda, cuda:1 (default: %(default)s)",
    )
    p.add_argument("--backend", choices=BACKENDS, default=None, help="conv backend (default: adatriton's choice)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and synthetic masks")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return p


def _build(name: str, num_classes: int | None) -> nn.Module:
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    if name in _SEGMENTATION:
        return _SEGMENTATION[name](weights=None, weights_backbone=None, **kwargs)
    return torchvision.models.get_model(name, weights=None, **kwargs)


def _load_weights(model: nn.Module, name: str, path: Path) -> None:
    if name in RUN_MODELS:
        # The ResNet and segmentation models: torchvision's layout or the authors' (DataParallel prefixes, renames).
        load_authors_state_dict(model, path)
        return
    state = read_checkpoint(path)
    if isinstance(state, dict) and isinstance(state.get("state_dict", state.get("model")), dict):
        state = state.get("state_dict", state.get("model"))
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as err:
        raise CheckpointError(f"--weights {path} does not fit {name}: {err}") from err


def _mask_source(args) -> MaskSource:
    if args.mask == "edges":
        return edges(fraction=args.fraction)
    if args.mask == "keypoints":
        return keypoints()
    return MaskSource(_synthetic, fraction=0.3 if args.fraction is None else args.fraction, seed=args.seed)


def _synthetic(images, conversion: str, fraction: float, seed: int) -> LevelMap:
    """:func:`adatriton.masks.synthetic` as a mask source: random blobs of the image batch's size."""
    n, _, h, w = images.shape
    return synthetic(n, h, w, conversion, fraction, seed=seed)


def _images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise SystemExit(f"--images {folder}: not a folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise SystemExit(f"--images {folder}: no image ({', '.join(IMAGE_SUFFIXES)})")
    return files


def _read(path: Path, size: list[int] | None) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB, resized (bilinear) to ``size``."""
    image = require("PIL.Image").open(path).convert("RGB")
    if size is not None:
        if len(size) == 1:
            scale = size[0] / max(image.size)
            w, h = (max(1, round(s * scale)) for s in image.size)
        else:
            h, w = size
        image = image.resize((w, h), resample=2)  # 2: bilinear
    return np.array(image)  # a writable copy (torch.from_numpy warns on read-only PIL buffers)


def _palette() -> list[int]:
    """The PASCAL VOC colour map (class ``c``'s bits spread over R, G, B), 256 colours."""
    colors = []
    for c in range(256):
        r = g = b = 0
        for bit in range(8):
            r |= ((c >> (3 * bit)) & 1) << (7 - bit)
            g |= ((c >> (3 * bit + 1)) & 1) << (7 - bit)
            b |= ((c >> (3 * bit + 2)) & 1) << (7 - bit)
        colors += [r, g, b]
    return colors


def _write_output(out, folder: Path, stem: str) -> Path:
    if isinstance(out, dict) and "out" in out:  # a segmentation model: argmax class ids as a palette PNG
        ids = out["out"][0].argmax(0).to(torch.uint8).cpu().numpy()
        image = require("PIL.Image").fromarray(ids, mode="P")
        image.putpalette(_palette())
        path = folder / f"{stem}.png"
        image.save(path)
        return path
    if isinstance(out, dict):
        out = next(iter(out.values()))  # an IntermediateLayerGetter-like output: the first one
    path = folder / f"{stem}.npy"
    np.save(path, out.detach().float().cpu().numpy())
    return path


class _Counter:
    """A plain ``i/n`` counter on stderr where tqdm is not installed."""

    def __init__(self, total: int, disable: bool):
        self.total, self.done, self.disable = total, 0, disable

    def update(self, n: int = 1) -> None:
        self.done += n
        if not self.disable:
            print(f"\r{self.done}/{self.total} images", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if not self.disable:
            print(file=sys.stderr)


def _progress(total: int, enabled: bool):
    try:
        tqdm = require("tqdm.auto").tqdm
    except ImportError:
        return _Counter(total, not enabled)
    return tqdm(total=total, disable=not enabled, desc="images", unit="image", dynamic_ncols=True)


def _synchronize(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def run_folder(args: argparse.Namespace) -> list[dict[str, object]]:
    """The command's work on parsed arguments (see the module docstring); returns the CSV rows."""
    torch.manual_seed(args.seed)
    dev = torch.device(args.device)
    files = _images(args.images)
    model = _build(args.model, args.num_classes)
    if args.weights is not None:
        _load_weights(model, args.model, args.weights)
    model.eval()
    source = _mask_source(args)
    # The model reads ImageNet-normalised images; the source undoes that to read RGB in [0, 1].
    attached = source.with_normalization(IMAGENET_MEAN, IMAGENET_STD)
    first = _read(files[0], args.size)
    example = torch.empty(1, 3, *first.shape[:2])
    graph = {} if args.model in RUN_MODELS else {"example_input": example, "unsupported": "densify"}
    net = convert(model, args.conversion, args.backend, mask=attached, **graph).eval().to(dev)
    dense = {stride: convert(model, stride, args.backend, **graph).eval() for stride in ("8", "16")}
    for folder in ("outputs", "overlays", "levels"):
        (args.out / folder).mkdir(parents=True, exist_ok=True)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    dense_macs: dict[tuple[int, int], dict[str, int]] = {}
    rows: list[dict[str, object]] = []
    bar = _progress(len(files), args.progress)
    try:
        for path in files:
            rgb = first if path == files[0] else _read(path, args.size)
            h, w = rgb.shape[:2]
            x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float().div(255.0)
            x = ((x - mean) / std).to(dev)
            with torch.inference_mode():
                _synchronize(dev)
                start = time.perf_counter()
                levels = attached_levels(net, None, x)  # what net(x) builds from the attached source
                _synchronize(dev)
                mask_s = time.perf_counter() - start
                out = net(x, levels)
                _synchronize(dev)
                total_s = time.perf_counter() - start
            meta = torch.empty(1, 3, h, w, device="meta")
            if (h, w) not in dense_macs:
                dense_macs[(h, w)] = {s: count_macs(d, meta).total for s, d in dense.items()}
            macs = count_macs(net, meta, levels.to("cpu")).total
            _write_output(out, args.out / "outputs", path.stem)
            require("PIL.Image").fromarray(overlay(rgb, levels)).save(args.out / "overlays" / f"{path.stem}.png")
            np.save(args.out / "levels" / f"{path.stem}.npy", levels.levels[0].to(torch.int8).cpu().numpy())
            row: dict[str, object] = {"image": path.name, "height": h, "width": w}
            row.update({f"fraction_{v}": float(f) for v, f in enumerate(levels.fractions().tolist())})
            os8, os16 = dense_macs[(h, w)]["8"], dense_macs[(h, w)]["16"]
            row.update(macs=macs, macs_os8=os8, macs_os16=os16, vs_os8=macs / os8, vs_os16=macs / os16)
            row.update(mask_ms=1e3 * mask_s, forward_ms=1e3 * (total_s - mask_s), time_ms=1e3 * total_s)
            rows.append(row)
            bar.update(1)
    finally:
        bar.close()
    with open(args.out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows


def _summary(args, rows: list[dict[str, object]]) -> str:
    def mean(key: str) -> float:
        return sum(float(r[key]) for r in rows) / len(rows)

    return (
        f"{len(rows)} images, {args.model} at {args.conversion} with {args.mask} masks: level-0 area "
        f"{mean('fraction_0'):.3f}, multiply-adds {mean('macs'):.3g} ({mean('vs_os8'):.2f}x dense OS8, "
        f"{mean('vs_os16'):.2f}x dense OS16), {mean('time_ms'):.1f} ms per image; wrote {args.out}"
    )


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    """Parse ``argv`` (default: ``sys.argv[1:]``), run, print the summary line; returns the CSV rows."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.size is not None and len(args.size) > 2:
        parser.error(f"--size takes N (longer side) or H W, got {len(args.size)} numbers")
    if args.mask == "keypoints" and args.fraction is not None:
        parser.error("--fraction applies to the edges and synthetic masks; keypoints take their dilations")
    try:
        adaptive = parse_graph_output_stride(args.conversion)[2] > 0
    except ValueError as err:
        parser.error(f"--conversion: {err}")
    if not adaptive:
        parser.error(f"--conversion {args.conversion!r} is dense: give an adaptive one such as 8to32")
    try:
        rows = run_folder(args)
    except (GraphConversionError, CheckpointError, MaskInputError) as err:
        # What the user can fix (a model the graph path cannot convert, weights that do not fit, a mask for another
        # conversion): the message, without a traceback.
        raise SystemExit(f"python -m adatriton.run: {type(err).__name__}: {err}") from err
    print(_summary(args, rows))
    return rows
