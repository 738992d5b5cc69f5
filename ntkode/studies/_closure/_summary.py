"""The closure study's printed table and its answer, in words, computed from the numbers."""

from typing import Any

PREDICTORS = ("network", "ntk_init", "ntk_final", "path", "parity", "convex_hull", "all_inside")
_SETS = ("same", "two_shapes", "three_shapes", "double_size")


def _cell(entry: dict[str, float] | None) -> str:
    if entry is None:
        return f"{'—':>17}"
    return f"{entry['iou_pooled']:>6.3f} {entry['iou_median']:>4.2f} {entry['iou_p10']:>4.2f} "


def table(results: dict[str, Any]) -> str:
    """Per predictor and test set: pooled IoU, per-image median and 10th percentile."""
    s = results["settings"]
    m = s["size"]
    lines = [
        f"IoU on held-out {m}×{m} curves (double size: {2 * m}×{2 * m}): pooled, median, p10",
        f"{'predictor':<13}" + "".join(f"{name:>17}" for name in _SETS),
    ]
    for name in PREDICTORS:
        if name in results:
            lines.append(f"{name:<13}" + "".join(_cell(results[name].get(k)) for k in _SETS))
    t = results["timings"]
    lines.append(
        f"parity algorithm: {1e3 * t['parity_same_s'] / s['n_test']:.3f} ms per {m}×{m} image; "
        f"network: {1e3 * t['network_same_s'] / s['n_test']:.3f} ms per image"
    )
    fam = results.get("families", {})
    if fam:
        lines.append("per family (one shape): network | convex hull, pooled / p10")
        for name, row in fam.items():
            lines.append(
                f"  {name:<9} ({row['images']:>3} images)  {row['network']['iou_pooled']:.3f} / "
                f"{row['network']['iou_p10']:.2f} | {row['convex_hull']['iou_pooled']:.3f} / "
                f"{row['convex_hull']['iou_p10']:.2f}"
            )
    curves = results.get("learning_curves")
    if curves:
        k = curves["size"]
        names = [
            n for n in ("network", "ntk_init", "ntk_final", "path", "network_sgd") if n in curves
        ]
        ns = sorted({r["n"] for n in names for r in curves[n]})
        lines.append(
            f"learning curves at {k}×{k} ({curves['n_test']} held-out images), pooled IoU:"
        )
        lines.append(f"{'n':>6}" + "".join(f"{n:>13}" for n in names))
        for n in ns:
            row = []
            for name in names:
                hit = [r for r in curves[name] if r["n"] == n]
                row.append(f"{hit[0]['iou_pooled']:>13.3f}" if hit else f"{'—':>13}")
            lines.append(f"{n:>6}" + "".join(row))
        for name in ("ntk_init", "ntk_final", "path"):
            for r in curves.get(name, []):
                lines.append(
                    f"  {name} n={r['n']}: kernel {r['ntk_seconds']:.1f} s, ridge selection and "
                    f"solve {r['solve_seconds']:.1f} s (relative ridge {r['ridge']:g}, "
                    f"leave-one-out IoU {r['loo_iou']:.3f})"
                )
        for r in curves.get("path", []):
            lines.append(
                f"  path kernel: {r['steps']} SGD steps; first-order reconstruction of the "
                f"network's outputs, relative residual {r['reconstruction_residual']:.2e}"
            )
    lines.append(f"total time {t['total_s']:.0f} s")
    return "\n".join(lines)


def answer(results: dict[str, Any]) -> str:
    """The study's answer to its two questions, from the measured numbers (never fixed text)."""
    s = results["settings"]
    m = s["size"]
    net = results["network"]
    hull = results["convex_hull"]["same"]["iou_pooled"]
    same = net["same"]
    good = same["iou_pooled"] >= 0.9 and same["iou_p10"] >= 0.75
    parts = [
        f"Can the U-Net learn closure? On held-out {m}×{m} curves of its training distribution "
        f"it reaches pooled IoU {same['iou_pooled']:.3f} (median image {same['iou_median']:.2f}, "
        f"10th percentile {same['iou_p10']:.2f}; convex-hull shortcut {hull:.3f}, parity 1): "
        + ("it learns the task there." if good else "it does not learn it well enough there.")
        + f" With two and three shapes per image (trained on one) it gets "
        f"{net['two_shapes']['iou_pooled']:.3f} and {net['three_shapes']['iou_pooled']:.3f}, "
        f"at twice the size {net['double_size']['iou_pooled']:.3f}"
        + (
            " — a drop, so what it learnt is tied to the scale it was trained at, which the "
            "parity algorithm is not."
            if net["double_size"]["iou_pooled"] < same["iou_pooled"] - 0.05
            else "."
        )
    ]
    curves = results.get("learning_curves", {})
    machines = [k for k in ("ntk_init", "ntk_final", "path") if curves.get(k)]
    if "network" in curves and machines:
        k = curves["size"]
        net_rows = {r["n"]: r["iou_pooled"] for r in curves["network"]}
        common = [n for n in net_rows if any(r["n"] == n for k_ in machines for r in curves[k_])]
        if common:
            n = max(common)
            scores = {k_: r["iou_pooled"] for k_ in machines for r in curves[k_] if r["n"] == n}
            best = max(scores, key=lambda k_: scores[k_])
            ratio = scores[best] / net_rows[n] if net_rows[n] > 0 else float("inf")
            listing = ", ".join(f"{k_} {v:.3f}" for k_, v in scores.items())
            if net_rows[n] < 0.5:
                verdict = (
                    f"The network itself has not learnt the task from {n} images here, so "
                    "this compares two poor predictors and answers nothing; run with more "
                    "images or steps."
                )
            elif ratio > 1.1:
                flat = min(net_rows.values()) >= max(net_rows.values()) - 0.05
                verdict = (
                    f"Not in this sense: its best kernel machine does better than the network "
                    f"trained for {curves['steps']} steps on the same images"
                    + (
                        ", whose own curve is flat in n, so at this size and budget the "
                        "network is held back by its training, and is not matched by its "
                        "kernel machine either way."
                        if flat
                        else "."
                    )
                )
            elif ratio >= 0.9:
                p10 = {k_: r["iou_p10"] for k_ in (best,) for r in curves[k_] if r["n"] == n}
                net_p10 = next(r["iou_p10"] for r in curves["network"] if r["n"] == n)
                below = all(
                    r["iou_pooled"] < net_rows[r["n"]] for r in curves[best] if r["n"] in net_rows
                )
                verdict = (
                    f"Nearly, with {best}: its kernel machine reaches {ratio:.0%} of the "
                    f"network's pooled IoU"
                    + (" but stays below the network at every n measured" if below else "")
                    + f", and its worst images are worse (10th percentile {p10[best]:.2f} "
                    f"against {net_p10:.2f})."
                    if ratio < 0.97
                    else "Yes in this sense: its best kernel machine matches it."
                )
            elif ratio >= 0.7:
                verdict = "Only partly: its best kernel machine comes close but falls short."
            else:
                verdict = (
                    "No: kernel regression with the network's own kernels (traced over "
                    "pixels) falls far short of the network, so on this task the trained "
                    "network is not well described as such a kernel machine."
                )
            parts.append(
                f"Is it its own kernel machine? With n={n} training images at {k}×{k}, the "
                f"network reaches pooled IoU {net_rows[n]:.3f}; kernel regression with its "
                f"kernels: {listing} (best / network = {ratio:.2f}). {verdict}"
            )
            big = max(net_rows)
            if big > n:
                parts.append(f"With {big} images the network reaches {net_rows[big]:.3f}.")
    return "\n".join(parts)
