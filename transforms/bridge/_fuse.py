"""Folding eval-mode BatchNorm into the convolution or linear layer before it.

In eval mode BatchNorm is a per-channel affine map ``y = (x - mean) * w / sqrt(var + eps)
+ b`` with fixed running statistics, so it can be merged into the weights and bias of the
layer that feeds it (torch's own formulas from :mod:`torch.nn.utils.fusion`), saving one
pass over every activation. Two forms:

* :func:`fuse` rewrites a :mod:`torch.nn` module as a ``torch.fx`` graph: Conv-BN and
  Linear-BatchNorm1d pairs become one layer, and a ReLU right after a conv or linear
  layer runs in place on its output (no second activation tensor);
* :func:`fold_batchnorm` does the folding on funcmodels ``(params, state)``, inside
  ``Sequential`` containers and ``ResidualBlock`` layers.
"""

from __future__ import annotations

import copy
import dataclasses
import operator
from collections import Counter
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights, fuse_linear_bn_weights

import funcmodels as fm
from funcmodels.extend import layer_error, replace_layers

# Layer type -> the BatchNorm type that can follow it (channels on dim 1 in both).
_MODULE_PAIRS: dict[type[nn.Module], type[nn.Module]] = {
    nn.Conv1d: nn.BatchNorm1d,
    nn.Conv2d: nn.BatchNorm2d,
    nn.Conv3d: nn.BatchNorm3d,
    nn.Linear: nn.BatchNorm1d,
}
_SPEC_PAIRS: dict[type[fm.Spec], type[fm.Spec]] = {
    fm.nn.Conv1d: fm.nn.BatchNorm1d,
    fm.nn.Conv2d: fm.nn.BatchNorm2d,
    fm.nn.Linear: fm.nn.BatchNorm1d,
}
_RELU_FUNCTIONS = (F.relu, torch.relu)
_RANK_2 = "which is only valid for inputs (N, in_features)"


@dataclasses.dataclass(frozen=True)
class FoldedBatchNorm1d(fm.Spec):
    """Where :func:`fold_batchnorm` folded a ``BatchNorm1d`` into the ``Linear`` before it.

    The identity on ``(N, C)`` inputs, the only layout in which BatchNorm1d normalises the
    linear layer's features; any other rank is refused, so the folded model never silently
    differs from the original (on a ``(N, L, C)`` input BatchNorm1d normalises dim 1).
    No parameters. Its torch form, :class:`FoldedBatchNorm1dModule`, checks the same.
    """

    preserves_rank: ClassVar[bool] = True

    def out_shape(self, in_shape, path="", record=None):
        if in_shape and in_shape[0] is ...:
            # Rank unknown (a config read without an input shape): the identity; the
            # rank is checked once known, and by the forward.
            return in_shape
        if len(in_shape) != 1:
            raise layer_error(
                self,
                path,
                f"expected one example of shape (C,), got {in_shape}: the BatchNorm1d folded "
                f"into the Linear before it was there, {_RANK_2}",
            )
        return in_shape

    def forward(self, ctx, x):
        if x.dim() != 2:
            raise ValueError(
                f"got an input of shape {tuple(x.shape)}: the BatchNorm1d folded into the "
                f"Linear before it was here, {_RANK_2}"
            )
        return x


class FoldedBatchNorm1dModule(nn.Module):
    """The torch form of :class:`FoldedBatchNorm1d`: identity on ``(N, C)``, else an
    assertion error (fx-traceable).

    Arguments:
        *args: passed to ``nn.Module`` (none are needed).
        **kwargs: passed to ``nn.Module``.

    Shapes: input ``(N, C)``, output the same.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch._assert(
            x.dim() == 2,
            f"FoldedBatchNorm1d: the BatchNorm1d folded into the Linear before it was here, "
            f"{_RANK_2}",
        )
        return x


def _folded(
    linear: bool,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    mean: torch.Tensor,
    var: torch.Tensor,
    eps: float,
    bn_weight: torch.Tensor | None,
    bn_bias: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of the layer with the BatchNorm after it merged in."""
    # torch's linear formula needs the affine terms; without them BN scales by 1, shifts by 0.
    bn_weight = torch.ones_like(mean) if bn_weight is None else bn_weight
    bn_bias = torch.zeros_like(mean) if bn_bias is None else bn_bias
    fold = fuse_linear_bn_weights if linear else fuse_conv_bn_weights
    with torch.no_grad():
        w, b = fold(weight, bias, mean, var, eps, bn_weight, bn_bias)
    return w.detach(), b.detach()


