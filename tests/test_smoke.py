import torch

import funcmodels as fm
from tests.helpers import assert_per_sample_grads_match, torch_twin


def test_mlp_matches_torch_and_per_sample_grads():
    spec = fm.nn.Sequential(fm.nn.Linear(3, 8), fm.nn.ReLU(), fm.nn.Linear(8, 2))
    params = fm.init(fm.key(0), spec)
    module = torch_twin(
        torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)), params
    )
    x = fm.random.normal(fm.key(1), (5, 3))
    torch.testing.assert_close(fm.apply(params, x), module(x), atol=0, rtol=0)
    assert_per_sample_grads_match(params, x, fm.random.normal(fm.key(2), (5, 2)))
