"""The scoped context of a layer's forward: tensors, children, keys, aux, mode, errors."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch.func import grad, vmap

import funcmodels as fm
from funcmodels._context import name_hash


@dataclass(frozen=True)
class _Scale(fm.Spec):
    """``x * weight``; sows the mean of its input."""

    features: int

    def param_shapes(self):
        return {"weight": (self.features,)}

    def init_params(self, key, *, dtype, device):
        return {"weight": torch.full((self.features,), 2.0, dtype=dtype, device=device)}

    def out_shape(self, in_shape, path="", record=None):
        return in_shape

    def forward(self, ctx, x):
        ctx.sow("mean", x.mean())
        return x * ctx.param("weight")


@dataclass(frozen=True)
class _Counter(fm.Spec):
    """Counts its calls in a buffer; reads its own write within a call."""

    def state_shapes(self):
        return {"count": ((), torch.int64)}

    def init_state(self, key, *, dtype, device):
        return {"count": torch.zeros((), dtype=torch.int64, device=device)}

    def forward(self, ctx, x):
        if ctx.train:
            ctx.set_buffer("count", ctx.buffer("count") + 1)
            ctx.set_buffer("count", ctx.buffer("count") + 1)  # sees the value just set
        return x


@dataclass(frozen=True)
class _Probe(fm.Spec):
    """Returns what the context tells it: its path, mode and key."""

    def forward(self, ctx, x):
        return {"path": ctx.path, "mode": ctx.mode, "key": ctx.key() if ctx.has_key() else None}


@dataclass(frozen=True)
class _Pair(fm.Spec):
    """A composite applying its children by name: ``b(a(x))``."""

    a: fm.Spec
    b: fm.Spec

    def children(self):
        return (("a", self.a), ("b", self.b))

    def forward(self, ctx, x):
        return ctx.apply("b", ctx.apply("a", x))


def test_param_apply_and_sow_are_scoped_to_the_layer():
    spec = fm.nn.Sequential({"s": _Pair(_Scale(3), fm.nn.Sequential(_Scale(3)))})
    params = fm.init(fm.key(0), spec)
    x = torch.tensor([[1.0, 2.0, 3.0]])
    out = fm.run(params, x)
    torch.testing.assert_close(out.out, x * 4)
    assert sorted(out.aux) == ["s.a", "s.b.0"]
    torch.testing.assert_close(out.aux["s.a"]["mean"], torch.tensor(2.0))
    torch.testing.assert_close(out.aux["s.b.0"]["mean"], torch.tensor(4.0))
    # apply drops aux; a root layer sows under ''.
    assert torch.equal(fm.apply(params, x), out.out)
    root = fm.run(fm.init(fm.key(0), _Scale(3)), x)
    assert list(root.aux) == [""] and list(root.aux[""]) == ["mean"]


def test_set_buffer_returns_new_state_and_leaves_the_given_one():
    spec = fm.nn.Sequential(fm.nn.Linear(2, 2), _Counter())
    params, state = fm.init_with_state(fm.key(0), spec)
    out = fm.run(params, torch.ones(1, 2), state=state, train=True)
    assert out.state["1.count"].item() == 2
    assert state["1.count"].item() == 0
    # Eval mode sets nothing: the same State comes back.
    assert fm.run(params, torch.ones(1, 2), state=state).state is state


def test_keys_fold_each_name_on_the_path():
    spec = fm.nn.Sequential({"a": fm.nn.Sequential({"b": _Probe()})})
    params = fm.init(fm.key(0), spec)
    key = fm.key(7)
    out = fm.apply(params, torch.zeros(1), key=key)
    want = fm.fold_in(fm.fold_in(key, name_hash("a")), name_hash("b"))
    assert out["path"] == "a.b"
    assert torch.equal(out["key"], want)
    assert fm.apply(params, torch.zeros(1))["key"] is None


def test_mode_is_eager_transform_or_compile():
    params = fm.init(fm.key(0), _Probe())
    assert fm.apply(params, torch.zeros(2))["mode"] == "eager"
    modes = []

    def f(x):
        modes.append(fm.apply(params, x)["mode"])
        return x.sum()

    vmap(f)(torch.zeros(2, 3))
    grad(f)(torch.zeros(3))
    assert modes == ["transform", "transform"]


@pytest.mark.slow
def test_mode_is_compile_under_torch_compile():
    import torch._dynamo

    torch._dynamo.reset()
    params = fm.init(fm.key(0), _Probe())

    def f(x):
        mode = fm.apply(params, x)["mode"]
        return x + (1.0 if mode == "compile" else 0.0)

    assert torch.equal(torch.compile(f, fullgraph=True)(torch.zeros(2)), torch.ones(2))
    torch._dynamo.reset()


def test_sow_errors():
    @dataclass(frozen=True)
    class _Twice(fm.Spec):
        def forward(self, ctx, x):
            ctx.sow("v", x)
            ctx.sow("v", x)
            return x

    @dataclass(frozen=True)
    class _NotTensor(fm.Spec):
        def forward(self, ctx, x):
            ctx.sow("v", 1.0)
            return x

    with pytest.raises(ValueError, match=r"layer '<root>' \(_Twice\): sowed 'v' twice"):
        fm.apply(fm.init(fm.key(0), _Twice()), torch.zeros(1))
    with pytest.raises(
        TypeError, match=r"layer '0' \(_NotTensor\): sow\('v', ...\): expected a tensor"
    ):
        fm.apply(fm.init(fm.key(0), fm.nn.Sequential(_NotTensor())), torch.zeros(1))


def test_context_errors_name_the_layer():
    @dataclass(frozen=True)
    class _Wrong(fm.Spec):
        what: str = "param"

        def forward(self, ctx, x):
            if self.what == "param":
                return ctx.param("nope")
            if self.what == "buffer":
                return ctx.buffer("nope")
            if self.what == "set":
                ctx.set_buffer("nope", x)
            if self.what == "child":
                return ctx.apply("nope", x)
            return ctx.key()

    def run(what, **kw):
        spec = fm.nn.Sequential({"w": _Wrong(what)})
        fm.apply(fm.init(fm.key(0), spec), torch.zeros(1), **kw)

    with pytest.raises(ValueError, match=r"layer 'w' \(_Wrong\): has no parameter 'nope'"):
        run("param")
    with pytest.raises(ValueError, match=r"layer 'w' \(_Wrong\): has state .* none was given"):
        run("buffer")
    with pytest.raises(ValueError, match=r"layer 'w' \(_Wrong\): has no buffer 'nope' to set"):
        run("set")
    with pytest.raises(ValueError, match=r"layer 'w' \(_Wrong\): _Wrong has no child 'nope'"):
        run("child")
    with pytest.raises(ValueError, match=r"layer 'w' \(_Wrong\): needs a PRNG key"):
        run("key", train=True)


@pytest.mark.parametrize(
    "make, exc, pattern",
    [
        # float64 input to float32 params
        (
            lambda: (
                fm.init(fm.key(0), fm.nn.Sequential(fm.nn.Linear(3, 2))),
                torch.ones(2, 3, dtype=torch.float64),
            ),
            TypeError,
            r"layer '0' \(Linear\): mat1 and mat2 must have the same dtype.*convert",
        ),
        # an integer input
        (
            lambda: (
                fm.init(fm.key(0), fm.nn.Sequential(fm.nn.Conv2d(1, 2, 3))),
                torch.ones(1, 1, 5, 5, dtype=torch.int64),
            ),
            TypeError,
            r"layer '0' \(Conv2d\): Input type \(long int\) and bias type \(float\) should be",
        ),
        # half params, float input
        (
            lambda: (
                fm.init(
                    fm.key(0),
                    fm.nn.Sequential(fm.nn.ReLU(), fm.nn.Linear(3, 2)),
                    dtype=torch.float16,
                ),
                torch.ones(2, 3),
            ),
            TypeError,
            r"layer '1' \(Linear\): .*dtype",
        ),
        # an elementwise op torch does not implement for the dtype
        (
            lambda: (fm.init(fm.key(0), fm.nn.GELU()), torch.ones(2, dtype=torch.int64)),
            TypeError,
            r"layer '<root>' \(GELU\): \"GeluKernelImpl\" not implemented for 'Long'",
        ),
    ],
)
def test_torch_errors_inside_a_layer_name_it(make, exc, pattern):
    params, x = make()
    with pytest.raises(exc, match=pattern) as info:
        fm.apply(params, x)
    assert isinstance(info.value.__cause__, (RuntimeError, NotImplementedError))


def test_errors_from_inside_a_stack_name_the_inner_layer():
    spec = fm.nn.Stack(fm.nn.Sequential(fm.nn.Linear(3, 2), fm.nn.Linear(2, 2)), 4)
    params = fm.init(fm.key(0), spec)
    with pytest.raises(TypeError, match=r"layer '0' \(Linear\): .*dtype"):
        fm.apply(params, torch.ones(5, 3, dtype=torch.float64))
    nested = fm.nn.Sequential({"ens": spec})
    with pytest.raises(ValueError, match=r"layer 'ens.0' \(Linear\): expected input \(\*, 3\)"):
        fm.apply(fm.init(fm.key(0), nested), torch.ones(5, 4))


def test_a_tap_sees_every_layer_and_may_replace_its_output():
    from funcmodels._tap import tapping

    spec = fm.nn.Sequential(fm.nn.Linear(3, 4), fm.nn.ReLU(), fm.nn.Linear(4, 2))
    params = fm.init(fm.key(0), spec)
    x = fm.random.normal(fm.key(1), (5, 3))
    seen = []

    def tap(ctx, inp, out):
        seen.append((ctx.path, ctx.spec.type_name, sorted(ctx.own_params()), inp.shape))
        return out + 1.0 if ctx.path == "2" else out

    with tapping(tap):
        tapped = fm.apply(params, x)
        with pytest.raises(RuntimeError, match="taps do not nest"):
            with tapping(tap):
                pass
    assert seen == [
        ("0", "Linear", ["bias", "weight"], (5, 3)),
        ("1", "ReLU", [], (5, 4)),
        ("2", "Linear", ["bias", "weight"], (5, 4)),
        ("", "Sequential", [], (5, 3)),
    ]
    torch.testing.assert_close(tapped, fm.apply(params, x) + 1.0)
    seen.clear()
    fm.apply(params, x)  # no tap outside the block
    assert seen == []
