"""The problem and options objects (``equipart.problem``): immutable, what the driver, the
handshake, the rounding and the packaging receive, and the handshake derived from them."""

from __future__ import annotations

import ast
import dataclasses
import pathlib
import warnings

import numpy as np
import pytest

import equipart
from equipart import distributed
from equipart.marginals import Counts, Uniform
from equipart.problem import (
    LAYOUT,
    OutputOptions,
    Problem,
    SolveOptions,
    agreed,
    handshake_fields,
    handshake_values,
)
from equipart.solver import ConvergenceWarning, run_sinkhorn
from equipart.sources import open_source
from equipart.validation import solve_options


def _problem(x: np.ndarray, lam: float = 10.0, **kwargs) -> Problem:
    backend, source = open_source(x, "numpy")
    return Problem(source, backend, lam, **kwargs)


def _scores(n_rows: int = 60, n_labels: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n_rows, n_labels))


def test_objects_are_immutable_and_keep_a_read_only_copy_of_the_warm_start():
    start = np.zeros((1, 4))
    problem = _problem(_scores(), marginals=Uniform(), warm_start=start)
    for obj, name, value in (
        (SolveOptions(), "tol", 0.5),
        (OutputOptions(), "rounding", "argmax"),
        (problem, "lam", 3.0),
    ):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, name, value)
    start[0, 0] = 7.0  # the caller's array is not the problem's
    assert problem.warm_start[0, 0] == 0.0
    with pytest.raises(ValueError, match="read-only"):
        problem.warm_start[0, 0] = 1.0
    g0 = problem.g0  # a fresh array the driver may change
    g0[0, 0] = 5.0
    assert problem.warm_start[0, 0] == 0.0
    again = dataclasses.replace(problem, lam=20.0)
    assert not again.warm_start.flags.writeable and problem.lam == 10.0


def test_problem_binds_its_marginals_and_reports_its_shape():
    x = _scores(12, 3)
    problem = _problem(x, marginals=Counts([4, 4, 4]))
    assert problem.constraint is None and problem.shape == (12, 3)
    bound = problem.bound()
    assert bound.constraint is not None and problem.constraint is None
    np.testing.assert_array_equal(bound.constraint.count_bounds()[0], [4, 4, 4])
    stacked = _problem(np.stack([x, x]), marginals=Uniform())
    assert stacked.shape == (2, 12, 3) and stacked.n_heads == 2
    np.testing.assert_array_equal(stacked.g0, np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"^marginals: Counts sizes sum to 11"):
        _problem(x, marginals=Counts([4, 4, 3])).bound()


def test_solve_options_are_checked_where_they_are_built():
    options = solve_options(1e-4, 50, 2, "anderson", None, anneal=True)
    assert options == SolveOptions(1e-4, 50, 2, "anderson", None, True)
    with pytest.raises(TypeError, match=r"^callback: expected a callable"):
        solve_options(1e-3, 10, 1, "auto", "print")
    with pytest.raises(ValueError, match=r"^max_iter: expected an integer >= 1"):
        solve_options(1e-3, 0, 1, "auto", None)
    with pytest.raises(ValueError, match=r"^acceleration: expected one of"):
        solve_options(1e-3, 10, 1, "fast", None)


def test_handshake_fields_are_derived_from_the_agreed_dataclass_fields():
    names, numeric = handshake_fields()
    assert (distributed.FIELDS, distributed.NUMERIC) == (names, numeric)
    assert names[: len(LAYOUT)] == LAYOUT and len(set(names)) == len(names)
    for kind in (Problem, SolveOptions, OutputOptions):
        for item in dataclasses.fields(kind):
            if "agreed" in item.metadata:
                assert (item.metadata["argument"] or item.name) in names
            else:  # settings every rank may choose for itself, or derived from agreed ones
                assert item.name not in names
    # the public arguments' names: input for Problem.kind, n_iter for the fixed steps
    assert {"input", "n_iter", "lam", "tol", "rounding", "warm_start"} <= set(names)
    assert {"lam", "tol", "max_iter", "check_every", "n_iter", "n_labels"} <= numeric
    assert "marginals" not in numeric and "callback" not in numeric


