"""BatchNorm in train mode in one pass (``_batchnorm.py``): outside vmap the kernel that
normalises also moves copies of the running statistics, as torch.nn does (compiled too:
``test_batchnorm_compiled.py``).

References: torch.nn's BatchNorm with the same weights and buffers, stepped alongside.
Tolerances: exact (the same kernel on the same numbers) on the one-pass path, eager and
under ``fm.value_and_grad``/``torch.func.grad``; ``atol=1e-6, rtol=1e-6`` where the
statistics take the two-pass rule (different dtypes) and compiled (inductor's reduction
rounds differently).
"""

from __future__ import annotations

import pytest
import torch
from torch.func import grad

import funcmodels as fm
from tests.helpers import randomised, torch_twin

nn = fm.nn
EXACT = {"atol": 0.0, "rtol": 0.0}
CASES = [
    (nn.BatchNorm1d, torch.nn.BatchNorm1d, (16, 3)),
    (nn.BatchNorm1d, torch.nn.BatchNorm1d, (8, 3, 33)),
    (nn.BatchNorm2d, torch.nn.BatchNorm2d, (8, 3, 17, 9)),
    (nn.BatchNorm3d, torch.nn.BatchNorm3d, (4, 3, 5, 6, 7)),
]


def _inputs(shape, steps, dtype):
    # Large offsets make the two-pass rule round differently from torch's kernel.
    return [fm.random.normal(fm.key(40 + i), shape, dtype=dtype) * 3 + 100 for i in range(steps)]


@pytest.mark.parametrize("ours, theirs, shape", CASES)
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_running_statistics_are_torchs_bitwise(ours, theirs, shape, momentum, dtype):
    spec, module = ours(3, momentum=momentum), theirs(3, momentum=momentum).to(dtype)
    params, state = randomised(spec, dtype=dtype)
    torch_twin(module, params, state)
    module.train()
    for x in _inputs(shape, 4, dtype):
        before = {k: t.clone() for k, t in state.flat().items()}
        out = fm.run(params, x, state=state, train=True)
        torch.testing.assert_close(out.out, module(x), **EXACT)
        for name, buf in module.state_dict().items():
            got = fm.to_state_dict(params, out.state)[name]
            torch.testing.assert_close(got, buf, **EXACT, msg=name)
        for name, t in state.flat().items():
            assert torch.equal(t, before[name]), f"input state {name} was mutated"
        state = out.state


@pytest.mark.parametrize("how", ["fm.value_and_grad", "torch.func.grad"])
def test_one_pass_under_gradients_is_torchs_bitwise(how):
    spec = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    params, state = randomised(spec)
    module = torch_twin(
        torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU()),
        params,
        state,
    )
    x = fm.random.normal(fm.key(1), (6, 2, 9, 9)) + 5

    def loss(p):
        out = fm.run(p, x, state=state, train=True)
        return (out.out**2).mean(), out.state

    if how == "fm.value_and_grad":
        (_, new_state), grads = fm.value_and_grad(loss, has_aux=True)(params)
    else:
        grads, new_state = grad(loss, has_aux=True)(params)
    (module.train()(x) ** 2).mean().backward()
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(new_state[f"1.{name}"], getattr(module[1], name), **EXACT)
    torch.testing.assert_close(grads["1.weight"], module[1].weight.grad, atol=1e-6, rtol=1e-5)


def test_statistics_of_another_dtype_take_the_two_pass_rule():
    # float64 statistics for float32 inputs: converted as before, within a rounding step.
    spec = nn.BatchNorm1d(3)
    params, _ = randomised(spec)
    _, state = randomised(spec, dtype=torch.float64)
    x = _inputs((16, 3), 1, torch.float32)[0]
    out = fm.run(params, x, state=state, train=True)
    var, mean = torch.var_mean(x.double(), dim=0, correction=1)
    for name, batch in (("running_mean", mean), ("running_var", var)):
        assert out.state[name].dtype == torch.float64
        want = 0.1 * batch + 0.9 * state[name]
        torch.testing.assert_close(out.state[name], want, atol=1e-6, rtol=1e-6)


def test_compiled_train_step_matches_eager():
    spec = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4))
    params, state = randomised(spec)
    x = fm.random.normal(fm.key(1), (6, 2, 9, 9)) + 5

    def run(p, s, x):
        out = fm.run(p, x, state=s, train=True)
        return out.out, out.state

    want = run(params, state, x)
    got = fm.jit(run)(params, state, x)
    torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-5)
    for name, t in want[1].flat().items():
        torch.testing.assert_close(got[1][name], t, atol=1e-6, rtol=1e-6, msg=name)
