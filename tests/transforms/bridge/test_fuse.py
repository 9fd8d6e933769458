"""fuse (fx pass on torch modules) and fold_batchnorm (on funcmodels params).

References: the unfused module for ``fuse``, ``fm.apply`` of the unfolded params for
``fold_batchnorm``. Folding changes the rounding (the BatchNorm scale multiplies the
weights instead of the output), so outputs are compared with ``atol=1e-5, rtol=1e-4``
in float32; the folded weights of both forms come from the same torch formula and must
agree bit for bit.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import fx, nn

import funcmodels as fm
import transforms
from tests.helpers import MODELS, example_input, randomised

TOL = dict(atol=1e-5, rtol=1e-4)
BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
FM_BN_TYPES = (fm.nn.BatchNorm1d, fm.nn.BatchNorm2d)


def n_batchnorms(module: nn.Module) -> int:
    return sum(isinstance(m, BN_TYPES) for m in module.modules())


def spec_batchnorms(spec: fm.Spec) -> list[str]:
    return [path for path, s in spec.walk() if isinstance(s, FM_BN_TYPES)]


def in_place_relus(gm: fx.GraphModule) -> int:
    return sum(n.kwargs.get("inplace", False) for n in gm.graph.nodes if n.op == "call_function")


def conv_bn_relu(conv: type, bn: type, *shape: int) -> nn.Module:
    return nn.Sequential(conv(3, 5, 3, padding=1), bn(5), nn.ReLU(), conv(5, 4, 1), bn(4))


@pytest.mark.parametrize(
    ("model", "shape"),
    [
        (conv_bn_relu(nn.Conv1d, nn.BatchNorm1d), (4, 3, 9)),
        (conv_bn_relu(nn.Conv2d, nn.BatchNorm2d), (4, 3, 7, 6)),
        (conv_bn_relu(nn.Conv3d, nn.BatchNorm3d), (2, 3, 4, 5, 3)),
        (nn.Sequential(nn.Linear(6, 7), nn.BatchNorm1d(7), nn.ReLU(), nn.Linear(7, 3)), (5, 6)),
    ],
)
def test_fuse_folds_every_pair_and_matches(model, shape):
    model = randomised(model).eval()
    x = example_input(shape)
    fused = transforms.fuse(model)
    assert isinstance(fused, fx.GraphModule)
    assert n_batchnorms(fused) == 0
    assert in_place_relus(fused) == 1
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), **TOL)


def test_fuse_leaves_the_module_alone_and_shares_nothing():
    model = randomised(conv_bn_relu(nn.Conv2d, nn.BatchNorm2d)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fused = transforms.fuse(model)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    ours = {t.data_ptr() for t in model.state_dict().values()}
    assert not ours & {t.data_ptr() for t in fused.state_dict().values()}


def test_fuse_on_to_module_output_folds_inside_residual_blocks():
    spec, shape = MODELS["resnet"]
    params, state = randomised(spec)
    module = transforms.to_module(params, state)
    x = example_input(shape)
    fused = transforms.fuse(module)
    assert n_batchnorms(module) == 3 and n_batchnorms(fused) == 0
    with torch.no_grad():
        torch.testing.assert_close(fused(x), fm.apply(params, x, state=state), **TOL)
        torch.testing.assert_close(torch.export.export(fused, (x,)).module()(x), fused(x))
        torch.testing.assert_close(torch.fx.symbolic_trace(fused)(x), fused(x))


class TwoUsers(nn.Module):
    """The conv output feeds the BatchNorm and a skip connection."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        y = self.conv(x)
        return torch.relu(self.bn(y)) + y


