"""The measuring steps of the GPU check (:mod:`bench._gpu_check`) that are not a suite or a test run, each run as
``python -m bench._gpu_steps STEP --out DIR`` in its own time-boxed process. Each prints a short table and writes
``DIR/<step>.json``.

- ``environment``: GPU, driver, CUDA, library versions, multiprocessors, L2, the profiling tools on the PATH;
- ``backends``: a tiny converted ResNet (one bottleneck per layer, 8->32) on every backend against the torch backend;
- ``l2_bandwidth``: reads of a 32 MB buffer that stays in L2 (the H100 has 50 MB), from every SM;
- ``convs``: the default config against ``F.conv2d`` (cuDNN) on ResNet-101's adaptive layer shapes at 1024x2048,
  level-0 fraction 0.3, fp16, with NCHW and channels-last weights: TFLOP/s and the fraction of cuDNN's rate;
- ``small_forward``: one small conv with the default config, or ``--persistent`` the persistent one (what
  ``compute-sanitizer`` runs);
- ``cuda_graphs``: eager against CUDA-graph forward of a converted ResNet-101 8->32 at 512x1024 and 1024x2048 with a
  reused level map (:func:`torch.cuda.graph` capture; replays compared with eager).
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch

__all__ = ["STEPS", "main"]

#: ResNet-101 8->32 layers the ``convs`` step measures: ``(name, Cin, Cout, k, tap spacing, stage, residual)``.
CONV_SHAPES = (
    ("layer3 3x3 256", 256, 256, 3, 2, 1, False),
    ("layer3 1x1 1024->256", 1024, 256, 1, 1, 1, False),
    ("layer3 1x1 256->1024 +res", 256, 1024, 1, 1, 1, True),
    ("layer4 3x3 512", 512, 512, 3, 4, 2, False),
)
CONVERSION = "8->32"


def _print_table(rows: list[dict]) -> None:
    if not rows:
        return
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.values()) + " |")


def _median_ms(fn: Callable[[], object], warmup: int = 3, iters: int = 10) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=warmup, rep=iters, return_mode="median"))


def _tool(name: str) -> str | None:
    """Path of a CUDA tool: on the PATH, or beside nvcc / under /usr/local/cuda."""
    found = shutil.which(name)
    if found:
        return found
    for folder in [Path(p).parent for p in filter(None, [shutil.which("nvcc")])] + [Path("/usr/local/cuda/bin")]:
        if (folder / name).exists():
            return str(folder / name)
    return None


def environment(args) -> dict:
    import numpy
    import torchvision
    import triton

    info = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "triton": triton.__version__,
        "numpy": numpy.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "compute_sanitizer": _tool("compute-sanitizer"),
        "ncu": _tool("ncu"),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=props.name,
            capability=f"{props.major}.{props.minor}",
            multiprocessors=props.multi_processor_count,
            memory_gib=round(props.total_memory / 2**30, 1),
            l2_mb=round(getattr(props, "L2_cache_size", 0) / 1e6, 1),
        )
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit", "--format=csv"],
            capture_output=True, text=True, timeout=20,
        )  # fmt: skip
        info["nvidia_smi"] = smi.stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as err:
        info["nvidia_smi"] = f"not run: {err}"
    for key, value in info.items():
        print(f"{key}: {value}")
    return info


def _tiny_net():
    from torchvision.models.resnet import Bottleneck, ResNet

    import adatriton

    torch.manual_seed(0)
    model = ResNet(Bottleneck, [1, 1, 1, 1], width_per_group=16).eval()
    return adatriton.convert(model, CONVERSION).eval()


def backends(args) -> dict:
    import adatriton

    device = "cuda"
    net = _tiny_net().to(device, torch.float16)
    x = torch.randn(2, 3, 128, 256, device=device, dtype=torch.float16)
    lm = adatriton.LevelMap.random(2, 16, 32, 2, generator=torch.Generator().manual_seed(1)).to(device)
    rows = []
    with torch.inference_mode():
        with adatriton.use_backend("torch"):
            reference = net(x, lm).float()
        for name in adatriton.BACKENDS:
            with adatriton.use_backend(name):
                got = net(x, lm).float()
            err = ((got - reference).norm() / reference.norm()).item()
            rows.append({"backend": name, "rel_error_vs_torch": err, "ok": bool(err < 2e-2)})
    _print_table(rows)
    if not all(r["ok"] for r in rows):
        raise SystemExit("a backend differs from the torch backend by more than 2e-2")
    return {"rows": rows}


def l2_bandwidth(args) -> dict:
    import triton
    import triton.language as tl

    @triton.jit
    def read_kernel(x_ptr, out_ptr, n_per_program, BLOCK: tl.constexpr):
        # Each program sums its contiguous slice; the loop's loads are pipelined (num_stages ahead: cp.async
        # where Triton's pipeliner uses it), so the rate is the L2 -> SM read bandwidth once the buffer is resident.
        pid = tl.program_id(0)
        base = x_ptr + pid.to(tl.int64) * n_per_program
        acc = tl.zeros((BLOCK,), dtype=tl.float32)
        for start in range(0, n_per_program, BLOCK):
            acc += tl.load(base + start + tl.arange(0, BLOCK)).to(tl.float32)
        tl.store(out_ptr + pid, tl.sum(acc, axis=0))

    sms = torch.cuda.get_device_properties(0).multi_processor_count
    programs = sms * 4
    block = 2048
    n_per_program = (32 * 2**20 // 2) // programs // block * block  # fp16: about 32 MB in all
    x = torch.randn(programs * n_per_program, device="cuda", dtype=torch.float16)
    out = torch.empty(programs, device="cuda", dtype=torch.float32)
    rows = []
    for stages in (1, 3, 4):

        def run(stages=stages):
            read_kernel[(programs,)](x, out, n_per_program, BLOCK=block, num_warps=8, num_stages=stages)

        run()  # compile, and bring the buffer into L2
        ms = _median_ms(run, warmup=5, iters=50)
        rows.append({"num_stages": stages, "MB": x.numel() * 2 / 1e6, "ms": ms, "GB/s": x.numel() * 2 / ms / 1e6})
    torch.testing.assert_close(out.sum(), x.float().sum(), rtol=1e-2, atol=1.0)
    ram = torch.randn(512 * 2**20, device="cuda", dtype=torch.float16)  # 1 GiB: HBM, for scale
    ms = _median_ms(lambda: ram.clone(), warmup=2, iters=20)
    rows.append({"num_stages": "copy 1 GiB (HBM)", "MB": ram.numel() * 2 / 1e6, "ms": ms,
                 "GB/s": 2 * ram.numel() * 2 / ms / 1e6})  # fmt: skip
    _print_table(rows)
    return {"rows": rows}


def _conv_case(cin: int, cout: int, k: int, spacing: int, stage: int, fraction: float, size, seed: int = 0):
    from adatriton import LevelMap, MultiResMap, masks

    h, w = size
    hf, wf = -(-h // 8), -(-w // 8)
    gen = torch.Generator().manual_seed(seed)
    dense = torch.randn(1, cin, hf, wf, generator=gen).to("cuda", torch.float16)
    weight = (torch.randn(cout, cin, k, k, generator=gen) / (cin * k * k) ** 0.5).to("cuda", torch.float16)
    lm = LevelMap(masks.synthetic(1, h, w, CONVERSION, fraction, kind="blobs", seed=seed).levels.cuda(), CONVERSION)
    layout = lm.layout(stage)
    if k > 1:
        layout.tap_index(k, spacing)
    lv = layout.element_level
    values = dense.permute(0, 2, 3, 1)[layout.batch_index, layout.rows << lv, layout.cols << lv]
    return dense, weight, MultiResMap(values.contiguous(), layout)


def convs(args) -> dict:
    import torch.nn.functional as F

    from adatriton import MultiResMap
    from adatriton.ops import conv as conv_ops

    size, fraction = (1024, 2048), 0.3
    rows = []
    with torch.inference_mode():
        for name, cin, cout, k, spacing, stage, residual in CONV_SHAPES:
            dense, weight, x = _conv_case(cin, cout, k, spacing, stage, fraction, size)
            dense_cl = dense.contiguous(memory_format=torch.channels_last)
            ref_w = weight.contiguous(memory_format=torch.channels_last)
            per_output = 2 * cin * cout * k * k
            padding = spacing * (k // 2)
            ms = _median_ms(functools.partial(F.conv2d, dense_cl, ref_w, padding=padding, dilation=spacing))
            cudnn = per_output * dense.shape[2] * dense.shape[3] / ms / 1e9
            rows.append({"layer": name, "impl": "cuDNN dense OS8", "weights": "channels-last", "ms": ms,
                         "TFLOP/s": cudnn, "of_cuDNN": 1.0})  # fmt: skip
            res = None
            if residual:
                res = MultiResMap(torch.randn(x.values.shape[0], cout, device="cuda", dtype=x.dtype), x.layout)
            for memory in ("NCHW", "channels-last"):
                w = weight if memory == "NCHW" else weight.contiguous(memory_format=torch.channels_last)
                if res is None:
                    run = functools.partial(conv_ops.conv2d, x, w, None, spacing, 1, False, "triton")
                else:
                    run = functools.partial(conv_ops.conv_bn_act, x, w, None, None, True, res, spacing, 1, False,
                                            "triton")  # fmt: skip
                ms = _median_ms(run)
                rate = per_output * x.layout.num_elements / ms / 1e9
                rows.append({"layer": name, "impl": "triton default", "weights": memory, "ms": ms,
                             "TFLOP/s": rate, "of_cuDNN": rate / cudnn})  # fmt: skip
    _print_table(rows)
    return {"size": size, "fraction": fraction, "rows": rows}


def small_forward(args) -> dict:
    from adatriton.kernels import conv as conv_kernels

    _, weight, x = _conv_case(64, 64, 3, 1, 0, 0.3, (128, 256))
    index = x.layout.tap_index(3, 1)
    weight = weight.contiguous(memory_format=torch.channels_last)
    if args.persistent:
        config = next(c for c in conv_kernels.conv_configs() if c.persistent)
    else:
        config = conv_kernels.default_config(index.shape[0], 64, 64, arch=conv_kernels.device_arch("cuda"),
                                             dtype=torch.float16)  # fmt: skip
    out = conv_kernels.conv_elements(x.values, index, weight, taps=9, config=config)
    torch.cuda.synchronize()
    print(f"config {tuple(config)}: output {tuple(out.shape)}, finite {bool(out.isfinite().all())}")
    return {"config": list(config), "output": list(out.shape)}


def cuda_graphs(args) -> dict:
    import torchvision

    import adatriton
    from adatriton import LevelMap, masks

    torch.manual_seed(0)
    net = adatriton.convert(torchvision.models.resnet101(), CONVERSION, backend="triton").eval()
    net = net.to("cuda", torch.float16)
    rows = []
    with torch.inference_mode():
        for h, w in ((512, 1024), (1024, 2048)):
            x = torch.randn(1, 3, h, w, device="cuda", dtype=torch.float16)
            lm = LevelMap(masks.synthetic(1, h, w, CONVERSION, 0.3, kind="blobs", seed=0).levels.cuda(), CONVERSION)
            expected = net.forward_features(x, lm)  # builds the level map's tables: the graph reads them
            eager = _median_ms(lambda: net.forward_features(x, lm), warmup=2, iters=20)  # noqa: B023
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):
                    net.forward_features(x, lm)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = net.forward_features(x, lm)
            graph.replay()
            torch.cuda.synchronize()
            diff = max((a.float() - b.float()).abs().max().item() for a, b in zip(_flat(static_out), _flat(expected)))
            replay = _median_ms(graph.replay, warmup=2, iters=20)
            rows.append({"size": f"{h}x{w}", "eager_ms": eager, "graph_ms": replay, "speedup": eager / replay,
                         "max_abs_diff": diff})  # fmt: skip
    _print_table(rows)
    return {"rows": rows}


def _flat(out) -> list:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _flat(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in _flat(v)]
    values = getattr(out, "values", None)
    return [values] if isinstance(values, torch.Tensor) else []


STEPS: dict[str, Callable] = {
    "environment": environment,
    "backends": backends,
    "l2_bandwidth": l2_bandwidth,
    "convs": convs,
    "small_forward": small_forward,
    "cuda_graphs": cuda_graphs,
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench._gpu_steps", description=__doc__.split("\n\n")[0])
    p.add_argument("step", choices=sorted(STEPS))
    p.add_argument("--out", type=Path, default=Path("results"))
    p.add_argument("--persistent", action="store_true", help="small_forward: the persistent config")
    args = p.parse_args(argv)
    if args.step != "environment" and not torch.cuda.is_available():
        print(f"{args.step}: no CUDA device is visible")
        return 0
    result = STEPS[args.step](args)
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "_persistent" if args.persistent else ""
    (args.out / f"{args.step}{suffix}.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
