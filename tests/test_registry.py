"""One registry of spec types: unique type names, aliases on top, lookups."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import pytest

import funcmodels as fm
from funcmodels import _registry


def test_a_second_class_under_a_taken_name_is_an_error_naming_both(scratch_registry):
    with pytest.raises(TypeError) as info:

        @dataclasses.dataclass(frozen=True)
        class Linear(fm.Spec):  # noqa: F811 (the point of the test)
            size: int = 1

    msg = str(info.value)
    assert "'Linear'" in msg
    assert "test_registry" in msg and "funcmodels.nn._linear.Linear" in msg
    assert "type_name: ClassVar[str] = 'mylib.Linear'" in msg
    # The built-in class is untouched: saving a model that uses it still works.
    assert _registry.lookup("Linear") is fm.nn.Linear
    assert fm.from_config(fm.nn.Sequential(fm.nn.Linear(2, 3)).to_config()) == fm.nn.Sequential(
        fm.nn.Linear(2, 3)
    )


def test_a_class_can_choose_its_type_name(scratch_registry, tmp_path):
    @dataclasses.dataclass(frozen=True)
    class Linear(fm.Spec):  # noqa: F811
        type_name: ClassVar[str] = "mylib.Linear"
        size: int = 1

        def forward(self, ctx, x):
            return x * self.size

    assert Linear.type_name == "mylib.Linear"
    assert _registry.lookup("mylib.Linear") is Linear
    spec = fm.nn.Sequential(fm.nn.Linear(2, 2), Linear(3))
    params = fm.init(fm.key(0), spec)
    fm.save(tmp_path / "m.safetensors", params)
    loaded, _ = fm.load(tmp_path / "m.safetensors")
    assert loaded.spec == spec
    assert type(loaded.spec["1"]) is Linear and type(loaded.spec["0"]) is fm.nn.Linear


def test_redefining_the_same_class_replaces_it(scratch_registry):
    def define(factor):
        @dataclasses.dataclass(frozen=True)
        class RegistryTestScale(fm.Spec):
            value: float = factor

        return RegistryTestScale

    first, second = define(1.0), define(2.0)
    assert first is not second
    # A re-run of the same definition (a notebook cell, a reloaded module) replaces it.
    assert _registry.lookup("RegistryTestScale") is second
    fm.register_layer("registry_scale", second)
    assert _registry.config_name_of(second) == "registry_scale"


def test_private_classes_have_no_type_name(scratch_registry):
    @dataclasses.dataclass(frozen=True)
    class _Hidden(fm.Spec):
        pass

    assert _registry.lookup("_Hidden") is None
    assert _registry.is_spec(_Hidden())
    assert _registry.type_name_of(_Hidden) is None
    with pytest.raises(TypeError, match="_Hidden is a private spec class"):
        _Hidden().to_config()


def test_lookup_by_type_name_alias_and_spelling():
    assert _registry.lookup("Conv2d") is fm.nn.Conv2d
    assert _registry.lookup("conv2d") is fm.nn.Conv2d
    assert _registry.lookup("conv") is fm.nn.Conv2d  # the article's alias
    assert _registry.lookup("Residual-Block") is fm.nn.ResidualBlock
    assert _registry.lookup("stack") is fm.nn.Stack
    assert _registry.lookup("nothing") is None
    assert _registry.config_name_of(fm.nn.Conv2d) == "conv2d"  # the first alias


def test_aliases(scratch_registry):
    @dataclasses.dataclass(frozen=True)
    class RegistryTestGate(fm.Spec):
        pass

    fm.register_layer("gate", RegistryTestGate)
    fm.register_layer("gate", RegistryTestGate)  # the same again is fine
    assert _registry.lookup("GATE") is RegistryTestGate
    with pytest.raises(ValueError, match=r"'gate' already names .*RegistryTestGate"):
        fm.register_layer("gate", fm.nn.ReLU)
    with pytest.raises(ValueError, match=r"'linear' already names funcmodels.nn._linear.Linear"):
        fm.register_layer("linear", RegistryTestGate)
    with pytest.raises(ValueError, match="a letter followed by letters"):
        fm.register_layer("2x", RegistryTestGate)
    with pytest.raises(TypeError, match="expected a public spec class"):
        fm.register_layer("thing", int)
    _registry.remove_alias("gate")
    assert _registry.lookup("gate") is None
    assert _registry.config_name_of(RegistryTestGate) == "RegistryTestGate"


def test_spec_protocol_is_declared_on_the_base_class():
    # Every piece a layer may define has a default on fm.Spec (nothing found by getattr).
    for name in (
        "example_ndim",
        "preserves_rank",
        "type_name",
        "inferred_fields",
        "layers_field",
        "config_ignores",
        "children",
        "child",
        "param_shapes",
        "init_params",
        "state_shapes",
        "init_state",
        "forward",
        "out_shape",
        "resolve",
        "omitted",
        "to_config",
        "from_fields",
        "adapt_state_dict",
    ):
        assert name in vars(fm.Spec), name


@pytest.mark.parametrize("name", ["forward", "to", "class", "append", "training", "", "a.b"])
def test_layer_names_torch_refuses_are_refused_when_the_spec_is_built(name):
    with pytest.raises(ValueError, match="invalid layer name"):
        fm.nn.Sequential({name: fm.nn.ReLU()})
    with pytest.raises(ValueError, match=r"config\[0\]: invalid layer name"):
        fm.from_config([{"type": "relu", "name": name}])


def test_a_spec_class_must_be_a_frozen_dataclass(scratch_registry):
    class NotADataclass(fm.Spec):
        pass

    @dataclasses.dataclass
    class NotFrozen(fm.Spec):
        size: int = 1

    for cls in (NotADataclass, NotFrozen):
        with pytest.raises(
            TypeError, match=f"{cls.__name__}: a spec class must be a frozen dataclass"
        ):
            cls()

    class Subclass(fm.nn.Linear):  # inherits the frozen dataclass: fine
        pass

    assert Subclass(2, 3).out_features == 3
