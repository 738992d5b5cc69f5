"""Nothing silent: every call that used to give a wrong number, a NaN or an ignored argument
now gives the right answer or one sentence saying what to do.

Adjoints agree with finite differences on every problem type (or are refused); events stop
every problem and are recorded; cross-entropy takes integer labels or one-hot rows only;
bad kernels, mismatched comparisons and stray solver objects are refused; building and
solving a problem works under `jax.jit`, `jax.vmap` and `jax.grad`; `sol(t)` states (and
meets) its real accuracy.
"""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
import pytest
from helpers import psd_kernels, small_sine

import ntkode as nk
from ntkode import schedules as S

T_END = 2.0


@pytest.fixture(scope="module")
def setup():
    model, data = small_sine(n_train=8, n_test=4, dim=3, width=8)
    kernel = nk.ntk(model, data.x_train)
    kernel_test = nk.ntk(model, data.x_test, data.x_train)
    u0, us0 = jax.vmap(model)(data.x_train), jax.vmap(model)(data.x_test)
    grid_kernels = psd_kernels(jax.random.key(3), 3, 8, shift=0.5)
    grid_test = 0.3 * jax.random.normal(jax.random.key(4), (3, 4, 8))
    return dict(
        model=model,
        data=data,
        kernel=kernel,
        kernel_test=kernel_test,
        u0=u0,
        us0=us0,
        grid=(jnp.linspace(0.0, T_END, 3), grid_kernels, grid_test),
    )


def _problem(kind: str, s: dict, lr):
    """A problem of each type, built from a (possibly traced) learning rate."""
    data, tspan = s["data"], (0.0, T_END)
    if kind == "gradient_flow":
        return nk.GradientFlowProblem(s["model"], data, tspan=tspan, learning_rate=lr), None
    if kind.startswith("kernel"):
        p = nk.KernelFlowProblem(
            s["kernel"],
            data,
            tspan=tspan,
            learning_rate=lr,
            kernel_test=s["kernel_test"],
            u0_train=s["u0"],
            u0_test=s["us0"],
        )
        return p, (None if kind == "kernel_exact" else diffrax.Tsit5())
    nodes, kt, ks = s["grid"]
    grid = nk.KernelGrid(nodes, kt, ks)
    exact = kind == "scheduled_exact"
    # Smooth weights for the ODE: linear (hat) weights put kinks in t at the nodes, where the
    # discrete solve's derivative converges only like the local step (measured 3e-5 relative
    # at rtol 1e-10), which would test the kinks, not the adjoints.
    interp = S.PiecewiseConstant() if exact else S.Smoothstep(order=2)
    p = nk.ScheduledKernelProblem(
        grid, data, S.Time(), interp, tspan=tspan, learning_rate=lr, u0_train=s["u0"]
    )
    assert p.exact == exact
    return p, (None if exact else diffrax.Tsit5())


KINDS = ("gradient_flow", "kernel_exact", "kernel_ode", "scheduled_exact", "scheduled_ode")
ADJOINTS = (diffrax.RecursiveCheckpointAdjoint(), diffrax.DirectAdjoint(), diffrax.ForwardMode())


def _final_loss(kind, s, adjoint):
    def f(lr):
        problem, solver = _problem(kind, s, lr)
        sol = nk.solve(problem, solver, saveat=3, rtol=1e-10, atol=1e-12, adjoint=adjoint)
        return sol.train_loss[-1] + sol.test_loss[-1]

    return f


# ---------------------------------------------------------------- 1. adjoints


def _cases():
    # Closed forms and the default adjoint on every problem are fast; the other adjoints on
    # ODE solves compile a second differentiated solve each (~1 minute on 2 busy cores).
    for kind in KINDS:
        for adjoint in ADJOINTS:
            default = isinstance(adjoint, diffrax.RecursiveCheckpointAdjoint)
            marks = () if kind.endswith("exact") or default else (pytest.mark.slow,)
            yield pytest.param(kind, adjoint, marks=marks, id=f"{kind}-{type(adjoint).__name__}")