def _check_eval(module: nn.Module) -> None:
    training = [name or "<root>" for name, m in module.named_modules() if m.training]
    if training:
        raise ValueError(
            "transforms.fuse: folding BatchNorm uses its running statistics, which only eval "
            f"mode does, but these modules are in train mode: {training[:5]}"
            f"{' ...' if len(training) > 5 else ''}; call module.eval() first"
        )


def _pair(node: fx.Node, modules: dict[str, nn.Module], calls: Counter) -> fx.Node | None:
    """The conv/linear node that BatchNorm ``node`` can be folded into, or ``None``."""
    if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
        return None
    prev = node.args[0]
    if not isinstance(prev, fx.Node) or prev.op != "call_module":
        return None
    bn, layer = modules[node.target], modules[prev.target]
    if _MODULE_PAIRS.get(type(layer)) is not type(bn) or bn.running_mean is None:
        return None
    # Another user of the layer's output needs it without the BatchNorm; a module called
    # from two places would change for both.
    if len(prev.users) != 1 or calls[prev.target] != 1 or calls[node.target] != 1:
        return None
    width = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
    return prev if width == bn.num_features else None


def _guard_rank_2(graph: fx.Graph, node: fx.Node) -> None:
    """Insert a check that the input of linear ``node`` is ``(N, features)``.

    BatchNorm1d normalises dim 1; after a linear layer that is the feature dim only for a
    2-d input, so the folded layer must refuse a 3-d one rather than silently differ.
    Under ``torch.export`` the check is decided at trace time and leaves no node.
    """
    with graph.inserting_before(node):
        rank = graph.call_method("dim", (node.args[0],))
        ok = graph.call_function(operator.eq, (rank, 2))
        graph.call_function(
            torch._assert,
            (
                ok,
                f"transforms.fuse: the Linear '{node.target}' has the BatchNorm1d after it "
                "folded in, which is only valid for inputs (N, in_features)",
            ),
        )


