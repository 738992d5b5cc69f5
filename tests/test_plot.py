"""Plot recipes: what is drawn is the solution's data, axes come back to restyle, bad input.

Evidence: every line drawn carries exactly the numbers of the solution it shows (losses,
outputs, residuals), and the `"error"` recipe's maximum is `trajectory_errors`' number.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import small_data

import ntkode as nk

mpl = pytest.importorskip("matplotlib")
mpl.use("Agg")
plt = pytest.importorskip("matplotlib.pyplot")

TS = jnp.linspace(0.0, 4.0, 17)


def _solutions():
    """Two closed-form kernel flows on the same data: a linear kernel and an RBF kernel."""
    data = small_data(n=8, m=5, d=3)

    def rbf(a, b):
        return jnp.exp(-0.5 * jnp.sum((a[:, None] - b[None]) ** 2, -1))

    def linear(a, b):
        return a @ b.T + 1.0

    sols = {}
    for name, k in (("linear", linear), ("rbf", rbf)):
        p = nk.KernelFlowProblem(
            k(data.x_train, data.x_train),
            data,
            tspan=(0.0, 4.0),
            kernel_test=k(data.x_test, data.x_train),
        )
        sols[name] = nk.solve(p, saveat=TS)
    return sols


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_loss_recipe_draws_the_solution_losses():
    sol = _solutions()["rbf"]
    fig, ax = nk.plot(sol)
    assert ax.figure is fig and ax.get_yscale() == "log"
    train, test = ax.get_lines()
    np.testing.assert_array_equal(train.get_xdata(), np.asarray(sol.t))
    np.testing.assert_array_equal(train.get_ydata(), np.asarray(sol.train_loss))
    np.testing.assert_array_equal(test.get_ydata(), np.asarray(sol.test_loss))
    assert test.get_linestyle() == "--" and test.get_color() == train.get_color()


def test_outputs_and_residual_recipes():
    sol = _solutions()["linear"]
    _, ax = nk.plot(sol, "outputs", examples=[0, 4, 7], color="k", lw=3)
    lines = ax.get_lines()
    assert len(lines) == 3
    for line, j in zip(lines, (0, 4, 7), strict=True):
        np.testing.assert_array_equal(line.get_ydata(), np.asarray(sol.train[:, j, 0]))
        assert line.get_color() == "k" and line.get_linewidth() == 3  # style passed through
    _, ax = nk.plot(sol, "residual", split="test")
    (line,) = ax.get_lines()
    r = np.linalg.norm(np.asarray(sol.test - sol.y_test), axis=(1, 2))
    np.testing.assert_allclose(line.get_ydata(), r / r[0], rtol=1e-12)


def test_error_recipe_is_trajectory_errors_over_time():
    sols = _solutions()
    _, ax = nk.plot(sols["rbf"], "error", reference=sols["linear"])
    (line,) = ax.get_lines()
    expected = nk.trajectory_errors(sols["rbf"], sols["linear"])["max_rel_train_error"]
    np.testing.assert_allclose(np.max(line.get_ydata()), expected, rtol=1e-12)
    assert line.get_ydata()[0] == 0.0  # same start


def test_overlays_given_axes_and_ensembles():
    sols = _solutions()
    fig, mine = plt.subplots()
    out_fig, ax = nk.plot(sols, ax=mine)
    assert out_fig is fig and ax is mine
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["linear", "rbf"]
    _, ax = nk.plot(list(sols.values()), "outputs", examples=1)
    assert len(ax.get_lines()) == 2
    base = nk.KernelFlowProblem(jnp.eye(8), small_data(n=8, m=5, d=3), tspan=(0.0, 4.0))
    ensemble = nk.EnsembleProblem(
        base, lambda p, i: nk.remake(p, learning_rate=0.5 + i), trajectories=3
    )
    sol = nk.solve(ensemble, saveat=TS)
    _, ax = nk.plot(sol, "residual")
    assert len(ax.get_lines()) == 3  # one line per trajectory


def test_comparison_plot_returns_figure_and_axes():
    sols = _solutions()
    cmp = nk.compare(sols["linear"], rbf=sols["rbf"])
    fig, axes = cmp.plot(("loss", "outputs", "error"), examples=2)
    assert len(axes) == 3 and all(a.figure is fig for a in axes)
    loss_lines = axes[0].get_lines()
    assert loss_lines[0].get_linewidth() > loss_lines[2].get_linewidth()  # reference thick
    (err,) = axes[2].get_lines()  # the reference has no error curve
    np.testing.assert_allclose(np.max(err.get_ydata()), cmp.rows["rbf"]["max_rel_train_error"])
    fig2, axes2 = nk.plot(cmp, "residual")
    assert len(axes2) == 1 and len(axes2[0].get_lines()) == 2


def test_bad_input_says_what_to_do():
    sols = _solutions()
    sol = sols["rbf"]
    with pytest.raises(ValueError, match="Unknown `kind`"):
        nk.plot(sol, "losses")
    with pytest.raises(ValueError, match="`split` must be"):
        nk.plot(sol, "outputs", split="validation")
    with pytest.raises(ValueError, match="pass `reference=`"):
        nk.plot(sol, "error")
    with pytest.raises(ValueError, match=r"`examples` \[9\] are out of range"):
        nk.plot(sol, "outputs", examples=[9])
    with pytest.raises(ValueError, match="`output` 1 is out of range"):
        nk.plot(sol, "outputs", output=1)
    with pytest.raises(TypeError, match="nk.plot draws an ntkode.Solution"):
        nk.plot(jax.numpy.ones(3))
    cmp = nk.compare(sols["linear"], rbf=sol)
    _, one = plt.subplots()
    with pytest.raises(ValueError, match="one per kind"):
        cmp.plot(("loss", "outputs"), axes=[one])
    with pytest.raises(ValueError, match="`kinds` must be"):
        cmp.plot(("loss", "spectrum"))
