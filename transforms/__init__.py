"""transforms: model-to-model transformations built on :mod:`funcmodels`.

Planned here: mixture of experts, early exit, masked-sparse layers, and the bridge to
deployment (``to_module``/``from_module``, Conv-BN fusion, QAT). The core package never
imports this one; these layers plug into it through its registries.
"""

import funcmodels as _fm  # noqa: F401  (the dependency direction this package keeps)

__all__: list[str] = []
