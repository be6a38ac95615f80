"""Config loading, overrides and validation: clear errors before anything compiles."""

import json

import pytest

from tests.foundation_configs import tiny_lm
from train import config as config_lib
from train.__main__ import main
from train.config import ConfigError
from train.validate import validate


def test_unknown_key_names_close_match():
  c = tiny_lm()
  c.lock()
  with pytest.raises(ConfigError, match=r"optim\.lrr.*Did you mean optim\.lr"):
    config_lib.apply_overrides(c, ["--config.optim.lrr=1e-3"])


def test_wrong_type_names_key_and_expected_type():
  c = tiny_lm()
  c.lock()
  with pytest.raises(ConfigError, match=r"train\.steps.*expects int"):
    config_lib.apply_overrides(c, ["--config.train.steps=many"])


def test_overrides_keep_types_and_accept_space_form():
  c = tiny_lm()
  c.lock()
  config_lib.apply_overrides(c, ["--config.optim.lr=0.5", "--config.train.steps", "7",
                                 "--config.train.progress=true", "--config.model.blocks=(attention, mlp) * 3"])
  assert c.optim.lr == 0.5 and c.train.steps == 7 and c.train.progress is True
  assert c.model.blocks == "(attention, mlp) * 3"


@pytest.mark.parametrize("key,value,match", [
  ("model.blocks", "(atention, swiglu) * 2", r"unknown mixer 'atention'.*attention"),
  ("model.blocks", "(attention swiglu)", r"bad block pattern"),
  ("model.norm", "rmsnrom", r"unknown norm 'rmsnrom'.*rmsnorm"),
  ("data.name", "mqra", r"unknown data source 'mqra'.*mqar"),
  ("optim.schedule", "linear", r"optim.schedule='linear'"),
  ("data.batch_size", "6", r"data.batch_size=6 must be divisible"),
  ("mesh.shape.tensor", "3", r"config.mesh.shape"),
  ("model.vocab_size", "32", r"model.vocab_size=32 < data.vocab_size=64"),
  ("data.read_threads", "-2", r"data.read_threads must be -1 \(auto\)"),
])
def test_validation_errors(key, value, match):
  c = tiny_lm()
  c.lock()
  config_lib.apply_overrides(c, [f"--config.{key}={value}"])
  with pytest.raises(ConfigError, match=match):
    validate(c)


def test_text_vocab_must_hold_bytes():
  c = tiny_lm("text")
  c.model.vocab_size = 200
  with pytest.raises(ConfigError, match=r"model.vocab_size=200 is smaller than the tokenizer's vocabulary \(256\)"):
    validate(c)


def test_unknown_layer_option_is_caught():
  c = tiny_lm()
  c.model.options.swa = dict(layer="attention", windw=8)
  with pytest.raises(ConfigError, match=r"no option 'windw'.*window"):
    validate(c)


def test_cli_reports_config_error_and_exit_code(tmp_path, capsys):
  code = main(["--config", "experiments/quickstart.py:mqar", "--workdir", str(tmp_path),
               "--config.optim.warmup_stepz=3"])
  assert code == 2
  err = capsys.readouterr().err
  assert "warmup_stepz" in err and "optim.warmup_steps" in err
  assert not (tmp_path / "checkpoints").exists()


def test_config_json_round_trip(tmp_path):
  c = tiny_lm()
  config_lib.save(c, str(tmp_path))
  again = config_lib.load(str(tmp_path / "config.json"))
  assert json.loads(again.to_json()) == json.loads(c.to_json())
  validate(again)


def test_experiment_arg_parsing():
  from experiments import common

  a = common.parse_arg("local,size=1.3b", size="340m", local=False)
  assert a.local is True and a.size == "1.3b"
  with pytest.raises(ValueError, match="unknown experiment argument 'sise'"):
    common.parse_arg("sise=1b", size="340m", local=False)
