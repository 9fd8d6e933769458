"""fm.optim's dtype rule and the four defects found side by side with optax.

The rule: state leaves keep the dtype they were made with (the param's, or
``mu_dtype``/``accumulator_dtype``); a step computes in the promotion of the gradient's
dtype and the state's, so float32 params with bfloat16 gradients get float32 updates and
float32 moments; hyperparameters held as tensors (a schedule's float64 value, an injected
hyperparameter) are cast to each leaf's dtype, so they never promote a leaf, 0-dim leaves
included.
"""

from __future__ import annotations

import pytest
import torch
import torch.utils._pytree as pytree

from funcmodels import optim


def tree(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "w": torch.randn(4, 3, generator=g).to(dtype),
        "b": torch.randn(3, generator=g).to(dtype),
        "s": torch.randn((), generator=g).to(dtype),
    }


def dtypes(t):
    return [x.dtype for x in pytree.tree_leaves(t) if isinstance(x, torch.Tensor)]


def test_eps_root_is_added_to_the_bias_corrected_second_moment():
    # after one step m_hat = g and v_hat = g**2, so the update is g / (sqrt(g**2 + eps_root)
    # + eps); adding eps_root before the bias correction made it 1 / (1 - b2) = 1000x larger
    g = tree(torch.float64)["w"]
    opt = optim.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8, eps_root=1e-4)
    u, state = opt.update(g, opt.init(g))
    torch.testing.assert_close(u, g / ((g * g + 1e-4).sqrt() + 1e-8), rtol=1e-12, atol=0)
    # and at step 2, with the bias-corrected moments written out
    g2 = tree(torch.float64, seed=1)["w"]
    u2, _ = opt.update(g2, state)
    m = (0.9 * 0.1 * g + 0.1 * g2) / (1 - 0.9**2)
    v = (0.999 * 0.001 * g * g + 0.001 * g2 * g2) / (1 - 0.999**2)
    torch.testing.assert_close(u2, m / ((v + 1e-4).sqrt() + 1e-8), rtol=1e-12, atol=0)


def test_injected_hyperparameters_do_not_promote_0_dim_float32_leaves():
    # they were held as float64 0-dim tensors, which promote 0-dim float32 moments: step 2
    # crashed in lerp ("expected dtype double for 'end' but got dtype float")
    params = tree()
    for name, kwargs in [
        ("scale_by_adam", {"b1": 0.9}),
        ("scale_by_lion", {"b1": 0.9}),
        ("scale_by_stddev", {"decay": 0.9}),
        ("ema", {"decay": 0.9}),
    ]:
        make = getattr(optim, name)
        opt = optim.inject_hyperparams(make)(**kwargs)
        state = opt.init(params)
        for seed in range(3):
            updates, state = opt.update(tree(seed=seed), state, params)
            assert set(dtypes(updates)) == {torch.float32}, name
        assert set(dtypes(state.inner_state)) <= {torch.float32, torch.int64}, name
    # a user's float64 tensor hyperparameter is cast where it is used
    opt = optim.adam(
        torch.tensor(0.1, dtype=torch.float64), b1=torch.tensor(0.9, dtype=torch.float64)
    )
    updates, state = opt.update(tree(seed=1), opt.init(params), params)
    assert set(dtypes(updates)) == {torch.float32}


def test_a_schedule_value_does_not_promote_0_dim_float32_updates():
    # the schedule's float64 0-dim value made the 0-dim update, and with it the trace, float64
    params = tree()
    opt = optim.chain(
        optim.scale_by_learning_rate(optim.linear_schedule(0.1, 0.01, 3)), optim.trace(0.9)
    )
    state = opt.init(params)
    for seed in range(3):
        updates, state = opt.update(tree(seed=seed), state, params)
        assert set(dtypes(updates)) == {torch.float32}
    assert set(dtypes(state[1])) == {torch.float32}


def test_trust_ratio_floors_both_norms_at_min_norm():
    # optax: ratio = max(|p|, min_norm) / max(|u|, min_norm); it was set to 1 instead
    opt = optim.scale_by_trust_ratio(min_norm=1.0)
    p = {
        "a": torch.full((4,), 0.25, dtype=torch.float64),
        "b": torch.full((4,), 1.5, dtype=torch.float64),
    }
    u = {
        "a": torch.full((4,), 1.0, dtype=torch.float64),
        "b": torch.full((4,), 0.01, dtype=torch.float64),
    }
    out, _ = opt.update(u, opt.init(p), p)
    torch.testing.assert_close(out["a"], u["a"] * (1.0 / 2.0), rtol=1e-15, atol=0)
    torch.testing.assert_close(out["b"], u["b"] * (3.0 / 1.0), rtol=1e-15, atol=0)
    coef = optim.scale_by_trust_ratio(trust_coefficient=0.1, eps=1.0)
    out, _ = coef.update(u, coef.init(p), p)
    torch.testing.assert_close(out["a"], u["a"] * (0.1 * 0.5 / (2.0 + 1.0)), rtol=1e-15, atol=0)


@pytest.mark.parametrize("mu_dtype", [torch.bfloat16, torch.float64])
def test_mu_dtype_sets_the_first_moment_only(mu_dtype):
    params = tree()
    opt = optim.adam(0.1, mu_dtype=mu_dtype)
    state = opt.init(params)
    for seed in range(2):
        updates, state = opt.update(tree(seed=seed), state, params)
    adam = state[0]
    assert set(dtypes(adam.mu)) == {mu_dtype} and set(dtypes(adam.nu)) == {torch.float32}
    # updates in the promotion of the gradients' and the moments' dtypes
    assert set(dtypes(updates)) == {torch.promote_types(torch.float32, mu_dtype)}


def test_accumulator_dtype_sets_the_trace_and_the_multi_steps_sum():
    params = tree()
    sgd = optim.sgd(0.1, momentum=0.9, accumulator_dtype=torch.bfloat16)
    updates, state = sgd.update(tree(seed=1), sgd.init(params), params)
    assert set(dtypes(state[0])) == {torch.bfloat16} and set(dtypes(updates)) == {torch.float32}
    ms = optim.MultiSteps(optim.adam(0.1), 2)  # optax's default: a float32 accumulator
    state = ms.init(tree(torch.float64))
    assert set(dtypes(state.acc_grads)) == {torch.float32}
    updates, state = ms.update(tree(torch.float64, seed=1), state, tree(torch.float64))
    assert set(dtypes(updates)) == {torch.float64} and set(dtypes(state.acc_grads)) == {
        torch.float32
    }


def test_bfloat16_params_with_float32_gradients_keep_bfloat16_state_and_params():
    params = tree(torch.bfloat16)
    opt = optim.adamw(1e-2)
    state = opt.init(params)
    updates, new_state = opt.update(tree(seed=1), state, params)
    assert set(dtypes(updates)) == {torch.float32}
    assert dtypes(new_state) == dtypes(state)
    assert set(dtypes(optim.apply_updates(params, updates))) == {torch.bfloat16}
