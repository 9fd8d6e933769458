"""fm.nn.Repeat under torch.compile: members through one nested compile region.

References: the same step run eagerly (a Python loop over the members, itself checked
against separate blocks in ``test_repeat.py``). Compiled code is compared within
``atol=1e-5, rtol=1e-4`` (the compiler fuses differently); integer buffers exactly, with
their dtype. What dynamo traced is read from the graphs handed to the backend:
``invoke_subgraph`` calls (one per member) and the subgraphs installed (one, stamped out
for every call).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

import funcmodels as fm
from funcmodels._region import region_handle

nn = fm.nn
CLOSE = dict(atol=1e-5, rtol=1e-4)
INVOKE = torch.ops.higher_order.invoke_subgraph
SCAN = torch.ops.higher_order.scan


def _recording(graphs: list):
    """A backend that keeps dynamo's graph and runs it through AOTAutograd, uncompiled."""
    from torch._dynamo.backends.debugging import aot_eager

    def backend(gm, example_inputs):
        graphs.append(gm)
        return aot_eager(gm, example_inputs)

    return backend


def _calls(gm: torch.fx.GraphModule, target) -> int:
    """Calls of ``target`` in a graph and the subgraphs it holds."""
    count = sum(1 for n in gm.graph.nodes if n.op == "call_function" and n.target is target)
    return count + sum(
        _calls(m, target) for _, m in gm.named_children() if isinstance(m, torch.fx.GraphModule)
    )


def _subgraphs(gm: torch.fx.GraphModule) -> list[str]:
    """The distinct bodies that ``invoke_subgraph`` calls run."""
    calls = [n for n in gm.graph.nodes if n.op == "call_function" and n.target is INVOKE]
    return sorted({n.args[0].target for n in calls})


@dataclass(frozen=True)
class _SowScaled(fm.Spec):
    """Sows the mean of its input; returns the input times a per-member weight."""

    def param_shapes(self):
        return {"w": ()}

    def init_params(self, key, *, dtype, device):
        return {"w": fm.random.uniform(key, (), dtype, device, minval=0.5, maxval=1.5)}

    def forward(self, ctx, x):
        ctx.sow("mean", x.mean())
        return x * ctx.param("w")

    def out_shape(self, in_shape, path="", record=None):
        return in_shape


@dataclass(frozen=True)
class _Pair(fm.Spec):
    """Takes and gives a pair ``(x, y)``: ``(tanh(x W) + y, y)``."""

    def param_shapes(self):
        return {"w": (6, 6)}

    def init_params(self, key, *, dtype, device):
        return {"w": fm.random.normal(key, (6, 6), dtype, device) * 0.4}

    def forward(self, ctx, xy):
        x, y = xy
        return torch.tanh(x @ ctx.param("w")) + y, y

    def out_shape(self, in_shape, path="", record=None):
        return in_shape


def _step(spec, compile_with=None):
    """Loss, new state, aux and gradients of one training step of ``spec``, eager or
    compiled with ``compile_with`` (a backend)."""
    params, state = fm.init_with_state(fm.key(0), spec)
    x = fm.random.normal(fm.key(1), (8, 6))
    if isinstance(spec, nn.Repeat) and isinstance(spec.spec, _Pair):
        x = (x, fm.random.normal(fm.key(2), (8, 6)))

    def step(p, s):
        out = fm.run(p, x, state=s, key=fm.key(4), train=True)
        loss = sum(t.pow(2).mean() for t in torch.utils._pytree.tree_leaves(out.out))
        return loss, out.state, out.aux

    fn = step if compile_with is None else torch.compile(step, fullgraph=True, backend=compile_with)
    leaves = {k: t.clone().requires_grad_() for k, t in params.flat().items()}
    loss, new, aux = fn(fm.Params(spec, leaves), state)
    grads = torch.autograd.grad(loss, list(leaves.values())) if leaves else ()
    return loss, new, aux, grads


def _assert_same_step(got, want):
    torch.testing.assert_close(got[0], want[0], **CLOSE)
    assert list(got[1].flat()) == list(want[1].flat())
    for k, t in want[1].flat().items():
        assert got[1][k].dtype == t.dtype, k
        torch.testing.assert_close(got[1][k], t, **CLOSE)
    torch.testing.assert_close(got[2], want[2], **CLOSE)
    for a, b in zip(got[3], want[3], strict=True):
        torch.testing.assert_close(a, b, **CLOSE)


