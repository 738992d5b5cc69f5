"""Build the paper: run every study, then write prose around the numbers in their records.

    python paper/build.py            # the paper's configuration of every study
    python paper/build.py --quick    # every study's quick version (minutes), labelled quick
    python paper/build.py --reuse    # no runs: rewrite the paper from paper/build/*/results.json
    python paper/build.py --jobs 1   # one study at a time (default: two at once)

Each study runs as `python -m ntkode <study> --out paper/build/<study>` (the certificate
comparison as `ntkode certify`). The paper (`paper/build/paper.md`)
quotes numbers only through `paper/quoting.py`, which records each one with its file, key and
format in `paper/build/numbers.json`; `tests/test_paper.py` checks every quoted number against
the file it came from. A study that fails or is not installed, or a record without a key a
section needs, gives that section "(study not available in this build: …)" instead of stopping
the build. With pandoc (and a LaTeX engine for PDF) on PATH the paper is also written as
`paper.pdf`; without them only the Markdown is written and the build says so.
"""

import argparse
import concurrent.futures
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from quoting import Missing, Numbers  # noqa: E402
from sections import SECTIONS  # noqa: E402

#: Per study: module, the paper's (full) arguments, and the quick ones. The compare study's
#: sizes are passed explicitly so the paper can state them (its record has no settings).
COMPARE_FULL = ["--width", "512", "--n-train", "256", "--n-test", "256", "--dim", "8",
                "--t-end", "50", "--grid-sizes", "2,4,8,16"]  # fmt: skip
COMPARE_QUICK = ["--width", "64", "--n-train", "64", "--n-test", "64", "--dim", "4",
                 "--t-end", "10", "--grid-sizes", "2,8"]  # fmt: skip
STUDIES = {
    "compare": ("ntkode compare", COMPARE_FULL + ["--no-progress"], COMPARE_QUICK + ["--no-progress"]),
    "compare_digits": ("ntkode compare", ["--problem", "digits", "--no-progress"],
                       ["--problem", "digits", "--quick", "--no-progress"]),
    "floor": ("ntkode floor", [], ["--quick"]),
    "certificate": ("ntkode certify", [], ["--quick"]),
    "control": ("ntkode control", [], ["--quick"]),
    "closure": ("ntkode closure", [], ["--quick"]),
    "widths": ("ntkode widths", ["--widths", "64", "128", "256", "512"], ["--quick"]),
    "mkl": ("ntkode mkl", [], ["--quick"]),
}  # fmt: skip


#: Rough relative cost of each study (longest first when several run at once).
EXPECTED_COST = {"closure": 8, "compare_digits": 7, "control": 6, "floor": 5, "widths": 4,
                 "compare": 3, "mkl": 2, "certificate": 1}  # fmt: skip


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"--jobs must be at least 1, got {text!r}")
    return value


def command(name: str, out: pathlib.Path, quick: bool) -> list[str]:
    module, full, short = STUDIES[name]
    mod = module.split()
    args = ["-m", mod[0]] + mod[1:]
    return [sys.executable, *args, *(short if quick else full), "--out", str(out)]


def run_study(name: str, out: pathlib.Path, quick: bool) -> dict:
    """Run one study; return what the paper says about the run (command, exit, seconds)."""
    cmd = command(name, out, quick)
    shown = "python " + " ".join(cmd[1:])
    print("$", shown, flush=True)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    print(f"  {name}: exit {proc.returncode} after {seconds:.0f} s", flush=True)
    (out / "stdout.txt").write_text(proc.stdout)
    (out / "stderr.txt").write_text(proc.stderr)
    return {"command": shown, "returncode": proc.returncode, "seconds": seconds,
            "error": proc.stderr.strip().splitlines()[-1] if proc.returncode and proc.stderr.strip() else ""}  # fmt: skip


def pdf(root: pathlib.Path) -> str:
    """Write paper.pdf with pandoc when pandoc and a LaTeX engine are installed."""
    pandoc = shutil.which("pandoc")
    engine = next((e for e in ("pdflatex", "xelatex", "lualatex") if shutil.which(e)), None)
    if not pandoc or not engine:
        return "no PDF: pandoc and a LaTeX engine (pdflatex/xelatex) are not both on PATH"
    proc = subprocess.run(
        [pandoc, "paper.md", "-o", "paper.pdf", f"--pdf-engine={engine}"],
        cwd=root, capture_output=True, text=True,
    )  # fmt: skip
    return "wrote paper.pdf" if proc.returncode == 0 else f"pandoc failed: {proc.stderr[-300:]}"


def write_paper(root: pathlib.Path, quick: bool, runs: dict) -> str:
    N = Numbers(root, STUDIES)
    ctx = {"quick": quick, "runs": runs, "root": root, "command": command}
    parts = []
    for title, section in SECTIONS:
        try:
            body = section(N, ctx)
        except Missing as missing:
            run = runs.get(section.__doc__ or "", {})
            why = f"missing {missing.args[0]}"
            if run.get("returncode"):
                why = f"the run failed: {run['error'] or 'exit ' + str(run['returncode'])}"
            body = f"(study not available in this build: {why})"
        parts.append(f"## {title}\n\n{body.strip()}\n" if title else body.strip() + "\n")
    text = "\n".join(parts)
    (root / "paper.md").write_text(text)
    N.dump(root / "numbers.json")
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="every study's quick version")
    parser.add_argument("--out", default=str(HERE / "build"), help="build folder")
    parser.add_argument("--only", nargs="+", choices=list(STUDIES), default=list(STUDIES),
                        help="run only these studies (the others' records are reused)")  # fmt: skip
    parser.add_argument("--reuse", action="store_true", help="run nothing; reuse the records")
    parser.add_argument("--jobs", type=_positive, default=min(os.cpu_count() or 1, 2),
                        help="studies run at the same time (default: 2, or 1 on one CPU)")  # fmt: skip
    args = parser.parse_args(argv)
    root = pathlib.Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    log_path = root / "runs.json"
    runs = json.loads(log_path.read_text()) if log_path.exists() else {}
    start = time.perf_counter()
    if not args.reuse:
        # The studies are independent processes writing to their own folders; much of a
        # quick study is single-threaded tracing and compilation, so two at a time on two
        # cores finish sooner than one after another. Longest first.
        names = sorted(args.only, key=lambda n: -EXPECTED_COST.get(n, 0))
        with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
            futures = {n: pool.submit(run_study, n, root / n, args.quick) for n in names}
            for name, future in futures.items():
                runs[name] = future.result()
                runs[name]["quick"] = args.quick
    if not (args.reuse and "build" in runs):  # a rewrite keeps the record of the runs
        runs["build"] = {"quick": args.quick, "seconds": time.perf_counter() - start,
                         "load_average": list(os.getloadavg()), "cpus": os.cpu_count(),
                         "jobs": 1 if args.reuse else args.jobs}  # fmt: skip
    log_path.write_text(json.dumps(runs, indent=1))
    # A rewrite describes the runs it reuses (quick or not), not its own flags.
    quick = runs["build"].get("quick", args.quick) if args.reuse else args.quick
    write_paper(root, quick, runs)
    print(f"wrote {root / 'paper.md'} ({pdf(root)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
