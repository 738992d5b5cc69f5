"""Try every bad input and call of the issue (and the older ones): clear / traceback / silent.

    PYTHONPATH=<checkout> python docs/bad_input_tally.py   # TALLY_ONLY=word: those cases only

Prints one line per case: `name | outcome | detail`; `docs/bad_input_tally.md` records a run
on the code before and after the fix. Outcomes:
- clear: a ValueError/TypeError/RuntimeError (or CLI exit 2 with one line) whose message
  matches what it should say;
- traceback: an exception of another kind, or a message that does not say what is wrong,
  or a CLI traceback;
- silent: no error, and the result is wrong (or an argument ignored);
- works: a call that should work and does (correct result checked).
"""

import os
import signal
import subprocess
import sys
import tempfile

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)
import ntkode as nk  # noqa: E402

ROOT = os.environ["PYTHONPATH"].split(os.pathsep)[0]
data = nk.datasets.sine(16, 8, 3, key=jax.random.key(0), dtype=jnp.float64)
model = eqx.nn.MLP(3, 1, 16, 2, activation=jnp.tanh, key=jax.random.key(1), dtype=jnp.float64)
K = nk.ntk(model, data.x_train)
GF = nk.GradientFlowProblem(model, data, tspan=(0.0, 1.0))
KF = nk.KernelFlowProblem.from_model(model, data, tspan=(0.0, 1.0))
rows = []
ONLY = os.environ.get("TALLY_ONLY", "")


def case(name, fn, expect=None, check=None):
    """`expect`: substring an error must contain (an error is wanted); `check(result)` ->
    True if a non-error result is right."""
    if ONLY not in name:
        return
    try:
        out = fn()
    except (ValueError, TypeError, RuntimeError) as err:
        msg = str(err).split("\n")[0]
        if expect is not None and expect.lower() in str(err).lower():
            rows.append((name, "clear", msg[:150]))
        else:
            rows.append((name, "traceback", f"{type(err).__name__}: {msg[:150]}"))
        return
    except Exception as err:  # noqa: BLE001
        rows.append((name, "traceback", f"{type(err).__name__}: {str(err).splitlines()[0][:150]}"))
        return
    if expect is not None:
        ok = check(out) if check else False
        rows.append((name, "works" if ok else "silent", f"no error; result {str(out)[:100]}"))
    else:
        ok = check(out) if check else True
        rows.append((name, "works" if ok else "silent", str(out)[:100]))


def fd(f, x, h=1e-5):
    return (float(f(x + h)) - float(f(x - h))) / (2 * h)


# -- 1. adjoints ------------------------------------------------------------------------------
for pname, prob in (("GradientFlowProblem", GF), ("KernelFlowProblem (closed form)", KF)):
    case(
        f"adjoint=BacksolveAdjoint on {pname}",
        lambda prob=prob: nk.solve(prob, adjoint=diffrax.BacksolveAdjoint()).train_loss[-1],
        expect="dissipative",
    )


def kgrad(adjoint, solver=diffrax.Tsit5(), t1=34.0):
    def f(lr):
        p = nk.KernelFlowProblem(
            K, data, tspan=(0.0, t1), learning_rate=lr, u0_train=KF.u0_train, u0_test=KF.u0_test
        )
        return nk.solve(
            p, solver, saveat=3, adjoint=adjoint, rtol=1e-6, atol=1e-8, max_steps=20000
        ).train_loss[-1]

    return f


def backsolve_kernel_ode():
    g = float(jax.grad(kgrad(diffrax.BacksolveAdjoint()))(1.0))
    ref = fd(kgrad(diffrax.RecursiveCheckpointAdjoint()), 1.0)
    return g, ref


