import json

import pytest

from mechgrok.config import Config, PRESETS, preset
from mechgrok.errors import ConfigError, MechgrokError


def test_paper_defaults_match_the_paper():
    cfg = preset("paper")
    assert (cfg.p, cfg.frac_train, cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp) == (113, 0.3, 128, 4, 32, 512)
    assert (cfg.lr, cfg.weight_decay, cfg.betas, cfg.warmup_steps) == (1e-3, 1.0, (0.9, 0.98), 10)
    assert (cfg.num_epochs, cfg.checkpoint_every, cfg.operation) == (40_000, 100, "add")
    assert cfg.n_train == 3830 and cfg.p**2 - cfg.n_train == 8939
    assert cfg.d_vocab == 114


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_json_round_trip(name):
    cfg = preset(name)
    again = Config.from_json(cfg.to_json())
    assert again == cfg
    assert json.loads(cfg.to_json())["betas"] == list(cfg.betas)


@pytest.mark.parametrize(
    "changes, fragment",
    [
        ({"p": 2}, "odd integer >= 3"),
        ({"p": 1}, "odd integer >= 3"),
        ({"p": 114}, "odd integer >= 3"),
        ({"frac_train": 0.0}, "strictly between 0 and 1"),
        ({"frac_train": 1.0}, "strictly between 0 and 1"),
        ({"frac_train": -0.2}, "strictly between 0 and 1"),
        ({"operation": "pow"}, "unknown operation"),
        ({"d_model": 0}, "positive integer"),
    ],
)
def test_invalid_configs_raise_one_line_errors(changes, fragment):
    with pytest.raises(ConfigError) as exc:
        Config(**changes)
    assert fragment in str(exc.value)
    assert "\n" not in str(exc.value)
    assert isinstance(exc.value, MechgrokError)


def test_unknown_preset_and_keys():
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("huge")
    with pytest.raises(ConfigError, match="unknown config keys: colour"):
        Config.from_dict({"colour": "red"}, source="x.json")
