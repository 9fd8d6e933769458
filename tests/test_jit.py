"""fm.jit: one graph for a whole step, graph breaks and silent fallbacks as errors,
recompiles reported.

Most tests compile with ``backend="eager"`` (dynamo's tracing without inductor's code
generation): what is tested is the tracing, which is the same for every backend.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.func import vmap

import funcmodels as fm
from funcmodels import _grad

pytestmark = pytest.mark.slow

fnn = fm.nn


def _problem(n: int = 16):
    g = torch.Generator().manual_seed(0)
    spec = fnn.Sequential(fnn.Linear(6, 16), fnn.ReLU(), fnn.Dropout(0.1), fnn.Linear(16, 3))
    params = fm.init(fm.key(0), spec)
    x, y = torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)
    return params, x, y


def _loss(p, x, y, k):
    return F.cross_entropy(fm.apply(p, x, key=k, train=True), y)


def _sgd_step(p, x, y, k):
    loss, g = fm.value_and_grad(_loss)(p, x, y, k)
    return fm.tree.map(lambda a, b: a - 0.1 * b, p, g), loss


class _Count:
    """Counts the graphs dynamo hands to the backend."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return gm.forward


def test_a_whole_step_compiles_to_one_graph_with_the_eager_numbers():
    params, x, y = _problem()
    count = _Count()
    step = fm.jit(_sgd_step, backend=count)
    k = fm.key(1)
    new, loss = step(params, x, y, k)
    want, want_loss = _sgd_step(params, x, y, k)
    assert count.graphs == 1
    torch.testing.assert_close(loss, want_loss, rtol=1e-6, atol=1e-6)
    for a, b in zip(fm.tree.leaves(new), fm.tree.leaves(want), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    step(params, x, y, fm.key(2))
    assert count.graphs == 1, "the key's value must not recompile"


def test_optax_style_step_with_the_inductor_backend():
    params, x, y = _problem()
    opt = fm.optim.sgd(0.1, momentum=0.9)

    def step(p, s, x, y, k):
        loss, g = fm.value_and_grad(_loss)(p, x, y, k)
        updates, s = opt.update(g, s, p)
        return fm.optim.apply_updates(p, updates), s, loss

    s0 = opt.init(params)
    got = fm.jit(step)(params, s0, x, y, fm.key(1))
    want = step(params, s0, x, y, fm.key(1))
    for a, b in zip(fm.tree.leaves(got), fm.tree.leaves(want), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_a_print_is_a_graph_break_naming_its_line():
    params, x, y = _problem()

    def step(p, x, y):
        loss = F.cross_entropy(fm.apply(p, x), y)
        print("loss", loss)  # the break
        return loss

    with pytest.raises(ValueError) as info:
        fm.jit(step, backend="eager")(params, x, y)
    msg = str(info.value)
    assert msg.startswith("fm.jit(step): cannot compile the function as one graph")
    assert "test_jit.py:" in msg and '`print("loss", loss)  # the break`' in msg
    assert isinstance(info.value.__cause__, torch._dynamo.exc.Unsupported)


def test_a_data_dependent_branch_names_its_cause_and_line():
    params, x, y = _problem()

    def step(p, x, y):
        loss = F.cross_entropy(fm.apply(p, x), y)
        if loss.item() > 0.5:  # data-dependent
            loss = loss * 2
        return loss

    with pytest.raises(ValueError, match=r"(?s)\.item\(\) > 0\.5:  # data-dependent") as info:
        fm.jit(step, backend="eager")(params, x, y)
    assert "test_jit.py:" in str(info.value)


def test_a_recompile_warns_once_per_new_shape():
    # dynamo remembers, per function and process, which sizes it saw change: an earlier
    # test's step over other batch sizes would make this batch size dynamic from the start
    torch._dynamo.reset()
    params, x, y = _problem(16)
    count = _Count()
    step = fm.jit(_sgd_step, backend=count)
    k = fm.key(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        step(params, x, y, k)
        step(params, x, y, k)
    x8, y8 = x[:8], y[:8]
    with pytest.warns(UserWarning, match=r"fm.jit\(_sgd_step\): recompiling.*\(8, 6\)") as rec:
        step(params, x8, y8, k)
    assert len(rec) == 1 and "size mismatch" in str(rec[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        step(params, x8, y8, k)  # seen: no compile
        step(params, x[:4], y[:4], k)  # dynamo made the batch size dynamic at the recompile
    assert count.graphs == 2


def test_a_recompile_warns_after_dynamo_is_reset():
    """``torch._dynamo.reset()`` clears dynamo's callbacks, fm.jit's compile counter
    among them; a step jitted before the reset still warns of its recompiles."""
    params, x, y = _problem(16)
    step = fm.jit(_sgd_step, backend=_Count())
    torch._dynamo.reset()
    k = fm.key(1)
    step(params, x, y, k)
    with pytest.warns(UserWarning, match=r"fm.jit\(_sgd_step\): recompiling.*\(8, 6\)"):
        step(params, x[:8], y[:8], k)


def test_vmap_of_a_step_is_traced_not_run_eagerly():
    params, x, y = _problem(8)

    def per_example(p, xi, yi):
        return F.cross_entropy(fm.apply(p, xi[None]), yi[None])

    count = _Count()
    psg = fm.jit(vmap(fm.grad(per_example), in_dims=(None, 0, 0)), backend=count)
    got = psg(params, x, y)
    assert count.graphs == 1
    want = vmap(torch.func.grad(per_example), in_dims=(None, 0, 0))(params, x, y)
    for a, b in zip(fm.tree.leaves(got), fm.tree.leaves(want), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_a_graph_break_inside_vmap_is_an_error_not_an_eager_run():
    # Plain torch.compile (without fullgraph) runs the whole vmap eagerly here, silently.
    def per_example(w, xi):
        print("inside vmap")
        return (w * xi).sum()

    with pytest.raises(ValueError, match=r'`print\("inside vmap"\)`'):
        fm.jit(vmap(per_example, in_dims=(None, 0)), backend="eager")(
            torch.ones(3), torch.ones(4, 3)
        )


def test_no_compile_at_all_is_an_error():
    with torch._dynamo.config.patch(disable=True):
        with pytest.raises(RuntimeError, match="found no compiled frames"):
            fm.jit(lambda w: w * 2, backend="eager")(torch.ones(2))


def test_inside_another_compiled_function_it_is_inlined():
    count = _Count()
    inner = fm.jit(lambda w: w.sin() * 2, backend="eager")
    outer = torch.compile(lambda w: inner(w) + 1, fullgraph=True, backend=count)
    torch.testing.assert_close(outer(torch.ones(3)), torch.ones(3).sin() * 2 + 1)
    assert count.graphs == 1


def test_bad_arguments():
    with pytest.raises(TypeError, match="fm.jit: fn must be callable, got int"):
        fm.jit(3)
    with pytest.raises(ValueError, match="fullgraph must be True"):
        fm.jit(_sgd_step, fullgraph=False)
    with pytest.raises(ValueError, match="disable=True"):
        fm.jit(_sgd_step, disable=True)


def test_each_jit_has_its_own_code_object():
    a, b = _grad._traced(len, "step"), _grad._traced(len, "step")
    assert a.__code__ is not b.__code__ and a.__code__.co_name == "step"