@pytest.mark.parametrize(("kind", "adjoint"), list(_cases()))
def test_every_accepted_adjoint_agrees_with_finite_differences(setup, kind, adjoint):
    f = _final_loss(kind, setup, adjoint)
    lr = 0.8
    # ForwardMode supports forward-mode autodiff only; the others reverse mode.
    diff = jax.jacfwd if isinstance(adjoint, diffrax.ForwardMode) else jax.grad
    grad = float(diff(f)(lr))
    h = 1e-5
    fd = (float(f(lr + h)) - float(f(lr - h))) / (2 * h)
    # float64, solves at rtol 1e-10: central differences are good to ~1e-8 relative
    # (truncation h² times the third derivative, and solver noise 1e-10/h); the loss moves
    # by O(0.1) per unit learning rate.
    assert abs(fd) > 1e-3
    np.testing.assert_allclose(grad, fd, rtol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_backsolve_and_implicit_adjoints_are_refused_with_a_reason(setup, kind):
    problem, solver = _problem(kind, setup, 1.0)
    with pytest.raises(ValueError, match="BacksolveAdjoint.*backwards.*dissipative.*"):
        nk.solve(problem, solver, adjoint=diffrax.BacksolveAdjoint())
    with pytest.raises(ValueError, match="ImplicitAdjoint.*steady state.*RecursiveCheckpoint"):
        nk.solve(problem, solver, adjoint=diffrax.ImplicitAdjoint())
    with pytest.raises(TypeError, match="`adjoint` must be a diffrax adjoint"):
        nk.solve(problem, solver, adjoint="backsolve")


def test_backsolve_really_is_unstable_on_a_training_flow(setup):
    # Why it is refused: diffrax's BacksolveAdjoint on the frozen-kernel flow (called
    # directly) against the discretise-then-optimise gradient, which finite differences
    # confirm above. Reversing a dissipative flow of rates up to ηλ_max/n amplifies errors
    # like exp(ηλ_max t/n): over 40 e-folds of the fastest mode it still agreed (to 3e-7),
    # over 80 it gave 0.114 against the correct -0.00686 (the sine problem runs ~800).
    s = setup
    field = nk.KernelFlowProblem(s["kernel"], s["data"], u0_train=s["u0"]).vector_field
    lam_max = float(jnp.linalg.eigvalsh(s["kernel"][:, :, 0, 0])[-1])
    t1 = 80.0 * 8 / lam_max  # 80 e-folds of the fastest mode

    def loss(lr, adjoint):
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(field),
            diffrax.Tsit5(),
            0.0,
            t1,
            None,
            (s["u0"], s["us0"]),
            args=lr,
            stepsize_controller=diffrax.PIDController(rtol=1e-6, atol=1e-8),
            adjoint=adjoint,
            max_steps=20_000,
            throw=False,
        )
        return nk.losses.mse(sol.ys[0][-1], s["data"].y_train)  # pyright: ignore

    good = float(jax.grad(loss)(1.0, diffrax.RecursiveCheckpointAdjoint()))
    bad = float(jax.grad(loss)(1.0, diffrax.BacksolveAdjoint()))
    assert abs(bad - good) > 10 * abs(good), (good, bad)


# ---------------------------------------------------------------- 5. solver objects


def test_solver_given_as_a_string_or_a_class_gets_a_sentence(setup):
    problem, _ = _problem("gradient_flow", setup, 1.0)
    with pytest.raises(TypeError, match="not the string 'tsit5'"):
        nk.solve(problem, "tsit5")
    with pytest.raises(TypeError, match=r"pass Tsit5\(\) \(with parentheses\)"):
        nk.solve(problem, diffrax.Tsit5)
    with pytest.raises(TypeError, match="must be a diffrax solver"):
        nk.solve(problem, optx.Newton(1e-6, 1e-6))


def test_solver_without_error_estimate_asks_for_dt0_and_a_constant_step(setup):
    problem, _ = _problem("gradient_flow", setup, 1.0)
    with pytest.raises(ValueError, match="no error estimate.*pass `dt0`.*ConstantStepSize"):
        nk.solve(problem, diffrax.Euler())
    with pytest.raises(ValueError, match="needs `dt0`"):
        nk.solve(problem, diffrax.Euler(), stepsize_controller=diffrax.ConstantStepSize())
    # Done as the sentence says, Euler runs: first order, so h = 0.01 is ~1e-3 off Tsit5.
    sol = nk.solve(
        problem, diffrax.Euler(), dt0=0.01, stepsize_controller=diffrax.ConstantStepSize()
    )
    ref = nk.solve(problem, rtol=1e-8, atol=1e-10)
    assert sol.success and float(jnp.max(jnp.abs(sol.train - ref.train))) < 1e-2


