"""transforms.EarlyExit: per-sample exits, compacted (eager) and masked (transforms) paths
equal, the seed article's network re-typed and matched, deep supervision, calibration,
files and the torch bridge.

Tolerances: eager and masked paths run the same ops on the same rows (compaction only
selects rows), so logits agree within ``atol=1e-6`` in float32 and depths exactly.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import grad, vmap

import funcmodels as fm
import transforms

nn = fm.nn


@dataclasses.dataclass(frozen=True)
class _Rows(fm.Spec):
    """A block that sows how many rows it sees and passes them through a Linear."""

    width: int

    def param_shapes(self):
        return {"weight": (self.width, self.width)}

    def init_params(self, key, *, dtype, device):
        return {
            "weight": fm.random.normal(key, (self.width, self.width), dtype, device)
            / self.width**0.5
        }

    def forward(self, ctx, x):
        ctx.sow("rows", torch.tensor(x.shape[0]))
        return torch.tanh(x @ ctx.param("weight").T) * 2


def model(depth=4, heads=None, width=6, classes=3, **kw):
    heads = heads or [True] * depth
    return transforms.EarlyExit(
        tuple(_Rows(width) for _ in range(depth)),
        tuple(nn.Linear(width, classes) if h else None for h in heads),
        **kw,
    )


def per_sample_reference(params, x, spec):
    """DESIGN.md's rule, one sample at a time, from every exit's logits."""
    logits, depths, confs = [], [], []
    for i in range(x.shape[0]):
        out = fm.run(params, x[i : i + 1], train=True, key=fm.key(0)).aux[""]["exit_logits"][:, 0]
        probs = torch.softmax(out, -1)
        taken = None
        prev, count = None, 0
        for j, d in enumerate(spec.exit_depths):
            p = probs[j]
            if spec.criterion == "max_prob":
                holds = p.max() > spec.threshold
            elif spec.criterion == "entropy":
                holds = torch.special.entr(p).sum() < spec.threshold
            else:
                pred = p.argmax()
                count = count + 1 if prev is not None and pred == prev else 0
                prev = pred
                holds = count >= spec.patience
            if holds and d > spec.min_depth:
                taken = j
                break
        if taken is None:
            taken = len(spec.exit_depths) - 1  # no depth estimator: the deepest exit
        logits.append(out[taken])
        depths.append(spec.exit_depths[taken])
        confs.append(probs[taken].max())
    return torch.stack(logits), torch.tensor(depths), torch.stack(confs)


@settings(max_examples=30, deadline=None)
@given(
    depth=st.integers(1, 5),
    data=st.data(),
    criterion=st.sampled_from(["max_prob", "entropy", "patience"]),
    n=st.integers(1, 9),
    seed=st.integers(0, 2**16),
)
def test_compacted_and_masked_paths_follow_the_rule(depth, data, criterion, n, seed):
    heads = data.draw(st.lists(st.booleans(), min_size=depth, max_size=depth).filter(any))
    threshold = (
        data.draw(st.floats(0.3, 0.9)) if criterion != "entropy" else data.draw(st.floats(0.1, 1.1))
    )
    min_depth = data.draw(st.integers(0, depth - 1))
    spec = model(
        depth,
        heads,
        criterion=criterion,
        threshold=threshold,
        patience=data.draw(st.integers(1, 2)),
        min_depth=min_depth,
    )
    params = fm.init(fm.key(seed), spec)
    x = fm.random.normal(fm.key(seed + 1), (n, 6)) * 2
    eager = fm.run(params, x)
    masked_out, masked_aux = vmap(
        lambda xi: (lambda o: (o.out[0], o.aux[""]))(fm.run(params, xi[None]))
    )(x)
    want_logits, want_depth, want_conf = per_sample_reference(params, x, spec)
    torch.testing.assert_close(eager.out, want_logits, atol=1e-6, rtol=1e-5)
    assert eager.aux[""]["depth"].tolist() == want_depth.tolist()
    torch.testing.assert_close(eager.aux[""]["confidence"], want_conf, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(masked_out, want_logits, atol=1e-6, rtol=1e-5)
    assert masked_aux["depth"][:, 0].tolist() == want_depth.tolist()
    torch.testing.assert_close(masked_aux["confidence"][:, 0], want_conf, atol=1e-6, rtol=1e-5)


def test_finished_samples_leave_the_batch_in_eager_mode():
    spec = model(4, threshold=0.6)
    params = fm.init(fm.key(3), spec)
    x = fm.random.normal(fm.key(4), (64, 6)) * 3
    out = fm.run(params, x)
    depth = out.aux[""]["depth"]
    rows = [out.aux[f"blocks.{i}"]["rows"].item() for i in range(4)]
    # Block i+1 runs on the samples that did not leave at an exit before it.
    assert rows == [64] + [int((depth > d).sum()) for d in (1, 2, 3)]
    assert rows[-1] < 64 and len(set(depth.tolist())) > 1  # exits mixed across depths


def test_train_mode_runs_every_block_and_sows_every_exit():
    spec = model(3, [True, False, True])
    params = fm.init(fm.key(0), spec)
    x = fm.random.normal(fm.key(1), (5, 6))
    y = torch.tensor([0, 1, 2, 0, 1])
    out = fm.run(params, x, train=True, key=fm.key(2))
    aux = out.aux[""]
    assert aux["exit_logits"].shape == (2, 5, 3) and aux["exit_depths"].tolist() == [1, 3]
    assert torch.equal(out.out, aux["exit_logits"][-1])
    assert all(out.aux[f"blocks.{i}"]["rows"].item() == 5 for i in range(3))
    losses = [F.cross_entropy(aux["exit_logits"][j], y) for j in range(2)]
    torch.testing.assert_close(
        transforms.deep_supervision_loss(aux, y), (losses[0] + losses[1]) / 2
    )
    torch.testing.assert_close(
        transforms.deep_supervision_loss(aux, y, "depth"), (1 * losses[0] + 3 * losses[1]) / 4
    )
    torch.testing.assert_close(transforms.deep_supervision_loss(aux, y, [1.0, 0.0]), losses[0])
    with pytest.raises(ValueError, match="weights must be 'uniform', 'depth' or 2 numbers"):
        transforms.deep_supervision_loss(aux, y, [1.0])


def article_network(base_layers=2, max_layers=4, feature_dim=8, threshold=0.6):
    """The seed article's DynamicDepthNetwork, re-typed, its exit heads pooling the
    sequence axis (the article pools the feature axis and then fails)."""

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.base_layers, self.max_layers, self.early_exit_threshold = (
                base_layers,
                max_layers,
                threshold,
            )
            self.layers = torch.nn.ModuleList(
                torch.nn.Sequential(
                    torch.nn.Linear(feature_dim, feature_dim * 4),
                    torch.nn.ReLU(),
                    torch.nn.Dropout(0.1),
                    torch.nn.Linear(feature_dim * 4, feature_dim),
                    torch.nn.LayerNorm(feature_dim),
                )
                for _ in range(max_layers)
            )
            self.exit_heads = torch.nn.ModuleList(
                torch.nn.Linear(feature_dim, 10) for _ in range(max_layers)
            )
            self.difficulty_estimator = torch.nn.Sequential(
                torch.nn.Linear(feature_dim, 16),
                torch.nn.ReLU(),
                torch.nn.Linear(16, 1),
                torch.nn.Sigmoid(),
            )

        def head(self, i, hidden):
            return self.exit_heads[i](hidden.mean(dim=1))

        def forward(self, x):
            hidden = x
            difficulty = self.difficulty_estimator(hidden.mean(dim=1)).mean()
            dynamic_max_layers = min(
                self.max_layers,
                max(self.base_layers, int(self.base_layers * (1 + difficulty.item()))),
            )
            for layer_idx in range(dynamic_max_layers):
                hidden = self.layers[layer_idx](hidden)
                if self.training or layer_idx >= self.base_layers:
                    exit_logits = self.head(layer_idx, hidden)
                    confidence = F.softmax(exit_logits, dim=-1).max(dim=-1)[0].mean()
                    if not self.training and confidence > self.early_exit_threshold:
                        return exit_logits, layer_idx + 1
            return self.head(dynamic_max_layers - 1, hidden), dynamic_max_layers

    return Net()


def test_the_articles_network_gives_the_same_logits_and_depth_per_example():
    torch.manual_seed(0)
    net = article_network().eval()
    with torch.no_grad():  # spread the difficulty over [0, 1] so depths differ
        net.difficulty_estimator[2].weight.mul_(5.0)
        net.difficulty_estimator[2].bias.add_(3.0)
    f = 8
    spec = transforms.EarlyExit(
        blocks=tuple(
            nn.Sequential(
                nn.Linear(f, 4 * f),
                nn.ReLU(),
                nn.Dropout(0.1),
                nn.Linear(4 * f, f),
                nn.LayerNorm(f),
            )
            for _ in range(4)
        ),
        heads=tuple(
            nn.Sequential(nn.Reduce("b s f -> b f", "mean"), nn.Linear(f, 10)) for _ in range(4)
        ),
        threshold=0.6,
        min_depth=2,
        depth_estimator=nn.Sequential(
            nn.Reduce("b s f -> b f", "mean"),
            nn.Linear(f, 16),
            nn.ReLU(),
            nn.Linear(16, 1),
            nn.Sigmoid(),
        ),
    )
    sd = {}
    for k, v in net.state_dict().items():
        k = k.replace("layers.", "blocks.", 1) if k.startswith("layers.") else k
        if k.startswith("exit_heads."):
            i, rest = k[len("exit_heads.") :].split(".", 1)
            k = f"heads.{i}.1.{rest}"
        if k.startswith("difficulty_estimator."):
            i, rest = k[len("difficulty_estimator.") :].split(".", 1)
            k = f"depth_estimator.{int(i) + 1}.{rest}"
        sd[k] = v
    params, _ = fm.from_state_dict(spec, sd)
    # Examples whose feature means differ widely: difficulties (and depths) differ too.
    x = fm.random.normal(fm.key(1), (24, 5, f)) + torch.linspace(-4, 4, 24)[
        :, None, None
    ] * fm.random.normal(fm.key(2), (f,))
    depths = []
    for i in range(24):
        with torch.no_grad():
            want, want_depth = net(x[i : i + 1])
        got = fm.run(params, x[i : i + 1])
        torch.testing.assert_close(got.out, want, atol=1e-5, rtol=1e-5)
        assert got.aux[""]["depth"].item() == want_depth
        depths.append(want_depth)
    assert len(set(depths)) > 1  # the examples took different depths
    # A whole batch at once gives each example its own exit (the article's rule could not).
    batched = fm.run(params, x)
    assert batched.aux[""]["depth"].tolist() == depths
    # The masked path (under vmap) applies the depth estimator alike.
    masked_out, masked_aux = vmap(
        lambda xi: (lambda o: (o.out[0], o.aux[""]))(fm.run(params, xi[None]))
    )(x)
    torch.testing.assert_close(masked_out, batched.out, atol=1e-5, rtol=1e-5)
    assert masked_aux["depth"][:, 0].tolist() == depths
    torch.testing.assert_close(masked_aux["confidence"][:, 0], batched.aux[""]["confidence"])


def test_calibration_picks_the_shallowest_threshold_within_the_drop():
    spec = model(4, threshold=0.5)
    params = fm.init(fm.key(5), spec)
    x = fm.random.normal(fm.key(6), (128, 6)) * 2
    full_logits = fm.run(params, x, train=True, key=fm.key(0)).aux[""]["exit_logits"][-1]
    y = (
        full_logits.argmax(-1) + (torch.arange(128) % 7 == 0)
    ) % 3  # mostly the full model's answer
    cal = transforms.calibrate_threshold(params, x, y, max_drop=0.05)
    full = (full_logits.argmax(-1) == y).float().mean().item()
    assert cal.full_accuracy == pytest.approx(full)
    assert cal.accuracy >= full - 0.05
    # Each row of the table is what the eager model gives at that threshold.
    for t, acc, mean_depth in cal.table[::20]:
        p = fm.Params._make(dataclasses.replace(spec, threshold=t), params.flat())
        out = fm.run(p, x)
        assert (out.out.argmax(-1) == y).float().mean().item() == pytest.approx(acc)
        assert out.aux[""]["depth"].float().mean().item() == pytest.approx(mean_depth)
    feasible = [row for row in cal.table if row[1] >= full - 0.05]
    assert cal.mean_depth == min(row[2] for row in feasible)


@pytest.mark.parametrize(
    "make, exc, pattern",
    [
        (lambda: model(3, [True, True]), ValueError, "heads must have one entry per block \\(3\\)"),
        (lambda: model(2, [False, False]), ValueError, "no exit at all"),
        (lambda: model(2, criterion="vote"), ValueError, "criterion must be one of"),
        (lambda: model(2, threshold=1.5), ValueError, "a max_prob threshold is a probability"),
        (
            lambda: model(2, criterion="entropy", threshold=-0.1),
            ValueError,
            "an entropy threshold is >= 0",
        ),
        (lambda: model(2, min_depth=2), ValueError, "min_depth=2 leaves no block after it"),
        (lambda: model(2, patience=0), ValueError, "patience must be an int >= 1"),
        (
            lambda: model(2, depth_estimator=nn.Linear(6, 1)),
            ValueError,
            "a depth_estimator needs min_depth >= 1",
        ),
        (
            lambda: transforms.EarlyExit(nn.Linear(2, 2), (None,)),
            TypeError,
            "blocks must be a tuple of layer specs",
        ),
    ],
)
def test_bad_settings(make, exc, pattern):
    with pytest.raises(exc, match=f"EarlyExit: {pattern}"):
        make()


def test_files_configs_and_the_torch_bridge(tmp_path):
    spec = transforms.EarlyExit(
        tuple(nn.Sequential(nn.Linear(6, 6), nn.Tanh()) for _ in range(3)),
        (nn.Linear(6, 3), None, nn.Linear(6, 3)),
        threshold=0.5,
    )
    params = fm.init(fm.key(0), spec)
    assert fm.from_config(json.loads(json.dumps(spec.to_config()))) == spec
    fm.save(tmp_path / "ee.safetensors", params)
    loaded, _ = fm.load(tmp_path / "ee.safetensors")
    x = fm.random.normal(fm.key(1), (7, 6)) * 2
    assert loaded.spec == spec and torch.equal(fm.apply(loaded, x), fm.apply(params, x))
    module = transforms.to_module(params)
    with torch.no_grad():
        torch.testing.assert_close(module(x), fm.apply(params, x), atol=0, rtol=0)
        depth = module.run(x).aux[""]["depth"]
    assert torch.equal(depth, fm.run(params, x).aux[""]["depth"])
    assert transforms.from_module(module)[0].spec == spec


def test_per_sample_gradients_through_the_masked_path_equal_a_loop():
    spec = model(3, threshold=0.5)
    params = fm.init(fm.key(0), spec)
    x = fm.random.normal(fm.key(1), (4, 6)) * 2
    y = torch.tensor([0, 1, 2, 1])

    def loss(p, xi, yi):
        return F.cross_entropy(fm.apply(p, xi[None]), yi[None])

    got = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    for i in range(4):
        for k, g in grad(loss)(params, x[i], y[i]).flat().items():
            torch.testing.assert_close(got[k][i], g, atol=1e-6, rtol=1e-5, msg=k)


@pytest.mark.slow
def test_eval_compiles_to_one_graph():
    import torch._dynamo

    torch._dynamo.reset()
    params = fm.init(
        fm.key(0), model(4, [True, False, True, True], criterion="patience", patience=1)
    )
    x = fm.random.normal(fm.key(1), (9, 6)) * 2

    def f(p, xx):
        out = fm.run(p, xx)
        return out.out, out.aux[""]["depth"]

    explained = torch._dynamo.explain(f)(params, x)
    assert explained.graph_break_count == 0, explained.break_reasons
    torch._dynamo.reset()
    got = torch.compile(f, fullgraph=True)(params, x)
    want = f(params, x)
    torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-5)
    assert torch.equal(got[1], want[1])
    torch._dynamo.reset()
