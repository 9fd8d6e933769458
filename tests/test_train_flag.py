"""The mode is chosen by ``train`` alone: a key without ``train=True`` runs eval (dropout
off). The rule is stated where a user reads it (fm.apply's and fm.run's docstrings and the
README), and these tests keep it there."""

from __future__ import annotations

from pathlib import Path

import torch

import funcmodels as fm

nn = fm.nn


def test_a_key_without_train_runs_eval():
    params = fm.init(fm.key(0), nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)))
    x = torch.ones(3, 4)
    eval_out = fm.apply(params, x)
    torch.testing.assert_close(fm.apply(params, x, key=fm.key(1)), eval_out, atol=0, rtol=0)
    assert not fm.apply(params, x, key=fm.key(1), train=True).equal(eval_out)


def test_the_rule_is_stated_in_the_docstrings_and_the_readme():
    assert "A key does not turn train mode on" in fm.run.__doc__
    assert "Eval mode unless ``train=True``, whether or not a ``key`` is given" in (
        fm.apply.__doc__
    )
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert "Only `train=True` selects train mode: a key without it runs eval" in readme