# ---------------------------------------------------------------- 6. jit, vmap, grad


@pytest.mark.parametrize("kind", ("gradient_flow", "kernel_exact", "kernel_ode"))
def test_building_and_solving_under_jit_vmap_and_grad(setup, kind):
    # A user's outer function builds the problem from a traced learning rate and solves it
    # (hyperparameter sweeps, meta-gradients): jit, vmap and grad all go through, and agree
    # with the eager call.
    f = _final_loss(kind, setup, None)
    lrs, h = jnp.array([0.5, 1.0]), 1e-5
    eager = np.array([float(f(lr)) for lr in lrs])
    fd = np.array([(float(f(lr + h)) - float(f(lr - h))) / (2 * h) for lr in lrs])
    np.testing.assert_allclose(jax.jit(jax.vmap(f))(lrs), eager, rtol=1e-9)
    # Central differences of float64 solves at rtol 1e-10: ~1e-8 relative.
    np.testing.assert_allclose(jax.jit(jax.vmap(jax.grad(f)))(lrs), fd, rtol=1e-6)
    assert np.all(np.diff(eager) < 0)  # a larger learning rate trains further


def test_checks_still_run_under_jit(setup):
    s = setup

    def bad_saveat(t1):
        p = nk.KernelFlowProblem(s["kernel"], s["data"], tspan=(0.0, t1))
        return nk.solve(p, saveat=jnp.array([0.0, 0.5, 2.0])).train_loss[-1]

    # Traced tspan: the saved times are checked at run time instead of being clipped.
    with pytest.raises(Exception, match="`saveat` times must be .* inside `tspan`"):
        jax.block_until_ready(jax.jit(bad_saveat)(1.0))

    def budget(lr):
        p = nk.GradientFlowProblem(s["model"], s["data"], tspan=(0.0, T_END), learning_rate=lr)
        return nk.solve(p, max_steps=2, throw=True).train_loss[-1]

    # throw=True raises the result's own sentence, at run time under jit.
    with pytest.raises(Exception, match="took `max_steps` steps"):
        jax.block_until_ready(jax.jit(budget)(1.0))


# ---------------------------------------------------------------- 2. events


def _loss_below(level, data):
    """A real-valued event: the train loss crosses `level` (state `(u, u*)`)."""
    return lambda t, y, args, **kwargs: nk.losses.mse(y[0], data.y_train) - level


def _weights_loss_below(level, model, data):
    """The same event for the true flow, whose state is the weights."""
    _, static = eqx.partition(model, eqx.is_inexact_array)

    def cond(t, y, args, **kwargs):  # diffrax passes `y` by name
        u = jax.vmap(eqx.combine(y, static))(data.x_train)
        return nk.losses.mse(u, data.y_train) - level

    return cond