case(
    "adjoint=BacksolveAdjoint on KernelFlowProblem (ODE), grad vs FD",
    backsolve_kernel_ode,
    expect="dissipative",
    check=lambda r: abs(r[0] - r[1]) < 1e-3 * abs(r[1]),
)
case(
    "adjoint=ImplicitAdjoint on KernelFlowProblem (ODE)",
    lambda: nk.solve(KF, diffrax.Tsit5(), adjoint=diffrax.ImplicitAdjoint()).train_loss[-1],
    expect="steady state",
)


def rca_kernel_ode():
    f = kgrad(diffrax.RecursiveCheckpointAdjoint(), t1=2.0)
    return float(jax.grad(f)(1.0)), fd(f, 1.0)


case(
    "RecursiveCheckpointAdjoint on KernelFlowProblem (ODE), grad vs FD",
    rca_kernel_ode,
    check=lambda r: abs(r[0] - r[1]) < 1e-5 * abs(r[1]),
)

# -- 2. events ---------------------------------------------------------------------------------
ev = diffrax.Event(lambda t, y, args, **kw: t > 0.5)
case(
    "event on GradientFlowProblem: sol.t / losses finite",
    lambda: nk.solve(GF, event=ev, saveat=jnp.array([0.0, 0.25, 0.75, 1.0])),
    check=lambda s: bool(np.all(np.isfinite(s.t)) and np.all(np.isfinite(s.train_loss))),
)
case(
    "event on GradientFlowProblem: sol(t) past the stop",
    lambda: nk.solve(GF, event=ev, saveat=jnp.array([0.0, 0.25, 0.75, 1.0]))(0.9).train,
    check=lambda u: bool(np.all(np.isfinite(u))),
)
case(
    "event on GradientFlowProblem: summary()",
    lambda: nk.solve(GF, event=ev, saveat=jnp.array([0.0, 0.25, 0.75, 1.0])).summary(),
    check=lambda d: np.isfinite(d["t_end"]) and np.isfinite(d["final_train_loss"]),
)
case(
    "event on GradientFlowProblem: success",
    lambda: nk.solve(GF, event=ev, saveat=jnp.array([0.0, 0.25, 0.75, 1.0])).success,
    check=lambda ok: bool(ok),
)


def compare_stopped():
    s = nk.solve(GF, event=ev, saveat=jnp.array([0.0, 0.25, 0.75, 1.0]))
    full = nk.solve(GF, saveat=jnp.array([0.0, 0.25, 0.75, 1.0]))
    return nk.compare(full, s).rows


case(
    "event on GradientFlowProblem: compare()",
    compare_stopped,
    check=lambda r: all(np.isfinite(v["max_rel_train_error"]) for v in r.values()),
)
case(
    "event on closed-form KernelFlowProblem",
    lambda: nk.solve(KF, event=ev, saveat=5).retcode == nk.RESULTS.event_occurred,
    check=lambda ok: bool(ok),
)

# -- 3. cross-entropy -------------------------------------------------------------------------
labels = jnp.arange(16) % 10
m10 = eqx.nn.MLP(3, 10, 16, 2, key=jax.random.key(1), dtype=jnp.float64)
case(
    "cross_entropy, integer labels, 10-output model",
    lambda: (
        nk.solve(
            nk.GradientFlowProblem(m10, nk.Dataset(data.x_train, labels), loss="cross_entropy"),
            saveat=3,
        ).train_loss
    ),
    check=lambda losses: float(losses[0]) > 1.0,
)
case(
    "cross_entropy, integer labels, 1-output model (the old advice)",
    lambda: (
        nk.solve(
            nk.GradientFlowProblem(model, nk.Dataset(data.x_train, labels), loss="cross_entropy"),
            saveat=3,
        ).train_loss
    ),
    expect="out_size=10",
)
case(
    "cross_entropy, real targets, 1-output model",
    lambda: (
        nk.solve(nk.GradientFlowProblem(model, data, loss="cross_entropy"), saveat=3).train_loss
    ),
    expect="two classes",
)
m3 = eqx.nn.MLP(3, 3, 16, 2, key=jax.random.key(1), dtype=jnp.float64)
case(
    "cross_entropy, real-valued (n, 3) targets",
    lambda: (
        nk.solve(
            nk.GradientFlowProblem(
                m3, nk.Dataset(data.x_train, jnp.sin(data.x_train)), loss="cross_entropy"
            ),
            saveat=3,
        ).train_loss
    ),
    expect="probabilities",
)

