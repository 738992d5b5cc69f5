"""Try every bad input and call of the "nothing silent" tally, and classify what ntkode does.

    PYTHONPATH=<checkout> python docs/bad_input_tally.py [--only NAME ...]

Each case prints one line: `clear` (an exception of one sentence that names the argument and
what to do, or the CLI's one-line error), `traceback` (any other exception, or misleading
advice), `silent` (no error, and a wrong number, a NaN or an ignored argument), or `works`
(the call is now supported and gives the right answer). The verdicts are checked by the
function of each case, not assumed; `docs/bad_input_tally.md` records a run on the code
before and after the fix.
"""

import argparse
import contextlib
import io
import os
import sys
import tempfile
import traceback

import jax

jax.config.update("jax_enable_x64", True)

import diffrax  # noqa: E402
import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import ntkode as nk  # noqa: E402
from ntkode import schedules as S  # noqa: E402

CASES = {}


def case(fn):
    CASES[fn.__name__] = fn
    return fn


def _small():
    kx, kt, km = jax.random.split(jax.random.key(0), 3)
    x, xt = jax.random.normal(kx, (8, 3)), jax.random.normal(kt, (4, 3))
    data = nk.Dataset(x, jnp.sin(x.sum(-1)), xt, jnp.sin(xt.sum(-1)))
    model = eqx.nn.MLP(3, 1, 8, 1, activation=jnp.tanh, key=km)
    return model, data


MODEL, DATA = _small()
KERNEL = nk.ntk(MODEL, DATA.x_train)


def _kernel_problem(lr=1.0, **kw):
    return nk.KernelFlowProblem(KERNEL, DATA, tspan=(0.0, 2.0), learning_rate=lr, **kw)


def _grid():
    k = jax.random.normal(jax.random.key(3), (3, 8, 8))
    kernels = jnp.einsum("gij,gkj->gik", k, k) + 0.5 * jnp.eye(8)
    return nk.KernelGrid(jnp.linspace(0.0, 2.0, 3), kernels)


def _scheduled(lr=1.0, exact=True):
    interp = S.PiecewiseConstant() if exact else S.Smoothstep(order=2)
    return nk.ScheduledKernelProblem(
        _grid(), DATA, S.Time(), interp, tspan=(0.0, 2.0), learning_rate=lr
    )


def _grad_check(make, solver):
    def f(lr, adjoint):
        sol = nk.solve(make(lr), solver, saveat=3, rtol=1e-10, atol=1e-12, adjoint=adjoint)
        return sol.train_loss[-1]

    good = float(jax.grad(f)(1.0, diffrax.RecursiveCheckpointAdjoint()))
    bad = float(jax.grad(f)(1.0, diffrax.BacksolveAdjoint()))
    fd = (float(f(1.0 + 1e-5, None)) - float(f(1.0 - 1e-5, None))) / 2e-5
    ok = abs(bad - fd) < 1e-5 * max(1.0, abs(fd))
    return ("works" if ok else "silent"), f"Backsolve {bad:.4g}, fd {fd:.4g}, default {good:.4g}"


# ---------------------------------------------------------------- 1. adjoints


@case
def backsolve_gradient_flow():
    p = nk.GradientFlowProblem(MODEL, DATA, tspan=(0.0, 2.0))
    nk.solve(p, adjoint=diffrax.BacksolveAdjoint())
    return "works", "solved"


@case
def backsolve_grad_kernel_ode():
    return _grad_check(_kernel_problem, diffrax.Tsit5())


@case
def backsolve_grad_kernel_closed_form():
    return _grad_check(_kernel_problem, None)


@case
def backsolve_grad_scheduled_ode():
    return _grad_check(lambda lr: _scheduled(lr, exact=False), diffrax.Tsit5())


@case
def implicit_adjoint_kernel_ode():
    sol = nk.solve(_kernel_problem(), diffrax.Tsit5(), adjoint=diffrax.ImplicitAdjoint())
    return "silent", f"accepted (a steady-state adjoint on a finite horizon): {sol.result}"


# ---------------------------------------------------------------- 2. events


def _loss_event(level):
    return diffrax.Event(lambda t, y, args, **kw: nk.losses.mse(y[0], DATA.y_train) - level)


@case
def event_gradient_flow():
    p = nk.GradientFlowProblem(MODEL, DATA, tspan=(0.0, 2.0))
    full = nk.solve(p, saveat=5)
    _, static = eqx.partition(MODEL, eqx.is_inexact_array)
    level = float(full.train_loss[2])

    def cond(t, y, args, **kw):
        return nk.losses.mse(jax.vmap(eqx.combine(y, static))(DATA.x_train), DATA.y_train) - level

    sol = nk.solve(p, saveat=5, event=diffrax.Event(cond))
    finite = bool(np.all(np.isfinite(np.asarray(sol.t)))) and bool(
        np.all(np.isfinite(np.asarray(sol(1.5).train)))
    )
    recorded = getattr(sol, "event_time", None) is not None
    verdict = "works" if finite and recorded and sol.success else "silent"
    return verdict, f"t={np.asarray(sol.t)}, success={sol.success}, sol(1.5) finite={finite}"