def test_handshake_values_read_the_objects():
    problem = _problem(_scores(), marginals=Uniform())
    options = SolveOptions(tol=1e-4, callback=lambda i, e: None)
    values = handshake_values("assign_labels", problem, options, OutputOptions("balanced"))
    assert set(values) == set(distributed.FIELDS)
    assert values["entry"] == "assign_labels" and values["input"] == "logits"
    assert (values["n_heads"], values["n_labels"], values["dtype"]) == (1, 4, "float64")
    assert values["tol"] == 1e-4 and values["callback"] is True  # whether one is given
    assert values["n_iter"] is None and values["warm_start"] is None
    assert values["rounding"] == "balanced" and values["marginals"] == Uniform()
    codes = handshake_values("sinkhorn_codes", problem, SolveOptions(fixed_steps=3))
    assert codes["n_iter"] == 3 and codes["callback"] is False and "rounding" not in codes

    @dataclasses.dataclass(frozen=True)
    class Extra:  # a new agreed setting joins the handshake by its metadata alone
        seed: int = dataclasses.field(default=7, metadata=agreed("number", "random_seed"))
        local: str = "not agreed"

    extra = handshake_values("assign_labels", problem, Extra())
    assert extra["random_seed"] == 7 and "local" not in extra


def test_fixed_step_mode_is_the_published_loop():
    """``SolveOptions(fixed_steps=n)``: the first column step on the raw kernel, then
    n - 1 plain Sinkhorn steps, no convergence test (a callback is never called), no
    warning; the same loop as the solve's, step for step."""
    x = _scores(40, 5, seed=3)
    lam = 4.0
    called = []
    problem = _problem(x, lam, marginals=Uniform()).bound()
    for steps in (1, 2, 5):
        options = SolveOptions(acceleration="none", fixed_steps=steps, callback=called.append)
        with warnings.catch_warnings():
            warnings.simplefilter("error", ConvergenceWarning)
            outcome = run_sinkhorn(problem, options)
        # the loop by hand: log-domain columns to 1/K, rows to 1/B
        log_p = lam * x
        g = -np.logaddexp.reduce(log_p, axis=0)
        for _ in range(steps - 1):
            rows = log_p + g
            rows -= np.logaddexp.reduce(rows, axis=1, keepdims=True)
            g = g + np.log(x.shape[0] / x.shape[1]) - np.logaddexp.reduce(rows, axis=0)
        np.testing.assert_allclose(outcome.g[0], g - g.max(), atol=1e-10)
        assert outcome.n_iter == steps and not outcome.converged and outcome.history == ()
    assert called == []


CORE_MODULES = ("api", "distributed", "problem", "result", "rounding", "solver", "validation")
PUBLIC = {"assign_labels"}  # public signatures, kept as they are


def test_no_internal_function_of_the_core_takes_more_than_eight_parameters():
    root = pathlib.Path(equipart.__file__).parent
    too_long = []
    for module in CORE_MODULES:
        tree = ast.parse((root / f"{module}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name not in PUBLIC:
                arguments = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
                names = [a.arg for a in arguments if a.arg not in ("self", "cls")]
                if len(names) > 8:
                    too_long.append(f"{module}.{node.name}: {len(names)}")
    assert too_long == []


def test_warnings_point_at_the_callers_line():
    """The driver and the rounding are reached through the objects: their warnings still
    name the line that called ``assign_labels``."""
    x = np.random.default_rng(0).normal(size=(300, 6)) * 5
    with pytest.warns(ConvergenceWarning) as caught:
        equipart.assign_labels(x, 25.0, max_iter=1)
    assert {record.filename for record in caught} == {__file__}
    with pytest.warns(equipart.RoundingWarning) as caught:
        equipart.assign_labels(np.zeros((40, 4)), rounding="argmax")
    assert {record.filename for record in caught} == {__file__}