class SharedConv(nn.Module):
    """One conv called twice, only the first call followed by BatchNorm."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        return self.conv(self.bn(self.conv(x)))


@pytest.mark.parametrize(
    "model",
    [
        TwoUsers(),
        SharedConv(),
        nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3, track_running_stats=False)),
        nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU(), nn.BatchNorm2d(3)),
    ],
    ids=["two-users", "shared-conv", "no-running-stats", "bn-after-relu"],
)
def test_pairs_that_cannot_fold_are_left_alone(model):
    model = randomised(model).eval()
    x = example_input((3, 3, 5, 5))
    fused = transforms.fuse(model)
    assert n_batchnorms(fused) == 1
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), **TOL)


def test_in_place_relu_only_when_nothing_else_reads_the_conv_output():
    model = randomised(TwoUsers()).eval()
    fused = transforms.fuse(model)
    assert in_place_relus(fused) == 0


def test_fuse_in_train_mode_is_an_error():
    model = conv_bn_relu(nn.Conv2d, nn.BatchNorm2d)
    with pytest.raises(ValueError, match=r"train mode: \['<root>', '0', .*module\.eval\(\)"):
        transforms.fuse(model.train())
    model.eval()
    model[1].train()
    with pytest.raises(ValueError, match=r"train mode: \['1'\]"):
        transforms.fuse(model)


def test_folded_linear_refuses_3d_input():
    # BatchNorm1d(5) on a (N, 5, 5) Linear output normalises dim 1, not the features:
    # the unfused model runs, the fused one must refuse rather than differ.
    model = randomised(nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5))).eval()
    fused = transforms.fuse(model)
    x = example_input((3, 5, 4))
    with torch.no_grad():
        model(x)
        with pytest.raises(AssertionError, match="only valid for inputs"):
            fused(x)


def test_fuse_without_batchnorm_or_relu_changes_nothing():
    # GroupNorm and LayerNorm have per-sample statistics: nothing to fold.
    spec, shape = MODELS["mlp"]
    params, state = randomised(spec)
    module = transforms.to_module(params, state)
    fused = transforms.fuse(module)
    x = example_input(shape)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), module(x), atol=0.0, rtol=0.0)


def folded_into(old: fm.Spec, new: fm.Spec) -> set[str]:
    """Paths of the layers whose next sibling went from BatchNorm to Identity (or, after a
    Linear, to the FoldedBatchNorm1d that keeps the rank check)."""
    before, after = dict(old.walk()), dict(new.walk())
    out = set()
    for prefix, s in after.items():
        if isinstance(s, fm.nn.Sequential):
            names = [f"{prefix}{n}." for n, _ in s.children()]
            for a, b in zip(names, names[1:], strict=False):
                kept = (fm.nn.Identity, transforms.FoldedBatchNorm1d)
                if isinstance(after[b], kept) and type(before[b]) is not type(after[b]):
                    out.add(a)
    return out


@pytest.mark.parametrize("name", ["cnn", "conv1d", "nested", "resnet", "block", "mlp"])
def test_fold_batchnorm_matches_apply(name):
    spec, shape = MODELS[name]
    params, state = randomised(spec)
    before = {k: v.clone() for k, v in fm.to_state_dict(params, state).items()}
    x = example_input(shape)
    folded, folded_state = transforms.fold_batchnorm(params, state)
    torch.testing.assert_close(
        fm.apply(folded, x, state=folded_state), fm.apply(params, x, state=state), **TOL
    )
    for k, v in fm.to_state_dict(params, state).items():
        assert torch.equal(v, before[k]), k
    # Every BatchNorm of these models follows a conv or linear layer: none is left.
    assert spec_batchnorms(folded.spec) == [] and folded_state.flat() == {}
    # Every layer keeps its path, and only the layers that took in a BatchNorm changed.
    assert [p for p, _ in spec.walk()] == [p for p, _ in folded.spec.walk()]
    changed = folded_into(spec, folded.spec)
    assert changed or name == "mlp"
    for k, v in folded.flat().items():
        if k[: k.rfind(".") + 1] not in changed:
            assert torch.equal(v, params.flat()[k]), k


def test_fold_batchnorm_removes_every_foldable_batchnorm():
    spec = MODELS["nested"][0]
    params, state = randomised(spec)
    folded, folded_state = transforms.fold_batchnorm(params, state)
    assert folded.spec == fm.nn.Sequential(
        {
            "stem": fm.nn.Sequential(fm.nn.Conv2d(1, 4, 3), fm.nn.Identity()),
            "head": fm.nn.Sequential(
                fm.nn.Flatten(),
                fm.nn.Linear(64, 6),
                transforms.FoldedBatchNorm1d(),
                fm.nn.ReLU(),
                fm.nn.Linear(6, 2),
            ),
        }
    )
    assert folded_state.flat() == {}
    # The folded spec converts and round-trips like any other.
    module = transforms.to_module(folded, folded_state)
    assert transforms.from_module(module)[0].spec == folded.spec


def test_fold_batchnorm_keeps_what_cannot_fold():
    spec = fm.nn.Sequential(
        fm.nn.Conv2d(3, 4, 3),
        fm.nn.ReLU(),
        fm.nn.BatchNorm2d(4),
        fm.nn.Conv2d(4, 4, 1),
        fm.nn.BatchNorm2d(4, track_running_stats=False),
        fm.nn.ResidualBlock(4, 4, norm="group", norm_groups=2),
    )
    params, state = randomised(spec)
    folded, folded_state = transforms.fold_batchnorm(params, state)
    # BatchNorm after an activation, BatchNorm with batch statistics, and GroupNorm
    # (per-sample statistics) have no fixed affine map to fold.
    assert folded.spec == spec
    assert folded_state.flat().keys() == state.flat().keys()
    x = example_input((6, 3, 6, 6))
    torch.testing.assert_close(
        fm.apply(folded, x, state=folded_state), fm.apply(params, x, state=state), atol=0, rtol=0
    )


# in, out, stride, groups, use_se: without and with projection, SE, stride 2, groups.
BLOCKS = [
    (4, 4, 1, 1, False),
    (4, 4, 1, 2, True),
    (4, 8, 2, 1, True),
    (4, 8, 1, 2, False),
    (8, 8, 2, 4, True),
]


def residual_model(block: tuple[int, int, int, int, bool]) -> fm.nn.Sequential:
    """The block, then one whose convs already have a bias next to their BatchNorm."""
    cin, cout, stride, groups, use_se = block
    return fm.nn.Sequential(
        fm.nn.ResidualBlock(cin, cout, stride, groups, use_se=use_se, se_ratio=0.5),
        fm.nn.ResidualBlock(cout, 2 * cout, groups=groups, use_se=True, conv_bias=True),
    )


def block_convs(spec: fm.Spec) -> list[str]:
    """Paths of the convs of every ResidualBlock with BatchNorm: those that take one in."""
    out = []
    for path, s in spec.walk():
        if isinstance(s, fm.nn.ResidualBlock) and s.norm == "batch":
            out += [f"{path}main_branch.0.", f"{path}main_branch.3."]
            if "projection" in dict(s.children()):
                out.append(f"{path}projection.0.")
    return out


@pytest.mark.parametrize("block", BLOCKS, ids=str)
def test_fold_batchnorm_residual_blocks(block):
    spec = residual_model(block)
    params, state = randomised(spec)
    before = {k: v.clone() for k, v in fm.to_state_dict(params, state).items()}
    x = example_input((6, block[0], 6, 6))
    folded, folded_state = transforms.fold_batchnorm(params, state)

    assert folded.spec == fm.nn.Sequential(
        *[dataclasses.replace(b, norm="none", conv_bias=True) for _, b in spec.children()]
    )
    assert spec_batchnorms(folded.spec) == [] and folded_state.flat() == {}
    assert [p for p, _ in spec.walk()] == [p for p, _ in folded.spec.walk()]
    torch.testing.assert_close(
        fm.apply(folded, x, state=folded_state), fm.apply(params, x, state=state), **TOL
    )
    for k, v in fm.to_state_dict(params, state).items():
        assert torch.equal(v, before[k]), k
    # The SE branches and every other tensor are untouched; only the convs changed.
    convs = block_convs(spec)
    assert len(convs) == 5 + (block[0] != block[1] or block[2] != 1)
    for k, v in folded.flat().items():
        if k[: k.rfind(".") + 1] not in convs:
            assert torch.equal(v, params.flat()[k]), k

    # fuse on the torch module folds the same pairs with the same formula: bit for bit
    # the same tensors under the same names.
    fused = transforms.fuse(transforms.to_module(params, state)).state_dict()
    assert fused.keys() == folded.flat().keys()
    for k, v in folded.flat().items():
        assert torch.equal(v, fused[k]), k

    # The folded spec (conv_bias=True, norm='none') converts and comes back exactly.
    module = transforms.to_module(folded, folded_state)
    back, back_state = transforms.from_module(module)
    assert back.spec == folded.spec and back_state.flat() == {}
    for k, v in folded.flat().items():
        assert torch.equal(back.flat()[k], v), k
    with torch.no_grad():
        torch.testing.assert_close(module(x), fm.apply(folded, x), **TOL)


def test_from_module_reads_conv_bias_from_the_convs():
    spec = fm.nn.ResidualBlock(4, 8, stride=2, norm="none")
    params, state = randomised(spec)
    module = transforms.to_module(params, state)
    g = torch.Generator().manual_seed(3)
    convs = ("main_branch.0", "main_branch.3", "projection.0")
    for name in convs:
        conv = module.get_submodule(name)
        conv.bias = nn.Parameter(torch.randn(conv.out_channels, generator=g))
    back, _ = transforms.from_module(module)
    assert back.spec == dataclasses.replace(spec, conv_bias=True)
    for name in convs:
        assert torch.equal(back.flat()[f"{name}.bias"], module.get_submodule(name).bias)
    x = example_input((3, 4, 6, 6))
    with torch.no_grad():
        torch.testing.assert_close(fm.apply(back, x), module(x), **TOL)
    # The convs must agree: one bias-free conv among biased ones has no spec.
    module.projection[0].bias = None
    with pytest.raises(
        ValueError, match=r"module '<root>' \(ResidualBlockModule\): child 'projection'"
    ):
        transforms.from_module(module)


def test_fold_batchnorm_weights_equal_fuse_weights():
    spec = MODELS["cnn"][0]
    params, state = randomised(spec)
    folded, _ = transforms.fold_batchnorm(params, state)
    fused = transforms.fuse(transforms.to_module(params, state))
    sd = fused.state_dict()
    for k in ("0.weight", "0.bias"):
        assert torch.equal(folded.flat()[k], sd[k]), k


def test_fold_batchnorm_needs_state():
    params = fm.init(fm.key(0), MODELS["cnn"][0])
    with pytest.raises(TypeError, match="State from fm.init_with_state"):
        transforms.fold_batchnorm(params, None)


@settings(max_examples=20, deadline=None)
@given(
    affine=st.booleans(),
    bias=st.booleans(),
    eps=st.sampled_from([1e-5, 1e-3, 0.1]),
    seed=st.integers(0, 2**16),
    linear=st.booleans(),
)
def test_fold_pair_settings(affine, bias, eps, seed, linear):
    if linear:
        spec = fm.nn.Sequential(
            fm.nn.Linear(5, 4, bias=bias), fm.nn.BatchNorm1d(4, eps, affine=affine)
        )
        shape = (3, 5)
    else:
        spec = fm.nn.Sequential(
            fm.nn.Conv2d(2, 4, 3, bias=bias), fm.nn.BatchNorm2d(4, eps, affine=affine)
        )
        shape = (3, 2, 5, 5)
    params, state = randomised(spec, seed)
    x = example_input(shape, seed)
    folded, folded_state = transforms.fold_batchnorm(params, state)
    torch.testing.assert_close(
        fm.apply(folded, x, state=folded_state), fm.apply(params, x, state=state), **TOL
    )
    module = transforms.to_module(params, state)
    with torch.no_grad():
        torch.testing.assert_close(transforms.fuse(module)(x), module(x), **TOL)