def _is_relu(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return type(modules[node.target]) is nn.ReLU
    if node.op == "call_function" and node.target in _RELU_FUNCTIONS:
        return len(node.args) == 1 and not node.kwargs.get("inplace", False)
    return node.op == "call_method" and node.target == "relu" and len(node.args) == 1


def _relu_in_place(graph: fx.Graph, modules: dict[str, nn.Module]) -> None:
    """Run a ReLU in place when its input is the fresh output of a conv or linear layer
    that nothing else reads: one activation tensor instead of two."""
    for node in list(graph.nodes):
        if not _is_relu(node, modules):
            continue
        src = node.args[0]
        if (
            isinstance(src, fx.Node)
            and src.op == "call_module"
            and type(modules[src.target]) in _MODULE_PAIRS
            and len(src.users) == 1
        ):
            with graph.inserting_after(node):
                new = graph.call_function(F.relu, (src,), {"inplace": True})
            node.replace_all_uses_with(new)
            graph.erase_node(node)


def fuse(module: nn.Module) -> fx.GraphModule:
    """Fold every eval-mode BatchNorm into the conv or linear layer before it.

    The module is traced with :func:`torch.fx.symbolic_trace` (any module
    :func:`~transforms.to_module` makes traces). A ``ConvNd`` followed by ``BatchNormNd``,
    or an ``nn.Linear`` followed by ``nn.BatchNorm1d``, becomes one layer, with the weights
    from :mod:`torch.nn.utils.fusion`. A pair is left alone when the layer's output has
    other users, when either module is called from more than one place, or when the
    BatchNorm keeps no running statistics. A ReLU right after a conv or linear layer whose
    output nothing else reads then runs in place (Conv-BN-ReLU becomes one conv and an
    in-place ReLU). A folded linear layer checks that its input is 2-d, the only case in
    which BatchNorm1d normalises its features.

    Arguments:
        module: a module in eval mode (every submodule); it is not modified.

    Returns:
        a new ``torch.fx.GraphModule`` (deep copies of the layers, sharing no tensor with
            ``module``) whose outputs match ``module``'s up to floating-point rounding.

    Raises:
        TypeError: ``module`` is not an ``nn.Module``.
        ValueError: some submodule is in train mode (named in the message).
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"transforms.fuse: expected an nn.Module, got {type(module).__name__}")
    _check_eval(module)
    gm = fx.symbolic_trace(copy.deepcopy(module))
    graph = gm.graph
    modules = dict(gm.named_modules())
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    for node in list(graph.nodes):
        prev = _pair(node, modules, calls)
        if prev is None:
            continue
        layer, bn = modules[prev.target], modules[node.target]
        linear = isinstance(layer, nn.Linear)
        w, b = _folded(
            linear,
            layer.weight,
            layer.bias,
            bn.running_mean,
            bn.running_var,
            bn.eps,
            bn.weight,
            bn.bias,
        )
        # The layer belongs to the deep copy and is called once, so it can change in place.
        layer.weight = nn.Parameter(w, layer.weight.requires_grad)
        layer.bias = nn.Parameter(b, layer.weight.requires_grad)
        if linear:
            _guard_rank_2(graph, prev)
        node.replace_all_uses_with(prev)
        graph.erase_node(node)
    _relu_in_place(graph, modules)
    graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


def _fold_pair(
    layer: fm.Spec,
    layer_path: str,
    bn: fm.Spec,
    bn_path: str,
    params: dict[str, torch.Tensor],
    state: dict[str, torch.Tensor],
) -> None:
    """Merge the BatchNorm at ``bn_path`` into the layer at ``layer_path``.

    The layer's weight and bias in ``params`` become the folded ones; the BatchNorm's
    entries leave ``params`` and ``state``.
    """
    w, b = _folded(
        isinstance(layer, fm.nn.Linear),
        params[layer_path + "weight"],
        params.get(layer_path + "bias"),
        state.pop(bn_path + "running_mean"),
        state.pop(bn_path + "running_var"),
        bn.eps,
        params.pop(bn_path + "weight", None),
        params.pop(bn_path + "bias", None),
    )
    del state[bn_path + "num_batches_tracked"]
    params[layer_path + "weight"], params[layer_path + "bias"] = w, b


Flat = dict[str, torch.Tensor]


def _fold(spec: fm.Spec, prefix: str, params: Flat, state: Flat, out: dict[str, fm.Spec]) -> None:
    """Fold the BatchNorms of ``spec`` (at ``prefix``): the layers this replaces go into
    ``out`` (layer path -> new spec), and ``params`` and ``state`` (flat copies) are
    updated to match. Other layer types are left as they are."""
    if type(spec) is fm.nn.Sequential:
        _fold_sequential(spec, prefix, params, state, out)
    elif type(spec) is fm.nn.ResidualBlock and spec.norm == "batch":
        _fold_residual(spec, prefix, params, state, out)


def _fold_sequential(
    spec: fm.nn.Sequential, prefix: str, params: Flat, state: Flat, out: dict[str, fm.Spec]
) -> None:
    """Fold pairs among the children of ``spec``, recursing into its children.

    A folded BatchNorm becomes ``Identity`` so every other layer keeps its path.
    """
    layers = list(spec.children())
    i = 0
    while i < len(layers):
        name, layer = layers[i]
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        if nxt is not None and _spec_pair(layer, nxt[1]):
            bn_name, bn = nxt
            _fold_pair(layer, f"{prefix}{name}.", bn, f"{prefix}{bn_name}.", params, state)
            # After a Linear the fold holds for (N, C) inputs only: keep a guard in its place.
            kept = FoldedBatchNorm1d() if isinstance(layer, fm.nn.Linear) else fm.nn.Identity()
            out[f"{prefix}{name}"] = dataclasses.replace(layer, bias=True)
            out[f"{prefix}{bn_name}"] = kept
            i += 2
            continue
        _fold(layer, f"{prefix}{name}.", params, state, out)
        i += 1


def _fold_residual(
    spec: fm.nn.ResidualBlock, prefix: str, params: Flat, state: Flat, out: dict[str, fm.Spec]
) -> None:
    """Fold each BatchNorm of a block into the conv before it.

    The result is the same block with ``norm='none'`` (Identity where the BatchNorms
    were, so the paths stay) and ``conv_bias=True`` to hold the folded shifts.
    """
    layers = dict(spec.walk(prefix))
    pairs = [("main_branch.0.", "main_branch.1."), ("main_branch.3.", "main_branch.4.")]
    if f"{prefix}projection." in layers:
        pairs.append(("projection.0.", "projection.1."))
    for conv, bn in pairs:
        conv_path, bn_path = prefix + conv, prefix + bn
        _fold_pair(layers[conv_path], conv_path, layers[bn_path], bn_path, params, state)
    out[prefix[:-1]] = dataclasses.replace(spec, norm="none", conv_bias=True)


def _spec_pair(layer: fm.Spec, bn: fm.Spec) -> bool:
    if _SPEC_PAIRS.get(type(layer)) is not type(bn) or not bn.track_running_stats:
        return False
    width = layer.out_features if isinstance(layer, fm.nn.Linear) else layer.out_channels
    return width == bn.num_features


def fold_batchnorm(params: fm.Params, state: fm.State) -> tuple[fm.Params, fm.State]:
    """Fold eval-mode BatchNorm into the layer before it, on funcmodels params.

    Within every :class:`~funcmodels.nn.Sequential` (nested ones included), a
    ``Conv1d``/``Conv2d`` followed by the matching BatchNorm, or a ``Linear`` followed by
    ``BatchNorm1d``, becomes the same layer with ``bias=True`` and the BatchNorm folded
    into its weights (torch's formulas from :mod:`torch.nn.utils.fusion`); the BatchNorm
    becomes ``Identity``, so every other layer keeps its parameter path. The folded model
    computes what the original does in eval mode (``fm.apply(params, x, state=state)``), up
    to floating-point rounding. After a Linear the BatchNorm1d becomes
    :class:`FoldedBatchNorm1d` instead, which refuses inputs other than ``(N, C)``: only
    there does BatchNorm1d normalise the linear layer's features, so the folded model is
    exact or refuses, never silently different (as :func:`fuse` does).

    A :class:`~funcmodels.nn.ResidualBlock` with ``norm='batch'`` (at the top or inside a
    Sequential) becomes the same block with ``norm='none'`` and ``conv_bias=True``, each
    of its BatchNorms folded into the convolution before it (``main_branch.0``,
    ``main_branch.3``, ``projection.0``); its squeeze-and-excitation branch and
    activation are unchanged. A BatchNorm anywhere else (not directly after such a layer,
    or without running statistics) stays as it is, with its state.

    Arguments:
        params: the model's parameters.
        state: its buffers (the running statistics are what gets folded).

    Returns:
        ``(params, state)`` of the folded spec (``params.spec``); ``state`` holds the
            buffers of the BatchNorms that remain (empty when all were folded). Inputs are not
            modified.

    Raises:
        TypeError: ``params`` are not Params or ``state`` not a State.
    """
    if not isinstance(params, fm.Params):
        raise TypeError(f"transforms.fold_batchnorm: expected Params, got {type(params).__name__}")
    if not isinstance(state, fm.State):
        raise TypeError(
            "transforms.fold_batchnorm: expected the State from fm.init_with_state (the "
            f"running statistics are what gets folded), got {type(state).__name__}"
        )
    entries = fm.to_state_dict(params, state)
    flat_params = params.flat()
    flat_state = {k: v for k, v in entries.items() if k not in flat_params}
    replaced: dict[str, fm.Spec] = {}
    _fold(params.spec, "", flat_params, flat_state, replaced)
    spec = replace_layers(params.spec, replaced)
    return fm.from_state_dict(spec, {**flat_params, **flat_state})