@case
def event_kernel_closed_form():
    p = _kernel_problem()
    level = 0.5 * float(nk.losses.mse(p.u0_train, DATA.y_train))
    sol = nk.solve(p, saveat=5, event=_loss_event(level))
    end = float(sol.summary()["final_train_loss"])
    verdict = "works" if abs(end - level) < 1e-9 else "silent"
    return verdict, f"final loss {end:.4g} vs level {level:.4g}"


@case
def event_scheduled_exact():
    p = _scheduled()
    level = 0.5 * float(nk.losses.mse(p.u0_train, DATA.y_train))
    sol = nk.solve(p, saveat=5, event=_loss_event(level))
    end = float(sol.summary()["final_train_loss"])
    verdict = "works" if abs(end - level) < 1e-9 else "silent"
    return verdict, f"final loss {end:.4g} vs level {level:.4g}"


# ---------------------------------------------------------------- 3. cross-entropy


def _labels():
    x = jax.random.normal(jax.random.key(7), (20, 3))
    return x, jnp.arange(20) % 10


@case
def ce_integer_labels_ten_outputs():
    x, labels = _labels()
    model = eqx.nn.MLP(3, 10, 16, 1, activation=jnp.tanh, key=jax.random.key(1))
    p = nk.GradientFlowProblem(model, nk.Dataset(x, labels), loss="cross_entropy")
    loss0 = float(nk.solve(p, saveat=2).train_loss[0])
    return ("works" if 1.5 < loss0 < 3.5 else "silent"), f"initial loss {loss0:.4g}"


@case
def ce_integer_labels_one_output():
    x, labels = _labels()
    model = eqx.nn.MLP(3, 1, 16, 1, activation=jnp.tanh, key=jax.random.key(1))
    p = nk.GradientFlowProblem(model, nk.Dataset(x, labels), loss="cross_entropy")
    return "silent", f"loss {np.asarray(nk.solve(p, saveat=2).train_loss)}"


@case
def ce_real_targets():
    x, _ = _labels()
    model = eqx.nn.MLP(3, 1, 16, 1, activation=jnp.tanh, key=jax.random.key(1))
    p = nk.GradientFlowProblem(model, nk.Dataset(x, jnp.sin(x[:, 0])), loss="cross_entropy")
    return "silent", f"loss {np.asarray(nk.solve(p, saveat=2).train_loss)}"


# ---------------------------------------------------------------- 4. silently accepted


@case
def non_psd_kernel():
    bad = KERNEL[:, :, 0, 0] - 2.0 * jnp.eye(8)
    sol = nk.solve(nk.KernelFlowProblem(bad, DATA, tspan=(0.0, 50.0)), saveat=3)
    return "silent", f"loss {float(sol.train_loss[0]):.3g} -> {float(sol.train_loss[-1]):.3g}"


@case
def compare_different_data():
    other = nk.Dataset(DATA.x_train, -DATA.y_train, DATA.x_test, DATA.y_test)
    a = nk.solve(_kernel_problem(), saveat=5)
    b = nk.solve(nk.KernelFlowProblem(KERNEL, other, tspan=(0.0, 2.0)), saveat=5)
    nk.compare(a, b)
    return "silent", "compared"


@case
def certify_negative_learning_rate():
    c = nk.certify(_grid(), -1.0)
    return "silent", f"accepted: certified rate {float(c.rate):.3g}"


@case
def rtol_beside_controller():
    sol = nk.solve(
        _kernel_problem(),
        diffrax.Tsit5(),
        rtol=1e-3,
        stepsize_controller=diffrax.PIDController(1e-4, 1e-6),
    )
    return "silent", f"rtol dropped: {sol.result}"


@case
def ntk_inputs_that_broadcast():
    k = nk.ntk(MODEL, DATA.x_train[:, :, None])
    return "silent", f"kernel of shape {k.shape}"


# ---------------------------------------------------------------- 5. solver objects


@case
def solver_as_a_string():
    nk.solve(_kernel_problem(), "tsit5")
    return "silent", "accepted"


@case
def solver_as_a_class():
    nk.solve(_kernel_problem(), diffrax.Tsit5)
    return "silent", "accepted"


@case
def euler_without_dt0():
    nk.solve(_kernel_problem(), diffrax.Euler())
    return "silent", "accepted"


# ---------------------------------------------------------------- 6. jit


