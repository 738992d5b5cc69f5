"""Transfer of scheduled-NTK grids: (a) test outputs, (b) another learning rate,
(c) other targets, on the **sine** problem (ReLU and softplus).

Run: `PYTHONPATH=. python benchmarks/transfer.py [--t-end 20] [--grid-size 8] [--quick]`
Prints one line per case and method (max relative train / test trajectory errors against
that run's own true flow) and writes `transfer.json`.
"""

import argparse
import json
import warnings

import jax

from ntkode import sine_problem
from ntkode.transfer import transfer_study


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--t-end", type=float, default=20.0)
    p.add_argument("--grid-size", type=int, default=8)
    p.add_argument("--rtol", type=float, default=1e-5, help="true-flow rtol (ReLU at 1e-6 is slow)")
    p.add_argument("--activations", default="relu,softplus")
    p.add_argument("--quick", action="store_true", help="a small network (seconds)")
    p.add_argument("--out", default="transfer.json")
    args = p.parse_args()
    jax.config.update("jax_enable_x64", True)
    warnings.simplefilter("ignore")  # clamping warnings are expected in cases (b), (c)
    size = (
        dict(width=32, n_train=32, n_test=32, dim=4)
        if args.quick
        else dict(width=512, n_train=256, n_test=256, dim=8)
    )
    results = {}
    for act in args.activations.split(","):
        print(f"== sine ({act}), t_end={args.t_end}, G={args.grid_size}", flush=True)
        prob = sine_problem(t_end=args.t_end, activation=act, **size)
        results[act] = transfer_study(
            prob, grid_size=args.grid_size, rtol=args.rtol, log=lambda s: print(s, flush=True)
        )
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