def test_event_stops_the_true_flow_and_the_solution_records_it(setup):
    s = setup
    problem, _ = _problem("gradient_flow", s, 1.0)
    ts = jnp.linspace(0.0, T_END, 9)
    full = nk.solve(problem, saveat=ts, rtol=1e-10, atol=1e-12)
    level = float(full.train_loss[4])  # reached at t = 1.0
    cond = _weights_loss_below(level, s["model"], s["data"])
    event = diffrax.Event(cond, root_finder=optx.Newton(1e-12, 1e-12))
    sol = nk.solve(problem, saveat=ts, rtol=1e-10, atol=1e-12, event=event, save_weights=True)
    assert sol.retcode == nk.RESULTS.event_occurred and sol.success
    assert "event" in sol.message and "event_time" in sol.message
    # When: the root finder's crossing, which is t = 1.0 of the uninterrupted run.
    np.testing.assert_allclose(sol.event_time, 1.0, atol=1e-7)
    # Where: the outputs at the stop, with the loss at the level.
    np.testing.assert_allclose(nk.losses.mse(sol.final.train, s["data"].y_train), level, rtol=1e-9)
    np.testing.assert_allclose(sol.final.train, full.train[4], rtol=1e-6, atol=1e-9)
    # The saved times stay the requested ones; past the stop, the outputs are held.
    np.testing.assert_array_equal(sol.t, ts)
    np.testing.assert_array_equal(sol.saved, ts <= sol.event_time)
    for arr in (sol.train, sol.test, sol.train_loss, sol.test_loss):
        assert np.all(np.isfinite(arr))
    np.testing.assert_allclose(sol.train[6], sol.final.train, rtol=0, atol=0)
    assert float(jnp.max(jnp.abs(sol.train_dot[6]))) == 0.0
    last = jax.tree.map(lambda w: w[-1], sol.weights)
    _, static = eqx.partition(s["model"], eqx.is_inexact_array)
    out = jax.vmap(eqx.combine(last, static))(s["data"].x_train)
    np.testing.assert_allclose(out, sol.final.train, rtol=1e-12, atol=1e-12)
    # sol(t): the flow before the stop (to interpolation accuracy), the stop state after.
    np.testing.assert_allclose(sol(0.9).train, full(0.9).train, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(sol(1.6).train, sol.final.train, rtol=0, atol=0)
    assert np.all(np.isfinite(sol(jnp.linspace(0.0, T_END, 17)).train))
    summary = sol.summary()
    np.testing.assert_allclose(summary["t_end"], 1.0, atol=1e-7)
    np.testing.assert_allclose(summary["final_train_loss"], level, rtol=1e-9)
    # compare(): errors up to the stop (where the two runs are the same flow), no error.
    row = nk.compare(full, stopped=sol).rows["stopped"]
    assert row["max_rel_train_error"] < 1e-6 and row["t_end"] == pytest.approx(1.0, abs=1e-7)


def test_closed_form_event_is_found_exactly(setup):
    # A kernel 2·I makes every mode decay alike: L(t) = L0 exp(-4ηt/n), so the loss reaches
    # `level` at t* = n/(4η) log(L0/level), to machine precision on the closed form.
    s = setup
    data, lr = s["data"], 0.7
    problem = nk.KernelFlowProblem(2.0 * jnp.eye(8), data, tspan=(0.0, 20.0), learning_rate=lr)
    l0 = float(nk.losses.mse(problem.u0_train, data.y_train))
    level = 0.3 * l0
    expected = 8 / (4 * lr) * np.log(l0 / level)
    sol = nk.solve(problem, saveat=11, event=diffrax.Event(_loss_below(level, data)))
    assert sol.retcode == nk.RESULTS.event_occurred and int(sol.num_steps) == 0
    np.testing.assert_allclose(sol.event_time, expected, rtol=1e-13)
    np.testing.assert_allclose(sol.summary()["final_train_loss"], level, rtol=1e-12)
    # A boolean condition stops at the first time it is True (bisected, not differentiated).
    below = lambda t, y, args, **kwargs: nk.losses.mse(y[0], data.y_train) < level
    np.testing.assert_allclose(
        nk.solve(problem, event=diffrax.Event(below)).event_time, expected, rtol=1e-12
    )
    # The event's `direction` is honoured: an up-crossing never happens on a falling loss.
    up = nk.solve(problem, event=diffrax.Event(_loss_below(level, data), direction=True))
    assert up.retcode == nk.RESULTS.successful and up.event_time is None
    assert float(up.t_stop) == 20.0
    # Several conditions: the first to trigger stops the solve.
    late = _loss_below(0.1 * l0, data)
    both = nk.solve(problem, event=diffrax.Event([late, _loss_below(level, data)]))
    np.testing.assert_allclose(both.event_time, expected, rtol=1e-13)


def test_closed_form_event_time_agrees_with_the_ode_and_is_differentiable(setup):
    s = setup

    def stop(lr, solver):
        problem, _ = _problem("kernel_exact", s, lr)
        event = diffrax.Event(_loss_below(0.2, s["data"]), root_finder=optx.Newton(1e-12, 1e-12))
        sol = nk.solve(problem, solver, saveat=5, event=event, rtol=1e-11, atol=1e-13)
        return sol.t_stop

    exact = float(stop(1.0, None))
    assert 0.0 < exact < T_END
    np.testing.assert_allclose(exact, float(stop(1.0, diffrax.Tsit5())), rtol=1e-9)
    # dt*/dη by the implicit function theorem (optimistix's root-find adjoint), against
    # central differences of the exact crossing time. For a flow run by its learning rate
    # t*(η) = t*(1)/η, so dt*/dη = -t*(1) exactly.
    grad = float(jax.grad(stop)(1.0, None))
    np.testing.assert_allclose(grad, -exact, rtol=1e-9)


def test_scheduled_events_on_the_ode_path_and_on_the_exact_path(setup):
    s = setup
    ode, solver = _problem("scheduled_ode", s, 1.0)
    event = diffrax.Event(_loss_below(0.2, s["data"]), root_finder=optx.Newton(1e-12, 1e-12))
    sol = nk.solve(ode, solver, saveat=5, event=event, rtol=1e-10, atol=1e-12)
    assert sol.retcode == nk.RESULTS.event_occurred
    np.testing.assert_allclose(sol.summary()["final_train_loss"], 0.2, rtol=1e-9)
    # The exact per-piece solver locates the same event on its closed form.
    exact, _ = _problem("scheduled_exact", s, 1.0)
    sol = nk.solve(exact, saveat=5, event=event)
    assert sol.retcode == nk.RESULTS.event_occurred
    np.testing.assert_allclose(sol.summary()["final_train_loss"], 0.2, rtol=1e-10)


def test_closed_form_event_keeps_the_closed_forms_own_result(setup):
    # The shared closed-form path (ntkode/_core/_exact.py) that every exact solver uses: an
    # event turns a successful closed form into `event_occurred`, and never hides a closed
    # form's own failure (e.g. an approximate basis that missed its tolerance).
    from ntkode._core._exact import exact_solution

    problem, _ = _problem("kernel_exact", setup, 1.0)
    event = diffrax.Event(_loss_below(0.2, setup["data"]))
    options = nk.SolveOptions(saveat=5, event=event).resolve(problem)
    ok = exact_solution(problem, problem._exact_outputs, options, "kernel")
    assert ok.retcode == nk.RESULTS.event_occurred and 0.0 < float(ok.t_stop) < T_END
    bad = exact_solution(
        problem, problem._exact_outputs, options, "kernel", result=nk.RESULTS.not_converged
    )
    assert bad.retcode == nk.RESULTS.not_converged and not bad.success
    # It stopped at the same place; past the stop, a failed solve holds NaN, not values.
    np.testing.assert_array_equal(bad.t_stop, ok.t_stop)
    past = ~np.asarray(bad.saved)
    assert past.any() and np.all(np.isnan(np.asarray(bad.train)[past]))


# ---------------------------------------------------------------- 3. cross-entropy targets


def _labelled(n=20, m=10, d=3, classes=10):
    kx, kt = jax.random.split(jax.random.key(7))
    x, xt = jax.random.normal(kx, (n, d)), jax.random.normal(kt, (m, d))
    return x, jnp.arange(n) % classes, xt, jnp.arange(m) % classes


def test_integer_labels_train_a_ten_output_model_with_cross_entropy():
    x, labels, xt, labels_t = _labelled()
    data = nk.Dataset(x, labels, xt, labels_t)
    assert data.num_classes == 10 and data.y_train.shape == (20, 10)
    np.testing.assert_array_equal(jnp.argmax(data.y_train, -1), labels)
    model = eqx.nn.MLP(3, 10, 16, 1, activation=jnp.tanh, key=jax.random.key(1))
    problem = nk.GradientFlowProblem(model, data, loss=nk.losses.cross_entropy, tspan=(0.0, 5.0))
    sol = nk.solve(problem, saveat=6)
    u0 = jax.vmap(model)(x)
    by_hand = jnp.mean(jax.nn.logsumexp(u0, -1) - u0[jnp.arange(20), labels])
    np.testing.assert_allclose(sol.train_loss[0], by_hand, rtol=1e-12)
    # Training lowers a loss that starts near log(10) (not the identically-zero loss of a
    # one-column softmax).
    assert 1.5 < float(sol.train_loss[0]) < 3.5
    assert float(sol.train_loss[-1]) < 0.9 * float(sol.train_loss[0])
    # The frozen-kernel surrogate takes the same data (a diffrax solve for cross-entropy).
    frozen = nk.KernelFlowProblem.from_model(model, data, "cross_entropy", tspan=(0.0, 5.0))
    lazy = nk.solve(frozen, saveat=6)
    np.testing.assert_allclose(lazy.train_loss[0], sol.train_loss[0], rtol=1e-12)
    assert float(lazy.train_loss[-1]) < float(lazy.train_loss[0])
    # Called directly, the loss takes integer labels as well as one-hot rows.
    np.testing.assert_allclose(
        nk.losses.cross_entropy(u0, labels), nk.losses.cross_entropy(u0, data.y_train)
    )


def test_cross_entropy_refuses_targets_that_would_give_a_zero_or_meaningless_loss():
    x, labels, xt, labels_t = _labelled()
    one = eqx.nn.MLP(3, 1, 8, 1, key=jax.random.key(1))
    # Following the old advice ("out_size=1") used to give a loss identically 0.
    with pytest.raises(ValueError, match="integer class labels, read as 10 classes.*out_size=10"):
        nk.GradientFlowProblem(one, nk.Dataset(x, labels, xt, labels_t), loss="cross_entropy")
    # One real column: a one-output softmax is identically 1.
    real = nk.Dataset(x, jnp.sin(x[:, 0]))
    with pytest.raises(ValueError, match="at least two classes.*identically 1"):
        nk.GradientFlowProblem(one, real, loss="cross_entropy")
    with pytest.raises(ValueError, match="at least two classes"):
        nk.KernelFlowProblem(jnp.eye(20), real, loss="cross_entropy")
    # Real-valued rows of several columns are not class probabilities.
    three = eqx.nn.MLP(3, 3, 8, 1, key=jax.random.key(1))
    wide = nk.Dataset(x, jnp.sin(x))
    with pytest.raises(ValueError, match="needs class probabilities.*For regression use mse"):
        nk.GradientFlowProblem(three, wide, loss="cross_entropy")
    # mse takes them all.
    nk.GradientFlowProblem(three, wide, loss="mse")
    # Labels outside the declared classes, and labels mixed with real targets.
    with pytest.raises(ValueError, match=r"labels in \[0, 9\] but there are 5 classes"):
        nk.Dataset(x, labels, num_classes=5)
    with pytest.raises(ValueError, match="integer class labels .* for both"):
        nk.Dataset(x, labels, xt, jnp.sin(xt[:, 0]))


# ---------------------------------------------------------------- 4. silently accepted


def test_non_psd_kernel_is_refused_with_its_eigenvalue(setup):
    s = setup
    bad = s["kernel"][:, :, 0, 0] - 2.0 * jnp.eye(8)  # λ_min < 0: the loss would grow
    assert float(jnp.linalg.eigvalsh(bad)[0]) < 0
    with pytest.raises(ValueError, match="not positive semi-definite: it has eigenvalue -"):
        nk.KernelFlowProblem(bad, s["data"])
    with pytest.raises(ValueError, match="`kernel_train` is not symmetric"):
        nk.KernelFlowProblem(s["kernel"][:, :, 0, 0] + jnp.triu(jnp.ones((8, 8)), 1), s["data"])
    # Round-off below sqrt(eps)·λ_max is tolerated; psd_tol=None skips the check.
    tiny = s["kernel"][:, :, 0, 0] - 1e-12 * jnp.eye(8) * float(jnp.max(s["kernel"]))
    nk.KernelFlowProblem(tiny, s["data"])
    unchecked = nk.KernelFlowProblem(bad, s["data"], tspan=(0.0, 50.0), psd_tol=None)
    sol = nk.solve(unchecked, saveat=3)
    # What used to pass silently: the loss explodes while the result says "successful".
    assert float(sol.train_loss[-1]) > 1e3 * float(sol.train_loss[0]) and sol.success


def test_compare_refuses_solutions_on_different_data(setup):
    s = setup
    sol = nk.solve(_problem("kernel_exact", s, 1.0)[0], saveat=5)
    other = nk.Dataset(s["data"].x_train, -s["data"].y_train, s["data"].x_test, s["data"].y_test)
    wrong = nk.solve(nk.KernelFlowProblem(s["kernel"], other, tspan=(0.0, T_END)), saveat=5)
    with pytest.raises(ValueError, match="different data .*`y_train` differ in values"):
        nk.compare(sol, wrong)
    no_test = nk.Dataset(s["data"].x_train, s["data"].y_train)
    wrong = nk.solve(nk.KernelFlowProblem(s["kernel"], no_test, tspan=(0.0, T_END)), saveat=5)
    with pytest.raises(ValueError, match="`y_test` differ in shapes"):
        nk.compare(sol, wrong)
    short = nk.solve(_problem("kernel_exact", s, 1.0)[0], saveat=jnp.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="same `tspan` and `saveat`"):
        nk.compare(sol, short)


def test_tolerances_beside_a_controller_are_refused(setup):
    # (Already refused on the base of this work; kept so that it stays so.)
    problem, _ = _problem("gradient_flow", setup, 1.0)
    with pytest.raises(ValueError, match="`rtol` would be ignored"):
        nk.solve(problem, rtol=1e-3, stepsize_controller=diffrax.PIDController(1e-4, 1e-6))


def test_inputs_of_the_wrong_shape_are_refused_not_broadcast(setup):
    s = setup
    x = s["data"].x_train[:, :, None]  # (n, 3, 1) for a model that takes (3,)
    with pytest.raises(ValueError, match=r"shape \(3, 1\) but the model .* takes inputs of shape"):
        nk.ntk(s["model"], x)
    with pytest.raises(ValueError, match=r"shape \(3, 1\)"):
        nk.GradientFlowProblem(s["model"], nk.Dataset(x, s["data"].y_train))
    conv = eqx.nn.Conv2d(2, 3, 3, key=jax.random.key(0))
    with pytest.raises(ValueError, match="2 input channels"):
        nk.ntk(conv, jnp.ones((4, 3, 8, 8)))
    assert nk.ntk(conv, jnp.ones((2, 2, 5, 5))).shape[:2] == (2, 2)


def test_certify_refuses_a_negative_learning_rate(setup):
    nodes, kt, ks = setup["grid"]
    with pytest.raises(ValueError, match="`learning_rate` must be positive"):
        nk.certify(nk.KernelGrid(nodes, kt, ks), -1.0)


# ---------------------------------------------------------------- 7. sol(t) accuracy


def test_sol_t_accuracy_is_what_the_docstring_states():
    # The README's quick-start frozen kernel; its closed form is exact (1e-15), so the error
    # of sol(t) between saves is the interpolant's alone.
    data = nk.datasets.sine(n_train=64, n_test=64, dim=4, key=jax.random.key(0))
    model = eqx.nn.MLP(4, 1, 128, 2, activation=jax.nn.relu, key=jax.random.key(1))
    frozen = nk.KernelFlowProblem.from_model(model, data, tspan=(0.0, 20.0))
    fine = nk.solve(frozen, saveat=jnp.linspace(0.0, 20.0, 801))
    motion = float(jnp.max(jnp.abs(fine.train - fine.train[0])))
    c_theta = frozen.learning_rate / 64 * frozen.kernel_train
    rate = float(jnp.linalg.eigvalsh(c_theta)[-1])
    np.testing.assert_allclose(rate, 6.7, rtol=0.01)  # the fastest rate quoted
    # u'''' = (cΘ)^4 (u - Y) exactly on a frozen kernel.
    u4 = jax.vmap(lambda u: jnp.linalg.matrix_power(c_theta, 4) @ (u - data.y_train))(fine.train)
    u4_max = float(jnp.max(jnp.abs(u4)))
    for saves, quoted in ((21, 0.030), (41, 0.0056), (81, 0.00069)):
        h = 20.0 / (saves - 1)
        err = float(jnp.max(jnp.abs(nk.solve(frozen, saveat=saves)(fine.t).train - fine.train)))
        assert err <= h**4 / 384 * u4_max  # the Hermite bound holds
        np.testing.assert_allclose(err / motion, quoted, rtol=0.02)  # the quoted numbers
    doc = " ".join((nk.Solution.__call__.__doc__ or "").split())
    assert "not the solver's" in doc and "3.0%, 0.56% and 0.069%" in doc
