import json

import pytest

from shipyard.errors import ConfigError
from shipyard.training.recipe import Recipe


def test_defaults_are_the_canonical_recipe() -> None:
    r = Recipe()
    assert (r.model, r.optimizer, r.lr, r.batch_size, r.epochs) == ("mlp", "adam", 0.001, 32, 10)
    assert r.label_smoothing == 0.0 and r.data == "mnist-sample"


@pytest.mark.parametrize(("key", "value"), [
    ("optimizer", "adagrad"), ("schedule", "linear"), ("device", "tpu"), ("batch_size", 0),
    ("epochs", -1), ("lr", 0.0), ("weight_decay", -0.1), ("label_smoothing", 1.0),
    ("val_fraction", 1.5), ("patience", 0), ("standardize", "zscore"), ("threads", 0),
])
def test_bad_values_name_the_key_and_value(key: str, value: object) -> None:
    with pytest.raises(ConfigError) as e:
        Recipe(**{key: value})
    assert repr(key) in str(e.value) and repr(value) in str(e.value)


def test_round_trip_and_overrides() -> None:
    r = Recipe(epochs=3, model_args={"hidden": [64]})
    d = json.loads(json.dumps(r.to_dict()))
    assert Recipe.from_dict(d) == r
    o = r.with_overrides(epochs=None, lr=0.01)
    assert o.epochs == 3 and o.lr == 0.01 and o.model_args == {"hidden": [64]}


def test_unknown_keys_are_refused() -> None:
    with pytest.raises(ConfigError, match="unknown keys"):
        Recipe.from_dict({"epochs": 1, "learning_rate": 0.1})