def test_equal_member_specs_share_a_region_handle_and_others_do_not():
    a = nn.Repeat(nn.Sequential(nn.Linear(6, 6), nn.GELU()), 3)
    b = nn.Repeat(nn.Sequential(nn.Linear(6, 6), nn.GELU()), 5)
    c = nn.Repeat(nn.Sequential(nn.Linear(6, 6), nn.Tanh()), 3)
    assert a._fm_region == b._fm_region != c._fm_region
    assert region_handle(a.spec, fm.Context, type(None)) != a._fm_region


@pytest.mark.slow
@pytest.mark.parametrize("n", [3, 8])
def test_one_region_traced_and_stamped_out_for_every_member(n):
    import torch._dynamo

    torch._dynamo.reset()
    graphs: list = []
    spec = nn.Repeat(nn.Sequential(nn.Linear(6, 6), nn.GELU(), nn.LayerNorm(6)), n)
    want = _step(spec)
    got = _step(spec, _recording(graphs))
    _assert_same_step(got, want)
    (gm,) = graphs
    assert _calls(gm, INVOKE) == n, gm.code  # member 0 too: its input requires grad here
    assert _subgraphs(gm) == ["subgraph_0"]  # traced once, whatever n
    # member 0 inline (for the structure of its outputs) and the region's body
    assert _calls(gm, torch._C._nn.linear) == 2
    torch._dynamo.reset()


@pytest.mark.slow
@pytest.mark.parametrize(
    "member",
    [
        nn.Sequential(nn.Linear(6, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Dropout(0.2)),
        nn.Sequential(_SowScaled(), nn.Identity()),
        nn.Identity(),
    ],
    ids=["batchnorm-dropout", "sow", "identity"],
)
def test_members_with_state_keys_aux_or_none_go_through_the_region(member):
    import torch._dynamo

    torch._dynamo.reset()
    graphs: list = []
    spec = nn.Sequential({"deep": nn.Repeat(member, 4)})
    want = _step(spec)
    got = _step(spec, _recording(graphs))
    _assert_same_step(got, want)
    assert _calls(graphs[0], INVOKE) == 4
    if "deep.1.num_batches_tracked" in want[1].flat():
        assert got[1]["deep.1.num_batches_tracked"].tolist() == [1, 1, 1, 1]
    torch._dynamo.reset()


@pytest.mark.slow
def test_batchnorm_dropout_members_through_the_region_under_inductor():
    import torch._dynamo

    torch._dynamo.reset()
    spec = nn.Repeat(
        nn.Sequential(nn.Linear(6, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Dropout(0.2)), 3
    )
    _assert_same_step(_step(spec, "inductor"), _step(spec))
    torch._dynamo.reset()


@pytest.mark.slow
def test_a_member_whose_input_is_not_one_tensor_runs_as_torchs_scan_op():
    import torch._dynamo

    torch._dynamo.reset()
    graphs: list = []
    spec = nn.Repeat(_Pair(), 4)
    want = _step(spec)
    got = _step(spec, _recording(graphs))
    _assert_same_step(got, want)
    assert _calls(graphs[0], INVOKE) == 0
    assert _calls(graphs[0], SCAN) == 1
    torch._dynamo.reset()


@pytest.mark.slow
def test_an_fm_jit_step_over_a_repeat_is_one_graph_and_equals_eager():
    import torch._dynamo

    torch._dynamo.reset()
    graphs: list = []
    spec = nn.Repeat(nn.Sequential(nn.Linear(6, 6), nn.GELU(), nn.Dropout(0.1)), 4)
    params = fm.init(fm.key(0), spec)
    x = fm.random.normal(fm.key(1), (4, 6))

    def step(p, x, key):
        def loss(p):
            return fm.apply(p, x, key=key, train=True).pow(2).mean()

        return fm.value_and_grad(loss)(p)

    want = step(params, x, fm.key(3))
    got = fm.jit(step, backend=_recording(graphs))(params, x, fm.key(3))
    assert len(graphs) == 1
    torch.testing.assert_close(got[0], want[0], **CLOSE)
    for k, t in want[1].flat().items():
        torch.testing.assert_close(got[1][k], t, **CLOSE)
    torch._dynamo.reset()