@case
def jit_build_and_solve_kernel():
    f = lambda lr: nk.solve(_kernel_problem(lr), diffrax.Tsit5(), saveat=3).train_loss[-1]
    got = float(jax.jit(f)(1.0))
    return ("works" if abs(got - float(f(1.0))) < 1e-9 else "silent"), f"{got:.6g}"


@case
def jit_vmap_grad_build_and_solve_true_flow():
    def f(lr):
        p = nk.GradientFlowProblem(MODEL, DATA, tspan=(0.0, 2.0), learning_rate=lr)
        return nk.solve(p, saveat=3).train_loss[-1]

    got = np.asarray(jax.jit(jax.vmap(jax.grad(f)))(jnp.array([0.5, 1.0])))
    fd = (float(f(1.0 + 1e-5)) - float(f(1.0 - 1e-5))) / 2e-5
    return ("works" if abs(got[1] - fd) < 1e-5 else "silent"), f"{got} (fd at 1.0: {fd:.6g})"


# ---------------------------------------------------------------- the earlier foundation checks


@case
def data_with_nan():
    x = np.ones((4, 2))
    x[1, 0] = np.nan
    nk.Dataset(x, np.zeros(4))
    return "silent", "accepted"


@case
def learning_rate_negative():
    nk.solve(_kernel_problem(lr=-1.0))
    return "silent", "accepted"


@case
def tspan_reversed():
    nk.KernelFlowProblem(KERNEL, DATA, tspan=(1.0, 0.0))
    return "silent", "accepted"


@case
def unknown_loss():
    nk.GradientFlowProblem(MODEL, DATA, loss="hinge")
    return "silent", "accepted"


@case
def model_input_size_mismatch():
    nk.GradientFlowProblem(eqx.nn.MLP(5, 1, 8, 1, key=jax.random.key(0)), DATA)
    return "silent", "accepted"


@case
def saveat_outside_tspan():
    sol = nk.solve(_kernel_problem(), saveat=jnp.array([0.0, 3.0]))
    return "silent", f"t = {np.asarray(sol.t)}"


@case
def kernel_with_wrong_size():
    nk.KernelFlowProblem(jnp.eye(5), DATA)
    return "silent", "accepted"


@case
def max_steps_exhausted_with_throw():
    p = nk.GradientFlowProblem(MODEL, DATA, tspan=(0.0, 2.0))
    nk.solve(p, max_steps=2, throw=True)
    return "silent", "no error"


# ---------------------------------------------------------------- the CLIs


def _cli(argv):
    from ntkode.studies import _cli

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = _cli.main(argv)
        except SystemExit as exc:
            code = exc.code
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    return code, lines


def _cli_case(argv, bad_when_ok="silent"):
    code, lines = _cli(argv)
    if code == 0:
        return bad_when_ok, "exit 0"
    if any("Traceback" in line for line in lines) or len(lines) > 3:
        return "traceback", lines[-1] if lines else f"exit {code}"
    return "clear", lines[-1] if lines else f"exit {code}"


def _out_is_a_file(command):
    def run():
        with tempfile.NamedTemporaryFile() as f:
            return _cli_case([command, "--quick", "--out", f.name])

    run.__name__ = f"cli_{command}_out_is_a_file"
    CASES[run.__name__] = run


for _command in ("compare", "widths", "closure", "mkl"):
    _out_is_a_file(_command)


@case
def cli_widths_seeds_zero():
    with tempfile.TemporaryDirectory() as d:
        return _cli_case(["widths", "--seeds", "0", "--widths", "8", "--t-end", "0.1",
                          "--n-train", "4", "--n-test", "4", "--out", d])  # fmt: skip


@case
def cli_mkl_folds_one():
    with tempfile.TemporaryDirectory() as d:
        return _cli_case(["mkl", "--quick", "--datasets", "iris", "--folds", "1", "--out", d])


@case
def cli_closure_width_zero():
    with tempfile.TemporaryDirectory() as d:
        return _cli_case(["closure", "--quick", "--width", "0", "--out", d])


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", nargs="*")
    args = parser.parse_args(argv)
    for name, fn in CASES.items():
        if args.only and name not in args.only:
            continue
        try:
            verdict, detail = fn()
        except Exception as err:  # classify, never stop
            first = (str(err).strip().splitlines() or [""])[0]
            long = len(str(err).strip().splitlines()) > 3
            kind = type(err).__name__
            verdict = "traceback" if long or kind not in ("ValueError", "TypeError") else "clear"
            detail = f"{kind}: {first[:160]}"
            if os.environ.get("TALLY_TRACE"):
                traceback.print_exc()
        detail = " ".join(str(detail).split())
        print(f"{name:<42} {verdict:<10} {detail[:200]}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