# -- 4. silently accepted ----------------------------------------------------------------------
case(
    "non-PSD kernel in KernelFlowProblem",
    lambda: nk.solve(
        nk.KernelFlowProblem(-jnp.eye(16), data, tspan=(0.0, 50.0)), diffrax.Tsit5()
    ).train_loss[-1],
    expect="positive semi-definite",
)
other = nk.Dataset(data.x_train, -data.y_train, data.x_test, data.y_test)
case(
    "compare() of solutions on different data",
    lambda: (
        nk.compare(
            nk.solve(KF, saveat=5),
            nk.solve(nk.KernelFlowProblem(K, other, tspan=(0.0, 1.0)), saveat=5),
        ).rows
    ),
    expect="different data",
)
case(
    "compare() of solutions on data with and without a test split",
    lambda: (
        nk.compare(
            nk.solve(KF, saveat=5),
            nk.solve(
                nk.KernelFlowProblem(K, nk.Dataset(data.x_train, data.y_train), tspan=(0.0, 1.0)),
                saveat=5,
            ),
        ).rows
    ),
    expect="different data",
)
case(
    "certify with a negative learning rate",
    lambda: nk.certify(nk.KernelGrid(jnp.zeros(1), K[None, :, :, 0, 0]), -1.0).rate,
    expect="learning_rate",
)
case(
    "rtol with a stepsize_controller",
    lambda: nk.solve(GF, rtol=1e-3, stepsize_controller=diffrax.ConstantStepSize(), dt0=0.1),
    expect="would be ignored",
)
case(
    "ntk on (n, 3, 1) inputs for a model taking (3,)",
    lambda: nk.ntk(model, data.x_train[:, :, None]).shape,
    expect="shape (3, 1)",
)

# -- 5. solver objects -------------------------------------------------------------------------
case('solver as a string "tsit5"', lambda: nk.solve(GF, "tsit5"), expect="tsit5")
case("solver as a class diffrax.Tsit5", lambda: nk.solve(GF, diffrax.Tsit5), expect="Tsit5()")
case("diffrax.Euler() without dt0", lambda: nk.solve(GF, diffrax.Euler()), expect="dt0")

# -- 6. jit ------------------------------------------------------------------------------------


def jit_kernel():
    f = lambda lr: nk.solve(
        nk.KernelFlowProblem(K, data, learning_rate=lr, tspan=(0.0, 1.0)), saveat=5
    ).train_loss[-1]
    return float(jax.jit(f)(1.0)), float(f(1.0))


def jit_gf():
    f = lambda lr: nk.solve(
        nk.GradientFlowProblem(model, data, learning_rate=lr, tspan=(0.0, 1.0)), saveat=5
    ).train_loss[-1]
    return float(jax.jit(f)(1.0)), float(f(1.0))


case(
    "jax.jit of building and solving a KernelFlowProblem",
    jit_kernel,
    check=lambda r: abs(r[0] - r[1]) < 1e-12,
)
case(
    "jax.jit of building and solving a GradientFlowProblem",
    jit_gf,
    check=lambda r: abs(r[0] - r[1]) < 1e-12,
)

# -- 7. sol(t) accuracy ------------------------------------------------------------------------


def interp():
    fine = nk.solve(KF, saveat=jnp.linspace(0.0, 1.0, 101))
    coarse = nk.solve(KF, saveat=3)
    doc = type(coarse).__call__.__doc__ or ""
    err = float(jnp.max(jnp.abs(coarse(fine.t).train - fine.train)))
    states_real = "interpolant" in doc and "not the solver" in doc
    return err, states_real


