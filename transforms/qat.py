"""Quantization-aware training to int8 through torch.export and torchao's PT2E flow.

::

    prepared = transforms.qat.prepare(module, (x,))   # fake-quantized, trainable
    opt = torch.optim.SGD(prepared.parameters(), lr=1e-3)
    ...                                               # fine-tune: prepared.train() / .eval()
    int8 = transforms.qat.convert(prepared)           # int8 weights, quantized activations

:func:`prepare` captures the module with :func:`torch.export.export` and inserts fake
quantization with torchao's ``prepare_qat_pt2e`` and its x86 inductor quantizer (int8
weights per output channel, uint8 activations per tensor); :func:`convert` applies
``convert_pt2e``. The result is a ``torch.fx.GraphModule`` that ``torch.export`` can
capture again and save with :func:`torch.export.save`. Run eagerly, it simulates int8
with quantize/dequantize ops around float kernels (slower than float);
``torch.compile`` with ``torch._inductor.config.freezing = True`` lowers it to int8
kernels on x86 CPUs.

torchao is an optional dependency, imported on first use: ``import transforms`` works
without it, and these functions then raise an ``ImportError`` that says how to install it.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import logging
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import torch
from torch import fx, nn

__all__ = ["convert", "prepare"]

INSTALL_HINT = "pip install 'funcmodels[qat]' (or pip install torchao)"


class _ImportNoise(logging.Filter):
    """Drops the log lines torchao's import writes that concern torchao, not the user:
    its optional GPU kernels failing to load on a machine without them, and torch's
    deprecation of its Enum pytree registration."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        kernels = text.startswith("Failed to load") and "torchao" in text
        enum = record.name == "torch.utils._pytree" and "is an Enum subclass" in text
        return not (kernels or enum)


@contextlib.contextmanager
def _quiet_import() -> Iterator[None]:
    """The filter on the two loggers for the duration of the import only."""
    noise = _ImportNoise()
    loggers = [logging.getLogger("torchao"), logging.getLogger("torch.utils._pytree")]
    for log in loggers:
        log.addFilter(noise)
    try:
        yield
    finally:
        for log in loggers:
            log.removeFilter(noise)


def _pt2e() -> tuple[ModuleType, ModuleType, ModuleType]:
    """torchao's PT2E modules: the flow, its x86 quantizer, and the train/eval helpers."""
    with _quiet_import():
        try:
            importlib.import_module("torchao")
        except ImportError as err:
            raise ImportError(
                f"transforms.qat needs torchao, which is not installed: {INSTALL_HINT}"
            ) from err
        flow = importlib.import_module("torchao.quantization.pt2e.quantize_pt2e")
        x86 = importlib.import_module("torchao.quantization.pt2e.quantizer.x86_inductor_quantizer")
        helpers = importlib.import_module("torchao.quantization.pt2e")
    return flow, x86, helpers


def prepare(
    module: nn.Module, example_inputs: tuple[Any, ...], *, dynamic_batch: bool = True
) -> fx.GraphModule:
    """Export ``module`` and insert int8 fake quantization for quantization-aware training.

    Conv and linear weights get per-output-channel symmetric int8 fake quantization and
    their input activations per-tensor uint8, with observers that follow the training
    (torchao's default x86 QAT configuration). A Conv-BatchNorm pair is kept as such and
    trained with the fold simulated, as torchao does; a module already fused with
    :func:`transforms.fuse` works as well.

    Arguments:
        module: the float model (not modified: a deep copy is exported).
        example_inputs: a tuple of inputs, as for :func:`torch.export.export`, e.g.
            ``(x,)`` with ``x`` of shape ``(N, C, H, W)``.
        dynamic_batch: let dim 0 of every tensor input vary (``torch.export.Dim.AUTO``:
            it stays fixed only where the model itself needs that), so one prepared model
            trains on batches of one size and evaluates on another; ``False`` fixes every
            shape to that of ``example_inputs``.

    Returns:
        the prepared ``GraphModule``, in train mode; its ``.parameters()`` train with
            :mod:`torch.optim`, and ``.train()`` / ``.eval()`` switch BatchNorm and dropout.

    Raises:
        TypeError: ``module`` is not an ``nn.Module``, or ``example_inputs`` not a tuple.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(
            f"transforms.qat.prepare: expected an nn.Module, got {type(module).__name__}"
        )
    if not isinstance(example_inputs, tuple):
        raise TypeError(
            "transforms.qat.prepare: example_inputs must be a tuple of inputs such as (x,), "
            f"got {type(example_inputs).__name__}"
        )
    flow, x86, helpers = _pt2e()
    dynamic = None
    if dynamic_batch:
        dynamic = tuple(
            {0: torch.export.Dim.AUTO} if isinstance(x, torch.Tensor) and x.dim() else None
            for x in example_inputs
        )
    # Strict (dynamo) export records which module or function made each node, which the
    # quantizer needs to find its fusion patterns (conv + ReLU, conv + BatchNorm). The
    # exported graph holds the module's own parameters, hence the copy: training the
    # prepared model must not change the caller's.
    exported = torch.export.export(
        copy.deepcopy(module), example_inputs, dynamic_shapes=dynamic, strict=True
    ).module()
    quantizer = x86.X86InductorQuantizer().set_global(
        x86.get_default_x86_inductor_quantization_config(is_qat=True)
    )
    prepared = flow.prepare_qat_pt2e(exported, quantizer)
    helpers.allow_exported_model_train_eval(prepared)
    prepared.train()
    return prepared


def _drop_unused_tensors(gm: fx.GraphModule) -> None:
    """Delete parameters and buffers that no node reads.

    ``convert_pt2e`` adds the int8 weights as new attributes but leaves the float ones in
    place; kept, they would be saved along with the model and make it larger than the
    float original.
    """
    used = {node.target for node in gm.graph.nodes if node.op == "get_attr"}
    tensors = [name for name, _ in gm.named_parameters()] + [n for n, _ in gm.named_buffers()]
    for name in tensors:
        if name not in used:
            owner, _, leaf = name.rpartition(".")
            delattr(gm.get_submodule(owner), leaf)
    gm.delete_all_unused_submodules()
    gm.recompile()


def convert(prepared: fx.GraphModule) -> fx.GraphModule:
    """The int8 model of a module from :func:`prepare` (after fine-tuning).

    Weights are stored as int8 tensors with per-channel scales (the float weights are
    dropped), activations are quantized to uint8 between layers, and BatchNorm is
    folded. The computation is expressed with quantize/dequantize ops around float
    kernels, which ``torch.compile`` (with inductor's ``freezing`` on) replaces with int8
    kernels on an x86 CPU.

    Arguments:
        prepared: from :func:`prepare`; it is switched to eval mode and not usable for
            training afterwards.

    Returns:
        the quantized ``GraphModule``, in eval mode.

    Raises:
        TypeError: ``prepared`` is not the ``GraphModule`` from :func:`prepare`.
    """
    if not isinstance(prepared, fx.GraphModule):
        raise TypeError(
            "transforms.qat.convert: expected the GraphModule from transforms.qat.prepare, "
            f"got {type(prepared).__name__}"
        )
    flow, _, helpers = _pt2e()
    helpers.move_exported_model_to_eval(prepared)
    quantized = flow.convert_pt2e(prepared)
    _drop_unused_tensors(quantized)
    helpers.allow_exported_model_train_eval(quantized)
    quantized.eval()
    return quantized
