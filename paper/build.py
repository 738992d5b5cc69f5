"""Regenerate the paper: every table and figure comes from the package, in one command.

    python paper/build.py            # full studies (tens of minutes on 2 cores)
    python paper/build.py --quick    # the studies' --quick versions (a few minutes)

Runs `ntkode compare`, `ntkode widths`, `ntkode closure` and `ntkode mkl` into
`paper/build/<study>/`, then fills `paper/paper_template.md` with each study's printed table
and figures and writes `paper/build/paper.md`. A study that fails is reported in the paper
instead of stopping the build (its output folder keeps whatever it finished).
"""

import argparse
import pathlib
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent
STUDIES = ("compare", "widths", "closure", "mkl")


def run_study(name: str, out: pathlib.Path, quick: bool) -> str:
    cmd = [sys.executable, "-m", "ntkode", name, "--out", str(out)]
    if quick:
        cmd.append("--quick")
    if name == "compare":
        cmd.append("--no-progress")
    print("$", " ".join(cmd[1:]), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    (out / "stdout.txt").parent.mkdir(parents=True, exist_ok=True)
    (out / "stdout.txt").write_text(proc.stdout)
    if proc.returncode != 0:
        return f"*The study failed (exit {proc.returncode}):*\n\n```\n{proc.stderr[-2000:]}\n```"
    return f"```\n{proc.stdout.strip()}\n```"


def figures(out: pathlib.Path, root: pathlib.Path) -> str:
    pngs = sorted(out.glob("*.png"))
    return "\n\n".join(f"![{p.stem}]({p.relative_to(root)})" for p in pngs) or "(no figure)"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the studies' quick versions")
    parser.add_argument("--out", default=str(HERE / "build"), help="build folder")
    parser.add_argument("--only", nargs="+", choices=STUDIES, default=list(STUDIES))
    args = parser.parse_args(argv)
    root = pathlib.Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    fields = {"mode": "quick" if args.quick else "full"}
    for name in STUDIES:
        out = root / name
        out.mkdir(parents=True, exist_ok=True)
        if name in args.only:
            fields[f"{name}_table"] = run_study(name, out, args.quick)
        else:
            fields[f"{name}_table"] = "(not rebuilt in this run)"
        fields[f"{name}_figures"] = figures(out, root)
    text = (HERE / "paper_template.md").read_text().format(**fields)
    (root / "paper.md").write_text(text)
    print(f"wrote {root / 'paper.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
