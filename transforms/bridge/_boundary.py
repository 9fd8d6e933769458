"""Where ``from_module`` stops converting: the modules it keeps whole, as a
:class:`~transforms.TorchModule`.

The rule: **the whole subtree of the first module on each path that has no converter**
becomes one TorchModule; so does the subtree of a module the caller names (``opaque=``,
by type or path), and that of the lowest module holding every name of a tensor registered
under several names of different layers (tied weights, a layer used twice), so that the
tie survives training. Known layers elsewhere (outside such subtrees) become their specs.

Why the whole subtree rather than the unknown module alone with its known children
converted: an unknown module's ``forward`` calls its children itself, so converting them
would mean running that ``forward`` with the children swapped for stand-ins that call
back into funcmodels, and a ``forward`` may do more with a child than call it on one
tensor: read its weight (``F.linear(x, self.proj.weight)``, a head tied to an
embedding), pass several arguments or keywords (masks, caches), call its other methods,
or iterate a ``ModuleList`` of unknown blocks. A stand-in that misses one of these gives
wrong numbers (a closed-form DP rule that does not see a second use of a weight computes
a wrong gradient) rather than an error. The whole subtree runs exactly torch.func's
``functional_call`` recipe, so it gives torch.func's numbers; what it costs is that the
known layers inside lose their closed-form DP rules (their per-example gradients are
formed with ``vmap``, as torch.func's recipe forms all of them) and that spec-level
transforms (``sparsify``, ``fold_batchnorm``) do not see them. ``to_module`` gives back
the module's own type, so its fx graph is the one torch.fx makes of the original.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

import funcmodels as fm
from funcmodels.extend import expected_entries


class Opaque:
    """The modules the caller asked to keep whole: by type (exact) or by dotted path.

    Arguments:
        opaque: module classes and paths (``''`` for the root).

    Raises:
        TypeError: an entry that is neither an ``nn.Module`` class nor a string.
    """

    def __init__(self, opaque: Iterable[type[nn.Module] | str]):
        if isinstance(opaque, (str, type)):
            opaque = [opaque]
        self.types: set[type] = set()
        self.paths: set[str] = set()
        for entry in opaque:
            if isinstance(entry, str):
                self.paths.add(entry)
            elif isinstance(entry, type) and issubclass(entry, nn.Module):
                self.types.add(entry)
            else:
                raise TypeError(
                    "transforms.from_module: opaque= takes nn.Module classes and dotted "
                    f"module paths ('' for the root), got {entry!r}"
                )

    def holds(self, module: nn.Module, prefix: str) -> bool:
        """Whether the module at ``prefix`` (``'blocks.0.'``) is kept whole."""
        return type(module) in self.types or prefix[:-1] in self.paths


def broken_ties(module: nn.Module, spec: fm.Spec) -> set[str]:
    """The lowest module paths holding a tensor that ``spec`` holds under several names
    (each name would train on its own copy); empty when every tie is held once."""
    held = {*expected_entries(spec, "params"), *expected_entries(spec, "state")}
    persistent = set(module.state_dict(keep_vars=True))
    names: dict[int, list[str]] = {}
    for n, t in module.named_parameters(remove_duplicate=False):
        names.setdefault(id(t), []).append(n)
    for n, t in module.named_buffers(remove_duplicate=False):
        if n in persistent:
            names.setdefault(id(t), []).append(n)
    paths = set()
    for group in names.values():
        if sum(n in held for n in group) > 1:
            owners = [n.split(".")[:-1] for n in group]
            common = []
            for parts in zip(*owners, strict=False):
                if len(set(parts)) > 1:
                    break
                common.append(parts[0])
            paths.add(".".join(common))
    return paths
