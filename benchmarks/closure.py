"""Closure task costs: the data generator's images/s, and the traced-NTK kernel machine at
n training images (NTK seconds and solve seconds), float32.

    PYTHONPATH=. python benchmarks/closure.py --data                  # 10,000 images, 32×32
    PYTHONPATH=. python benchmarks/closure.py --kernel 1024 --size 16 # NTK machine, n=1024
    PYTHONPATH=. python benchmarks/closure.py --kernel 1024 --size 32 --test 128 --channels 4

The kernel is that of the study's U-Net at initialisation (4 scales, `--channels` 8), between
`n + test` images and the `n` training ones; the solve is the study's kernel machine
(ridge by leave-one-out IoU over six ridges, then kernel regression). Prints the load
average and the peak resident memory next to every time: the machine may be shared; the
NTK's seconds are split into the backward passes (per-pixel Jacobians) and the contraction
(GEMMs), with their rates.
"""

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from ntkode.datasets._closure import closure_images
from ntkode.studies._closure._kernels import kernel_machine, peak_rss_gb, traced_ntk
from ntkode.studies._closure._metrics import iou_summary
from ntkode.studies._closure._train import predict_logits
from ntkode.studies._closure._unet import build_unet


def load() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def data(n: int, size: int) -> None:
    for kind in ("mixed", "smooth", "polygon", "grown", "folded"):
        t = time.perf_counter()
        closure_images(n if kind == "mixed" else n // 5, size, kind=kind, seed=0)
        dt = time.perf_counter() - t
        count = n if kind == "mixed" else n // 5
        print(f"{kind:>8}: {count} images {size}×{size} in {dt:.1f} s = {count / dt:.0f} "
              f"images/s (load {load()})", flush=True)  # fmt: skip


def kernel(n: int, size: int, test: int, memory_gb: float, channels: int) -> None:
    tr = closure_images(n, size, seed=1)
    te = closure_images(test, size, seed=2)
    x = jnp.asarray(np.concatenate([tr.curves, te.curves])[:, None], jnp.float32)
    net = build_unet(scales=4, channels=channels, growth=1.0, norm="none", dtype=jnp.float32,
                     key=jax.random.key(0))  # fmt: skip
    print(f"n={n} train + {test} test images {size}×{size}, load {load()}", flush=True)
    prof: dict[str, float] = {}
    k, seconds = traced_ntk(net, x, n, memory_gb, profile=prof)
    print(
        f"NTK (traced) {k.shape}: {seconds:.1f} s, peak RSS {peak_rss_gb():.2f} GB "
        f"(load {load()})\n"
        f"  backward passes: {prof['backward_passes']:.0f} in {prof['backward_s']:.1f} s = "
        f"{prof['backward_passes'] / prof['backward_s']:.0f} /s; contraction: "
        f"{prof['gemm_flops'] / 1e12:.2f} TFLOP in {prof['contract_s']:.1f} s = "
        f"{prof['gemm_flops'] / prof['contract_s'] / 1e9:.1f} GFLOP/s; "
        f"{prof['blocks']:.0f} blocks of {prof['block_pixels']:.0f} pixels",
        flush=True,
    )
    f0 = predict_logits(net, x).reshape(n + test, -1)
    m = kernel_machine(k[:n], k[n:], tr.inside.reshape(n, -1), f0[:n], f0[n:])
    score = iou_summary(m.test.reshape(te.inside.shape) > 0, te.inside)
    print(
        f"solve (leave-one-out ridge over 6 values + kernel regression): "
        f"{m.solve_seconds:.1f} s; ridge {m.ridge:g}; test IoU pooled "
        f"{score['iou_pooled']:.3f}, p10 {score['iou_p10']:.3f}; peak RSS "
        f"{peak_rss_gb():.2f} GB (load {load()})",
        flush=True,
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", action="store_true", help="time the data generator")
    parser.add_argument("--n", type=int, default=10000, help="images for --data")
    parser.add_argument("--kernel", type=int, default=0, help="training images of the machine")
    parser.add_argument("--size", type=int, default=32, help="image side")
    parser.add_argument("--test", type=int, default=256, help="test images of the machine")
    parser.add_argument("--memory-gb", type=float, default=2.0, help="for NTK features")
    parser.add_argument("--channels", type=int, default=8, help="U-Net channels (finest)")
    args = parser.parse_args(argv)
    if args.data:
        data(args.n, args.size)
    if args.kernel:
        kernel(args.kernel, args.size, args.test, args.memory_gb, args.channels)


if __name__ == "__main__":
    main()
