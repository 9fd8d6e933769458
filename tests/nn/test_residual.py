"""ResidualBlock against a plain torch.nn.Module of the same layout."""

import dataclasses

import pytest
import torch
from torch import nn
from torch.func import grad, vmap

import funcmodels as fm
from tests.helpers import (
    TorchResidualBlock,
    assert_per_sample_grads_match,
    randomised,
    torch_twin,
)

# in, out, stride, groups, dilation, use_se
CASES = [
    (4, 4, 1, 1, 1, False),
    (4, 4, 1, 1, 1, True),
    (4, 8, 2, 1, 1, True),
    (4, 8, 1, 2, 2, True),
    (8, 8, 2, 4, 1, False),
]
NORMS = {
    "batch": (dict(norm="batch"), nn.BatchNorm2d),
    "group": (dict(norm="group", norm_groups=2), lambda c: nn.GroupNorm(2, c)),
    "none": (dict(norm="none"), lambda c: nn.Identity()),
}


RELU = (fm.nn.ReLU(), nn.ReLU)


def make(case, norm="batch", act=RELU, conv_bias=False):
    cin, cout, stride, groups, dilation, use_se = case
    fields, torch_norm = NORMS[norm]
    spec = fm.nn.ResidualBlock(
        cin,
        cout,
        stride,
        groups,
        dilation,
        use_se,
        activation=act[0],
        conv_bias=conv_bias,
        **fields,
    )
    module = TorchResidualBlock(
        cin,
        cout,
        stride,
        groups,
        dilation,
        use_se,
        norm=torch_norm,
        activation=act[1],
        conv_bias=conv_bias,
    )
    params, state = randomised(spec)
    torch_twin(module, params, state)
    return spec, module, params, state


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("norm", list(NORMS))
@pytest.mark.parametrize("conv_bias", [False, True])
def test_matches_torch_module_in_eval_and_train(case, norm, conv_bias):
    spec, module, params, state = make(case, norm, conv_bias=conv_bias)
    assert sorted(fm.to_state_dict(params, state)) == sorted(module.state_dict())
    x = fm.random.normal(fm.key(1), (3, case[0], 6, 6))
    x_before = x.clone()
    module.eval()
    # Same kernels in the same order: equal up to summation-order effects of the backend.
    torch.testing.assert_close(fm.apply(params, x, state=state), module(x), atol=1e-6, rtol=1e-5)
    module.train()
    out = fm.run(params, x, state=state, train=True)
    torch.testing.assert_close(out.out, module(x), atol=1e-6, rtol=1e-5)
    new = fm.to_state_dict(params, out.state)
    for name, buf in module.state_dict().items():
        torch.testing.assert_close(new[name], buf, atol=1e-6, rtol=1e-6, msg=name)
    assert torch.equal(x, x_before)