case("sol(t) docstring states the interpolant's real accuracy", interp, check=lambda r: r[1])

# -- scheduled problems (adjoints and events) --------------------------------------------------
_g = jax.random.normal(jax.random.key(3), (3, 16, 16))
GRID = nk.KernelGrid(
    jnp.linspace(0.0, 1.0, 3), jnp.einsum("gij,gkj->gik", _g, _g) + 0.5 * jnp.eye(16)
)


def sched(lr=1.0, exact=True):
    from ntkode import schedules as S

    interp = S.PiecewiseConstant() if exact else S.Smoothstep(order=2)
    return nk.ScheduledKernelProblem(
        GRID, data, S.Time(), interp, tspan=(0.0, 1.0), learning_rate=lr, u0_train=KF.u0_train
    )


def backsolve_scheduled_ode():
    f = lambda lr, adj: nk.solve(
        sched(lr, False), diffrax.Tsit5(), saveat=3, adjoint=adj, rtol=1e-10, atol=1e-12
    ).train_loss[-1]
    g = float(jax.grad(f)(1.0, diffrax.BacksolveAdjoint()))
    return g, fd(lambda lr: f(lr, diffrax.RecursiveCheckpointAdjoint()), 1.0)


case(
    "adjoint=BacksolveAdjoint on ScheduledKernelProblem (ODE), grad vs FD",
    backsolve_scheduled_ode,
    expect="dissipative",
    check=lambda r: abs(r[0] - r[1]) < 1e-3 * abs(r[1]),
)
case(
    "adjoint=BacksolveAdjoint on ScheduledKernelProblem (exact)",
    lambda: nk.solve(sched(), adjoint=diffrax.BacksolveAdjoint()).train_loss[-1],
    expect="dissipative",
)
case(
    "event on ScheduledKernelProblem (exact)",
    lambda: nk.solve(sched(), event=ev, saveat=5).retcode == nk.RESULTS.event_occurred,
    expect="does not support events",
    check=lambda ok: bool(ok),
)
case(
    "event on ScheduledKernelProblem (ODE)",
    lambda: (
        nk.solve(sched(exact=False), diffrax.Tsit5(), event=ev, saveat=5).retcode
        == nk.RESULTS.event_occurred
    ),
    check=lambda ok: bool(ok),
)

# -- older checks (test_bad_input) --------------------------------------------------------------
wrong_in = eqx.nn.MLP(5, 1, 8, 1, key=jax.random.key(0), dtype=jnp.float64)
case("model input size != data", lambda: nk.GradientFlowProblem(wrong_in, data), expect="(5,)")
wrong_out = eqx.nn.MLP(3, 2, 8, 1, key=jax.random.key(0), dtype=jnp.float64)
case("model outputs != targets", lambda: nk.GradientFlowProblem(wrong_out, data), expect="out_size")
case("x/y length mismatch", lambda: nk.Dataset(np.zeros((5, 2)), np.zeros(4)), expect="4")
case(
    "NaN in x_train", lambda: nk.Dataset(np.full((4, 2), np.nan), np.zeros(4)), expect="non-finite"
)
case("empty x_train", lambda: nk.Dataset(np.zeros((0, 2)), np.zeros(0)), expect="empty")
case(
    "learning_rate <= 0",
    lambda: nk.GradientFlowProblem(model, data, learning_rate=-1.0),
    expect="positive",
)
case(
    "reversed tspan",
    lambda: nk.GradientFlowProblem(model, data, tspan=(1.0, 0.0)),
    expect="reversed",
)
case("unknown loss name", lambda: nk.GradientFlowProblem(model, data, loss="hinge"), expect="hinge")
case(
    "kernel of wrong shape", lambda: nk.KernelFlowProblem(jnp.zeros((15, 16)), data), expect="shape"
)
case(
    "max_steps reached", lambda: nk.solve(GF, max_steps=3).message, check=lambda m: "max_steps" in m
)
case(
    "saveat outside tspan",
    lambda: nk.solve(GF, saveat=jnp.array([0.0, 2.0])),
    expect="inside tspan",
)
case(
    "saveat not increasing", lambda: nk.solve(GF, saveat=jnp.array([0.5, 0.2])), expect="increasing"
)
case("rtol < 0", lambda: nk.solve(GF, rtol=-1.0), expect="rtol")
case("max_steps = 0", lambda: nk.solve(GF, max_steps=0), expect="max_steps")
case("solve of a non-problem", lambda: nk.solve("x"), expect="problem")
case("remake with an unknown field", lambda: nk.remake(GF, learning_rat=2.0), expect="no field")
case(
    "unknown ntk implementation",
    lambda: nk.ntk(model, data.x_train, implementation="magic"),
    expect="implementation",
)

