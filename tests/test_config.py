"""Configuration: YAML + overrides, validated with messages that say what is valid."""
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from unimatch.config import METHODS, Config, load_config, parse_override, save_config
from unimatch.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def test_defaults_are_the_papers_settings():
    cfg = load_config()
    assert (cfg.method, cfg.conf_thresh, cfg.lr_multi, cfg.momentum, cfg.weight_decay) == \
        ("unimatch", 0.95, 10.0, 0.9, 1e-4)
    assert cfg.color_jitter == [0.5, 0.5, 0.5, 0.25]
    assert (cfg.color_jitter_p, cfg.grayscale_p, cfg.blur_p, cfg.cutmix_p) == (0.8, 0.2, 0.5, 0.5)
    assert cfg.blur_sigma == [0.1, 2.0] and cfg.cutmix_area == [0.02, 0.4]
    assert cfg.cutmix_ratio == pytest.approx([0.3, 1 / 0.3])
    assert cfg.criterion == {"name": "CELoss", "kwargs": {"ignore_index": 255}}


def test_unknown_key_error_lists_the_valid_keys():
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["conf_tresh=0.9"])
    message = str(err.value)
    assert "conf_tresh" in message
    for valid in ("conf_thresh", "lr", "criterion", "crop_size", "method"):
        assert valid in message