def test_other_activation_and_parameter_paths():
    spec, module, params, state = make(CASES[2], act=(fm.nn.SiLU(), nn.SiLU))
    sd = fm.to_state_dict(params, state)
    for name in (
        "main_branch.0.weight",
        "main_branch.1.running_mean",
        "main_branch.4.num_batches_tracked",
        "se.1.weight",
        "se.3.bias",
        "projection.0.weight",
        "projection.1.running_var",
    ):
        assert name in sd
    x = fm.random.normal(fm.key(1), (2, 4, 5, 5))
    module.eval()
    torch.testing.assert_close(fm.apply(params, x, state=state), module(x), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(
        fm.apply(params, x[1], state=state),
        fm.apply(params, x, state=state)[1],
        atol=1e-6,
        rtol=1e-5,
    )


def test_spec_is_a_hashable_value():
    a = fm.nn.ResidualBlock(4, 8, stride=2, use_se=True)
    b = fm.nn.ResidualBlock(4, 8, stride=2, use_se=True)
    assert a == b and hash(a) == hash(b)
    assert a != dataclasses.replace(a, use_se=False)
    assert [n for n, _ in dataclasses.replace(a, use_se=False).children()] == [
        "main_branch",
        "projection",
        "activation",
    ]
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.stride = 1
    assert [f.name for f in dataclasses.fields(a)][-2:] == ["norm_groups", "conv_bias"]
    assert a != dataclasses.replace(a, conv_bias=True)


def test_conv_bias_adds_exactly_the_three_conv_biases():
    plain = fm.nn.ResidualBlock(4, 8, stride=2, use_se=True)
    biased = dataclasses.replace(plain, conv_bias=True)
    extra = set(fm.init(fm.key(0), biased).flat()) - set(fm.init(fm.key(0), plain).flat())
    assert extra == {"main_branch.0.bias", "main_branch.3.bias", "projection.0.bias"}
    # The default keeps the bias-free layout, so existing checkpoints keep their keys.
    assert fm.nn.ResidualBlock(4, 8) == fm.nn.ResidualBlock(4, 8, conv_bias=False)


def test_per_sample_grads_with_groupnorm_equal_the_loop():
    _, _, params, _ = make(CASES[3], "group")
    x = fm.random.normal(fm.key(1), (3, 4, 5, 5))
    y = fm.random.normal(fm.key(2), (3, 8, 5, 5))
    assert_per_sample_grads_match(params, x, y, atol=1e-5, rtol=1e-4)


def test_per_sample_grads_with_conv_bias_equal_the_loop():
    _, _, params, _ = make(CASES[3], "none", conv_bias=True)
    x = fm.random.normal(fm.key(1), (3, 4, 5, 5))
    y = fm.random.normal(fm.key(2), (3, 8, 5, 5))
    assert_per_sample_grads_match(params, x, y, atol=1e-5, rtol=1e-4)


def test_per_sample_grads_with_batchnorm_in_eval_equal_the_loop():
    _, _, params, state = make(CASES[2])
    x = fm.random.normal(fm.key(1), (3, 4, 6, 6))
    y = fm.random.normal(fm.key(2), (3, 8, 3, 3))
    assert_per_sample_grads_match(params, x, y, state=state, atol=1e-5, rtol=1e-4)


def test_batchnorm_train_under_vmap_raises_the_recommended_error():
    _, _, params, state = make(CASES[2])
    x = fm.random.normal(fm.key(1), (3, 4, 6, 6))

    def loss(p, xi):
        return fm.apply(p, xi, state=state, train=True).sum()

    with pytest.raises(ValueError, match=r"'main_branch.1' \(BatchNorm2d\).*GroupNorm"):
        vmap(grad(loss), in_dims=(None, 0))(params, x)


def test_argument_and_input_errors():
    with pytest.raises(ValueError, match="norm='group' needs norm_groups"):
        fm.nn.ResidualBlock(4, 8, norm="group")
    with pytest.raises(ValueError, match="norm_groups=3 must divide out_channels=8"):
        fm.nn.ResidualBlock(4, 8, norm="group", norm_groups=3)
    with pytest.raises(ValueError, match="norm_groups is only used with norm='group'"):
        fm.nn.ResidualBlock(4, 8, norm_groups=2)
    with pytest.raises(ValueError, match=r"norm must be one of \['batch', 'group', 'none'\]"):
        fm.nn.ResidualBlock(4, 8, norm="layer")
    with pytest.raises(ValueError, match="groups=3 must divide in_channels=4"):
        fm.nn.ResidualBlock(4, 6, groups=3)
    with pytest.raises(TypeError, match="activation must be a layer spec"):
        fm.nn.ResidualBlock(4, 8, activation=nn.ReLU())
    with pytest.raises(ValueError, match="se_ratio must be in"):
        fm.nn.ResidualBlock(4, 8, se_ratio=0)
    with pytest.raises(TypeError, match="ResidualBlock: conv_bias must be a bool, got int 1"):
        fm.nn.ResidualBlock(4, 8, conv_bias=1)
    params, state = fm.init_with_state(fm.key(0), fm.nn.ResidualBlock(4, 8))
    with pytest.raises(ValueError, match=r"'<root>' \(ResidualBlock\).*C=4.*\(2, 3, 5, 5\)"):
        fm.apply(params, torch.ones(2, 3, 5, 5), state=state)
