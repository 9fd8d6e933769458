"""An init that cannot allocate names the layer and its sizes: refused before allocating
where no machine could hold the tensor, located where the allocator fails."""

from __future__ import annotations

import pytest

import funcmodels as fm

nn = fm.nn


def test_a_size_no_machine_can_hold_is_refused_before_allocating():
    with pytest.raises(
        ValueError,
        match=r"layer '1' \(Linear\): its tensors of torch.float32 cannot exist: 'weight' "
        r"\(2147483648, 2147483648\) \(about 2\^64 bytes\)",
    ):
        fm.init(fm.key(0), nn.Sequential(nn.ReLU(), nn.Linear(2**31, 2**31)))


def test_a_failed_allocation_names_the_layer_and_the_size():
    # 4 TB: more than this machine has, a size a machine can address.
    with pytest.raises(
        RuntimeError,
        match=r"layer 'head' \(Linear\): could not allocate its tensors on cpu: 'weight' "
        r"\(1000000, 1000000\) \(4.0 TB\), 'bias' \(1000000,\) \(4.0 MB\), 4.0 TB in all",
    ):
        fm.init(fm.key(0), nn.Sequential({"head": nn.Linear(10**6, 10**6)}))
    # A Stack allocates its stacked tensors first: the Stack is named, not a member.
    with pytest.raises(RuntimeError, match=r"layer '<root>' \(Stack\): could not allocate"):
        fm.init(fm.key(0), nn.Stack(nn.Linear(10**5, 10**5), 1000))