def test_unknown_key_in_yaml_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("nclass: 21\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="bad.yaml.*learning_rate.*Valid keys"):
        load_config(path)


def test_official_yaml_file_loads(tmp_path):
    """The keys of the official pascal/cityscapes files are accepted as they are."""
    path = tmp_path / "cityscapes.yaml"
    path.write_text(
        "dataset: cityscapes\nnclass: 19\ncrop_size: 769\ndata_root: Your/Cityscapes/Path\n"
        "epochs: 240\nbatch_size: 1\nlr: 0.005\nlr_multi: 1.0\n"
        "criterion:\n  name: OHEM\n  kwargs:\n    ignore_index: 255\n    thresh: 0.7\n    min_kept: 100000\n"
        "conf_thresh: 0.95\nbackbone: resnet50\nmulti_grid: True\n"
        "replace_stride_with_dilation: [False, True, True]\ndilations: [12, 24, 36]\n")
    cfg = load_config(path)
    assert cfg.nclass == 19 and cfg.crop_size == 769 and cfg.lr == 0.005 and cfg.lr_multi == 1.0
    assert cfg.criterion["kwargs"]["min_kept"] == 100000
    assert cfg.replace_stride_with_dilation == [False, True, True] and cfg.dilations == [12, 24, 36]
    assert cfg.multi_grid is True


def test_dotted_overrides_numbers_and_lists():
    cfg = load_config(overrides=["criterion.name=OHEM", "criterion.kwargs.min_kept=1000", "lr=0.01",
                                 "dilations=[12, 24, 36]", "method=fixmatch", "epochs=3"])
    assert cfg.criterion == {"name": "OHEM", "kwargs": {"ignore_index": 255, "min_kept": 1000}}
    assert cfg.lr == 0.01 and isinstance(cfg.lr, float)
    assert cfg.dilations == [12, 24, 36]
    assert cfg.method == "fixmatch" and cfg.epochs == 3


def test_override_applies_on_top_of_yaml_and_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 0.002\nepochs: 10\ncriterion:\n  name: OHEM\n  kwargs: {thresh: 0.7}\n")
    cfg = load_config(path, ["lr=0.01", "criterion.kwargs.min_kept=5"], epochs=4, batch_size=None)
    assert cfg.lr == 0.01 and cfg.epochs == 4 and cfg.batch_size == Config().batch_size
    assert cfg.criterion == {"name": "OHEM", "kwargs": {"thresh": 0.7, "min_kept": 5}}


def test_exponent_notation_is_a_float_for_float_keys(tmp_path):
    """PyYAML reads 1e-4 as a string (YAML 1.1 wants 1.0e-4); for a float key it is the number."""
    assert load_config(overrides=["lr=1e-4", "weight_decay=5E-4", "conf_thresh=9.5e-1"]).lr == 1e-4
    path = tmp_path / "exp.yaml"
    path.write_text("lr: 1e-3\nweight_decay: 1e-4\n")
    cfg = load_config(path)
    assert (cfg.lr, cfg.weight_decay) == (1e-3, 1e-4) and isinstance(cfg.lr, float)
    with pytest.raises(ConfigError, match="wrong type"):
        load_config(overrides=["lr=1e"])
    with pytest.raises(ConfigError, match="wrong type"):
        load_config(overrides=["seed=1e3"])  # an int key stays strict


def test_int_is_accepted_for_float_but_not_the_reverse():
    assert load_config(overrides=["lr=1"]).lr == 1.0
    with pytest.raises(ConfigError, match="crop_size.*wrong type"):
        load_config(overrides=["crop_size=32.5"])
    with pytest.raises(ConfigError, match="epochs.*wrong type"):
        load_config(overrides=["epochs=true"])
    with pytest.raises(ConfigError, match="mean.*wrong type"):
        load_config(overrides=["mean=0.5"])
    with pytest.raises(ConfigError, match="wrong type"):
        load_config(overrides=["method=3"])


@pytest.mark.parametrize("override, pattern", [
    ("lr", "key=value"),
    ("lr.x=1", "not a mapping"),
    ("nope.x=1", "unknown config key 'nope'"),
    ("method=mean_teacher", "method"),
    ("unsup_loss=focal", "unsup_loss"),
    ("conf_thresh=1.5", "conf_thresh"),
    ("epochs=0", "epochs"),
    ("amp=fp8", "amp"),
    ("eval_mode=sliding", "eval_mode.*sliding_window"),
    ("in_channels=4", "in_channels"),
    ("criterion=OHEM", "wrong type"),
])
def test_bad_values_raise_one_clear_error(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(overrides=[override])


def test_missing_file_and_non_mapping_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)


def test_parse_override_parses_yaml_values():
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    assert parse_override("x=0.5") == (["x"], 0.5)
    assert parse_override("x=OHEM") == (["x"], "OHEM")


@pytest.mark.parametrize("method, streams", [
    ("unimatch", (2, 1)), ("fixmatch", (1, 0)), ("uniperb", (1, 1)), ("dusperb", (2, 0)), ("supervised", (0, 0)),
])
def test_method_stream_defaults(method, streams):
    assert METHODS[method] == streams
    assert load_config(overrides=[f"method={method}"]).streams == streams


def test_stream_overrides_except_for_supervised():
    assert load_config(overrides=["strong_views=3"]).streams == (3, 1)
    assert load_config(overrides=["method=fixmatch", "fp_streams=2"]).streams == (1, 2)
    assert load_config(overrides=["method=supervised", "strong_views=2", "fp_streams=1"]).streams == (0, 0)
    with pytest.raises(ConfigError, match=">= 0"):
        load_config(overrides=["strong_views=-1"])


def test_task_schema_extends_the_config(tmp_path):
    @dataclass
    class TaskConfig(Config):
        slice_size: int = 256

    cfg = load_config(overrides=["slice_size=128"], schema=TaskConfig)
    assert isinstance(cfg, TaskConfig) and cfg.slice_size == 128
    with pytest.raises(ConfigError, match="slice_size"):
        load_config(overrides=["slice_sizes=1"], schema=TaskConfig)


def test_save_then_load_round_trip(tmp_path):
    cfg = load_config(overrides=["criterion.name=OHEM", "lr=0.02", "method=dusperb"])
    save_config(cfg, tmp_path / "config.yaml")
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["lr"] == 0.02
    again = load_config(tmp_path / "config.yaml")
    assert dataclasses.asdict(again) == dataclasses.asdict(cfg)


# ---- nested keys: criterion {name, kwargs} -------------------------------------------------
@pytest.mark.parametrize("overrides, pattern", [
    (["criterion.nme=OHEM"], r"^criterion: unknown key 'nme'\. Valid keys: name, kwargs$"),
    (["criterion.kwargs.ignore_indx=255"],
     r"^criterion\.kwargs: unknown key 'ignore_indx' for CELoss\. Valid keys: ignore_index$"),
    (["criterion.name=OHEM", "criterion.kwargs.threshh=0.7"],
     r"^criterion\.kwargs: unknown key 'threshh' for OHEM\. Valid keys: ignore_index, thresh, min_kept$"),
    (["criterion.name=OHEM", "criterion.kwargs.thresh=high"], r"thresh = 'high' has the wrong type"),
    (["criterion.name=OHEM", "criterion.kwargs.min_kept=0.5"], r"min_kept = 0\.5 has the wrong type"),
    (["criterion.name=Focal"], r"criterion\.name: 'Focal' is not one of CELoss, OHEM, CEDice"),
    (["criterion.kwargs=3"], r"criterion\.kwargs: 3 is not a mapping"),
])
def test_misspelt_nested_criterion_keys_are_refused_with_the_valid_ones(overrides, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(overrides=overrides)


def test_nested_criterion_typo_in_yaml_is_refused(tmp_path):
    path = tmp_path / "ohem.yaml"
    path.write_text("criterion:\n  name: OHEM\n  kwargs:\n    ignore_index: 255\n    threshh: 0.7\n")
    with pytest.raises(ConfigError, match="threshh.*Valid keys: ignore_index, thresh, min_kept"):
        load_config(path)


def test_valid_criterion_kwargs_are_each_losss_keyword_arguments():
    cfg = load_config(overrides=["criterion.name=ohem", "criterion.kwargs.thresh=1", "criterion.kwargs.min_kept=10"])
    assert cfg.criterion["kwargs"] == {"ignore_index": 255, "thresh": 1, "min_kept": 10}
    assert load_config(overrides=["criterion.name=CEDice"]).criterion["name"] == "CEDice"


def test_criterion_is_the_only_mapping_valued_entry_of_every_task_config():
    """Nested keys are validated for ``criterion``; a new mapping-valued entry needs the same."""
    from tasks.acdc.common import AcdcConfig
    from tasks.change_detection.common import CDConfig
    from tasks.natural.common import NaturalConfig

    for schema in (Config, AcdcConfig, CDConfig, NaturalConfig):
        mappings = [f.name for f in dataclasses.fields(schema) if f.type in (dict, "dict")]
        assert mappings == ["criterion"], schema.__name__


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*/*.yaml")), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_config_passes_the_nested_validation(path):
    from tasks.acdc.common import AcdcConfig
    from tasks.change_detection.common import CDConfig
    from tasks.natural.common import NaturalConfig

    schema = {"acdc": AcdcConfig, "change_detection": CDConfig, "natural": NaturalConfig}[path.parent.name]
    cfg = load_config(path, schema=schema)
    assert cfg.criterion["name"] in ("CELoss", "OHEM", "CEDice")


def test_training_differences_ignore_only_the_keys_that_do_not_shape_the_weights():
    from unimatch.config import NON_TRAINING_KEYS, training_differences

    cfg = load_config(None, method="unimatch", epochs=3)
    stored = cfg.to_dict()
    assert training_differences(stored, cfg) == {}
    assert training_differences(stored, load_config(None, method="unimatch", epochs=3, num_workers=7,
                                                    log_every=1, save_dir="elsewhere", threads=1)) == {}
    assert {"num_workers", "threads", "log_every", "save_dir"} <= NON_TRAINING_KEYS
    changed = load_config(None, ["conf_thresh=0.9", "criterion.name=OHEM"], method="supervised", epochs=3)
    assert training_differences(stored, changed) == {
        "method": ("unimatch", "supervised"), "conf_thresh": (0.95, 0.9),
        "criterion": ({"name": "CELoss", "kwargs": {"ignore_index": 255}},
                      {"name": "OHEM", "kwargs": {"ignore_index": 255}})}
    # a run saved before a key existed was trained with that key's default
    del stored["blur_p"]
    assert training_differences(stored, cfg) == {}
    assert training_differences(stored, load_config(None, ["blur_p=0.0"], epochs=3)) == {"blur_p": (0.5, 0.0)}