# -- CLI ---------------------------------------------------------------------------------------


def cli(args, timeout=120):
    env = dict(os.environ)
    p = subprocess.run(
        [sys.executable, "-m", "ntkode", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    return p


def cli_case(name, args, expect, timeout=120):
    if ONLY not in name:
        return
    try:
        p = cli(args, timeout)
    except subprocess.TimeoutExpired:
        rows.append((name, "silent", f"no error within {timeout} s (the study ran)"))
        return
    err = p.stderr.strip()
    if "Traceback" in err:
        last = err.splitlines()[-1]
        rows.append((name, "traceback", last[:150]))
    elif p.returncode != 0 and expect.lower() in err.lower():
        rows.append((name, "clear", err.splitlines()[-1][:150]))
    elif p.returncode == 0:
        rows.append(
            (name, "silent", "exit 0: " + (p.stdout.strip().splitlines() or [""])[-1][:120])
        )
    else:
        rows.append((name, "traceback", err[-150:]))


tmp = tempfile.mkdtemp()
afile = os.path.join(tmp, "file")
open(afile, "w").write("x")
for command in ("compare", "widths", "closure", "mkl"):
    cli_case(f"ntkode {command} --out <a file>", [command, "--quick", "--out", afile], "--out")
    cli_case(
        f"ntkode {command} --out <under a file>",
        [command, "--quick", "--out", os.path.join(afile, "x")],
        "--out",
    )
cli_case("ntkode closure --width 0", ["closure", "--quick", "--width", "0", "--out", tmp], "width")
cli_case(
    "ntkode mkl --folds 1",
    ["mkl", "--quick", "--datasets", "iris", "--folds", "1", "--out", tmp],
    "folds",
)
cli_case(
    "ntkode widths --seeds 0",
    ["widths", "--quick", "--seeds", "0", "--out", tmp],
    "seeds",
    timeout=300,
)
cli_case("ntkode compare --t-end -1", ["compare", "--t-end", "-1", "--out", tmp], "t-end")
cli_case("ntkode closure --steps -1", ["closure", "--steps", "-1", "--out", tmp], "steps")


def quick_keeps(args, module, key, value):
    # The study records its settings: does --quick keep the explicit value?
    out = tempfile.mkdtemp()
    p = subprocess.Popen(
        [sys.executable, "-m", "ntkode", *args, "--out", out],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    first = p.stdout.readline() + p.stdout.readline()
    p.send_signal(signal.SIGINT)
    try:
        p.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        p.kill()
    return value in first


for flag, val, text in (
    ("--width", "32", "->32x"),
    ("--n-train", "40", "n_train=40"),
    ("--t-end", "3", "[0, 3.0]"),
):
    case(
        f"ntkode compare --quick {flag} {val}",
        lambda flag=flag, val=val, text=text: quick_keeps(
            ["compare", "--quick", "--no-progress", flag, val], None, None, text
        ),
        check=lambda kept: kept,
    )

for name, outcome, detail in rows:
    print(f"{name} | {outcome} | {detail}", flush=True)
