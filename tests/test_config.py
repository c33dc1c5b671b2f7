"""Configuration: YAML + overrides, validated with messages that say what is valid."""
import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from unimatch.config import METHODS, Config, load_config, parse_override, save_config
from unimatch.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def test_defaults_are_the_papers_settings():
    cfg = load_config()
    assert (cfg.method, cfg.conf_thresh, cfg.lr_multi, cfg.momentum, cfg.method_setting("weight_decay")) == \
        ("unimatch", 0.95, 10.0, 0.9, 1e-4)
    assert [cfg.method_setting(key) for key in ("optimizer", "teacher", "ema", "comp_drop", "cutmix_partner")] == \
        ["sgd", "student", False, False, "loader"]
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


# ---- syntax errors and empty files --------------------------------------------------------
def test_yaml_syntax_error_is_one_line_with_file_line_and_column(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("nclass: 21\nlr: 0.01\nepochs: 3: 4\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value) == f"{path}:3:10: invalid YAML (mapping values are not allowed here)"


def test_undecodable_config_file_is_a_config_error(tmp_path):
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"lr: \xff\xfe\x00\x01")
    with pytest.raises(ConfigError, match=r"binary\.yaml: invalid YAML \(") as error:
        load_config(path)
    assert "\n" not in str(error.value)


def test_yaml_error_in_an_override_names_the_override():
    with pytest.raises(ConfigError) as error:
        load_config(overrides=["dilations=[1,2"])
    assert str(error.value) == "override 'dilations=[1,2': invalid YAML (expected ',' or ']', but got '<stream end>')"


@pytest.mark.parametrize("text", ["", "\n\n", "# all of it commented out\n# lr: 0.01\n", "{}\n"])
def test_empty_config_file_is_refused_naming_the_tasks_default(tmp_path, text):
    """An empty file would train with the dataclass defaults (ResNet-101, lr 0.001), not the task's config."""
    from tasks.natural.common import NaturalConfig

    path = tmp_path / "empty.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_config(path, schema=NaturalConfig)
    default = CONFIG_DIR / "natural" / "synthetic.yaml"
    assert str(error.value) == (f"{path} is empty (no config keys: nothing, comments or {{}}): give a config file with "
                                f"keys, or leave out --config to use the task's default {default}")


# ---- the range of every numeric key -------------------------------------------------------
def _task_schemas():
    from tasks.acdc.common import AcdcConfig
    from tasks.change_detection.common import CDConfig
    from tasks.natural.common import NaturalConfig

    return {"core": Config, "natural": NaturalConfig, "change_detection": CDConfig, "acdc": AcdcConfig}


# (schema, key, a value outside the key's range); every numeric key of every task config is here
OUT_OF_RANGE = [
    ("core", "nclass", "0"), ("core", "crop_size", "0"), ("core", "in_channels", "0"), ("core", "mean", "[]"),
    ("core", "std", "[0.2, 0.0, 0.2]"), ("core", "width", "0"), ("core", "reduce_channels", "0"),
    ("core", "decoder_channels", "-8"), ("core", "feature_channels", "[4, 8, 16, 32]"),
    ("core", "dilations", "[0, 12, 18]"), ("core", "conf_thresh", "1.5"), ("core", "strong_views", "-1"),
    ("core", "fp_streams", "-1"), ("core", "sup_weight", "-1"), ("core", "strong_weight", "-0.5"),
    ("core", "fp_weight", "-1"), ("core", "loss_divisor", "0"), ("core", "sup_warmup_epochs", "-1"),
    ("core", "dist_align_momentum", "1"), ("core", "class_thresh_momentum", "1"), ("core", "ema_ratio", "1"),
    ("core", "color_jitter_p", "1.5"),
    ("core", "color_jitter", "[0.5, 0.5, 0.5, -0.1]"), ("core", "grayscale_p", "-0.1"), ("core", "blur_p", "2"),
    ("core", "blur_sigma", "[2.0, 0.1]"), ("core", "cutmix_p", "-1"), ("core", "cutmix_area", "[0.0, 0.4]"),
    ("core", "cutmix_ratio", "[0, 3]"), ("core", "channel_group_size", "0"), ("core", "epochs", "0"),
    ("core", "batch_size", "0"), ("core", "lr", "-1"), ("core", "lr_multi", "0"), ("core", "momentum", "-1"),
    ("core", "weight_decay", "-0.0001"), ("core", "threads", "0"), ("core", "seed", "-1"),
    ("core", "eval_every", "0"), ("core", "num_workers", "-1"), ("core", "log_every", "-1"),
    ("core", "eval_batch_size", "0"), ("core", "eval_window", "0"),
    ("natural", "synthetic_images", "2"), ("natural", "synthetic_labeled_fraction", "1.5"),
    ("natural", "synthetic_class_hue_probability", "-0.1"), ("natural", "synthetic_class_hue_spread", "-1"),
    ("change_detection", "bands", "[0, 1, 2]"), ("change_detection", "stretch", "0"),
    ("change_detection", "class_values", "[-1, 255]"), ("change_detection", "scale_range", "[1.2, 0.8]"),
    ("change_detection", "synthetic_no_change_share", "1.5"),
    ("change_detection", "synthetic_change_rate", "[0.8, 0.2]"),
    ("change_detection", "synthetic_building_side", "[0, 20]"), ("change_detection", "predict_window", "0"),
    ("change_detection", "scene_windows_per_epoch", "0"), ("change_detection", "scene_val_share", "1.0"),
    ("change_detection", "label_ignore", "-1"),
    ("acdc", "cases", "0"), ("acdc", "slice_size", "0"), ("acdc", "image_order", "6"),
    ("acdc", "h5_spacing", "[1.0, 0.0, 1.0]"),
    ("acdc", "synthetic_patients", "0"), ("acdc", "synthetic_size", "0"), ("acdc", "synthetic_slices", "[0, 3]"),
    ("acdc", "synthetic_seed", "-1"), ("acdc", "ct_window", "[1000, -1000]"),
]


@pytest.mark.parametrize("task, key, value", OUT_OF_RANGE, ids=[f"{t}-{k}" for t, k, _ in OUT_OF_RANGE])
def test_every_numeric_key_outside_its_range_is_one_error_naming_the_key(task, key, value):
    with pytest.raises(ConfigError, match=rf"^{key}: (must be .*, got |{re.escape(value)} must be)"):
        load_config(overrides=[f"{key}={value}"], schema=_task_schemas()[task])


@pytest.mark.parametrize("override, message", [
    ("lr=-1", "lr: must be > 0, got -1"),
    ("momentum=-1", "momentum: must be in [0, 1), got -1"),
    ("num_workers=-1", "num_workers: must be >= 0, got -1"),
    ("threads=0", "threads: must be >= 1 or null, got 0"),
    ("lr=.inf", "lr: must be a finite number > 0, got inf"),
    ("mean=[.nan, 0.5, 0.5]", "mean: must be one or more finite numbers, got [nan, 0.5, 0.5]"),
    ("dilations=[6, 12.5, 18]", "dilations: must be three whole numbers >= 1, got [6, 12.5, 18]"),
    ("dilations=[6, 12]", "dilations: must be three whole numbers >= 1, got [6, 12]"),
    ("color_jitter=[0.5, 0.5, x, 0.25]", "color_jitter: must be four finite numbers >= 0, got [0.5, 0.5, 'x', 0.25]"),
    ("cutmix_area=[0.4, 0.02]",
     "cutmix_area: must be two finite numbers in (0, 1], the first <= the second, got [0.4, 0.02]"),
])
def test_range_messages_say_what_is_valid_and_what_was_given(override, message):
    with pytest.raises(ConfigError) as error:
        load_config(overrides=[override])
    assert str(error.value) == message


def test_the_ends_of_each_range_that_mean_something_still_load():
    """0 workers loads in the training process, log_every 0 turns periodic logging off, null
    threads keeps torch's default; none of them may be refused."""
    cfg = load_config(overrides=["num_workers=0", "log_every=0", "threads=null", "momentum=0", "weight_decay=0",
                                 "sup_warmup_epochs=0", "strong_weight=null", "conf_thresh=1", "cutmix_p=0",
                                 "cutmix_area=[1, 1]", "blur_sigma=[1.0, 1.0]", "dist_align_momentum=0", "seed=0",
                                 "strong_views=0", "fp_weight=0", "color_jitter=[0, 0, 0, 0]"])
    assert (cfg.num_workers, cfg.log_every, cfg.threads, cfg.momentum) == (0, 0, None, 0.0)


# numeric keys that may also hold words or pairs, checked by a function of their own (in validate)
OWN_CHECKS = {"CDConfig": {"stretch"}}


def _numeric_fields(schema) -> set[str]:
    """Fields typed int or float (alone, optional or in a union), lists whose default holds numbers,
    and ``feature_channels`` (a list of ints, null by default)."""
    import typing

    hints = typing.get_type_hints(schema)
    numeric = {"feature_channels"}
    for f in dataclasses.fields(schema):
        types = typing.get_args(hints[f.name]) or (hints[f.name],)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if int in types or float in types or (isinstance(default, list) and default and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in default)):
            numeric.add(f.name)
    return numeric


def test_every_numeric_key_of_every_task_config_has_a_range(monkeypatch):
    """A new numeric key must get a range in its config's validate() (Config.check_bounds) and a
    case in OUT_OF_RANGE; without them a bad value reaches torch as a traceback."""
    checked = {}
    check_bounds = Config.check_bounds

    def recording(self, bounds):
        checked.setdefault(type(self).__name__, set()).update(bounds)
        return check_bounds(self, bounds)

    monkeypatch.setattr(Config, "check_bounds", recording)
    tested = {}
    for task, key, _ in OUT_OF_RANGE:
        tested.setdefault(task, set()).add(key)
    for task, schema in _task_schemas().items():
        schema().validate()
        numeric = _numeric_fields(schema)
        own_check = OWN_CHECKS.get(schema.__name__, set())
        assert numeric - checked[schema.__name__] - own_check == set(), f"{schema.__name__}: numeric keys without a range"
        untested = numeric - tested["core"] - tested.get(task, set())
        assert untested == set(), f"{schema.__name__}: keys not in OUT_OF_RANGE"


class Lines(list):
    """Messages of the ``unimatch`` logger, whatever its handlers and propagation."""

    def __enter__(self):
        import logging
        self.handler = logging.Handler()
        self.handler.emit = lambda record: self.append(record.getMessage())
        logging.getLogger("unimatch").addHandler(self.handler)
        return self

    def __exit__(self, *exc):
        import logging
        logging.getLogger("unimatch").removeHandler(self.handler)


@pytest.mark.parametrize("task, warmup, epochs", [("natural", 4, 30), ("change_detection", 3, 8)])
def test_a_short_schedule_on_the_command_line_leaves_its_last_epoch_to_the_method(task, warmup, epochs):
    """--epochs 1 with the demos' warm-up in epochs is not refused: the warm-up shrinks to epochs - 1;
    the demos at their own length, or any schedule longer than the warm-up, keep it as written."""
    from tasks.change_detection.common import CDConfig
    from tasks.natural.common import NaturalConfig
    from unimatch.paths import config_path

    schema = {"natural": NaturalConfig, "change_detection": CDConfig}[task]
    path = config_path(task, "synthetic.yaml")
    with Lines() as lines:
        assert load_config(path, schema=schema).sup_warmup_epochs == warmup
        assert load_config(path, schema=schema).epochs == epochs
        for longer in (epochs, warmup + 1):
            assert load_config(path, schema=schema, epochs=longer).sup_warmup_epochs == warmup
            assert load_config(path, [f"epochs={longer}"], schema=schema).sup_warmup_epochs == warmup
    assert lines == []
    with Lines() as lines:
        cfg = load_config(path, schema=schema, epochs=1)
    assert (cfg.epochs, cfg.sup_warmup_epochs) == (1, 0)
    assert lines == [f"sup_warmup_epochs {warmup} (from the config) is not less than the 1 epoch(s) given on the "
                     f"command line: the warm-up is 0 epoch(s), so the last one trains the method"]
    assert load_config(path, ["epochs=2"], schema=schema).sup_warmup_epochs == 1
    assert load_config(path, schema=schema, epochs=warmup).sup_warmup_epochs == warmup - 1
    # both on the command line: taken as given, and a warm-up longer than the schedule is still refused
    assert load_config(path, [f"sup_warmup_epochs={warmup}"], schema=schema, epochs=warmup).sup_warmup_epochs \
        == warmup
    with pytest.raises(ConfigError, match=rf"sup_warmup_epochs: must lie in \[0, epochs=1\], got {warmup}"):
        load_config(path, [f"sup_warmup_epochs={warmup}"], schema=schema, epochs=1)


def test_a_warmup_longer_than_the_schedule_of_one_file_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 2\nsup_warmup_epochs: 3\n")
    with pytest.raises(ConfigError, match=r"sup_warmup_epochs: must lie in \[0, epochs=2\], got 3"):
        load_config(path)


# ---- one meaning per key -----------------------------------------------------------------------
def _shipped_configs():
    return sorted(CONFIG_DIR.glob("*/*.yaml"))


def _shipped_schema(path):
    return _task_schemas()[path.parent.name]


@pytest.mark.parametrize("path", _shipped_configs(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_the_windows_and_the_slice_size_default_to_crop_size_as_before(path):
    """eval_window, predict_window and ACDC's slice_size are crop_size unless set: the official
    configs (which know only crop_size) evaluate, predict and resize as they did."""
    cfg = load_config(path, schema=_shipped_schema(path))
    sizes = {name: getattr(cfg, name) for name in ("effective_eval_window", "effective_predict_window",
                                                   "effective_slice_size") if hasattr(cfg, name)}
    assert sizes and set(sizes.values()) == {cfg.crop_size}
    assert load_config(overrides=["crop_size=97"]).effective_eval_window == 97
    assert load_config(overrides=["crop_size=97", "eval_window=512"]).effective_eval_window == 512


def test_the_evaluation_window_is_eval_window_and_the_training_crop_stays_crop_size(monkeypatch):
    import tasks.natural.common as natural
    import unimatch.task2d as task2d

    seen = {}

    def evaluate_segmentation(predictor, loader, nclass, mode, window, on_prediction=None):
        seen["window"] = window
        raise StopIteration

    monkeypatch.setattr(task2d, "evaluate_segmentation", evaluate_segmentation)
    cfg = load_config(overrides=["crop_size=64", "eval_window=96", "eval_mode=sliding_window"],
                      schema=natural.NaturalConfig)
    with pytest.raises(StopIteration):
        natural.TASK.evaluate_model(None, cfg, loader=None)
    assert seen["window"] == 96 and cfg.crop_size == 64


def test_a_scene_is_predicted_in_predict_window_and_evaluated_in_eval_window(monkeypatch, tmp_path):
    import argparse

    import tasks.change_detection.common as cd
    import unimatch.task2d as task2d

    seen = {}
    monkeypatch.setattr(cd, "predict_scene", lambda *a, window, overlap, **k: seen.update(window=window,
                                                                                           overlap=overlap))

    def evaluate_segmentation(predictor, loader, nclass, mode, window, on_prediction=None):
        seen["eval"] = window
        raise StopIteration

    monkeypatch.setattr(task2d, "evaluate_segmentation", evaluate_segmentation)
    cfg = load_config(overrides=["crop_size=96", "predict_window=256", "eval_window=128"], schema=cd.CDConfig)
    args = argparse.Namespace(window=None, overlap=None, before=tmp_path / "a.tif", after=tmp_path / "b.tif",
                              out=tmp_path / "c.tif", probability=False, overwrite=False, no_progress=True,
                              batch_size=1)
    cd.TASK.predict(None, cfg, args, None)
    assert seen == {"window": 256, "overlap": 64}
    with pytest.raises(StopIteration):
        cd.TASK.evaluate_model(None, cfg, loader=None)
    assert seen["eval"] == 128


def test_acdc_slices_are_resized_to_slice_size_else_to_the_official_crop_size(monkeypatch):
    import tasks.acdc.common as acdc

    sizes = []
    monkeypatch.setattr(acdc, "build_acdc_datasets", lambda *a, slice_size, **k: sizes.append(slice_size))
    monkeypatch.setattr(acdc, "_loaded", {})
    acdc.load_datasets(load_config(overrides=["crop_size=64", "cases=1"], schema=acdc.AcdcConfig))
    acdc.load_datasets(load_config(overrides=["crop_size=64", "slice_size=128", "cases=1"], schema=acdc.AcdcConfig))
    assert sizes == [64, 128]
    with pytest.raises(ConfigError, match="^slice_size: 72 must be a multiple of 16"):
        load_config(overrides=["slice_size=72"], schema=acdc.AcdcConfig)
    # the rule is the UNet's: a DPT resizes any side to a multiple of its 14-pixel patches
    dpt = ["slice_size=72", "model=dpt", "backbone=vit_tiny", "feature_channels=null"]
    assert load_config(overrides=dpt, schema=acdc.AcdcConfig).effective_slice_size == 72


def test_change_detection_takes_the_siamese_models_and_no_other():
    from tasks.change_detection.common import CDConfig

    for model, backbone in (("siamese_dpt", "vit_tiny"), ("siamese_pspnet", "resnet50")):
        assert load_config(overrides=[f"model={model}", f"backbone={backbone}"], schema=CDConfig).model == model
    with pytest.raises(ConfigError, match="^model: 'dpt'; change detection takes siamese_deeplabv3plus, "
                                          "siamese_pspnet, siamese_dpt$"):
        load_config(overrides=["model=dpt", "backbone=vit_tiny"], schema=CDConfig)


NEW_KEYS = ("eval_window", "class_thresh_momentum", "predict_window", "slice_size", "cutmix_partner", "teacher",
            "ema", "ema_ratio", "comp_drop", "optimizer")


@pytest.mark.parametrize("path", _shipped_configs(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_a_run_saved_before_the_new_keys_resumes(path):
    """A config.yaml written before eval_window, class_thresh_momentum, predict_window and
    slice_size existed has no differences from the same config loaded now. A config that sets one of
    the new keys (teacher: student in the remote-sensing V2 files) cannot predate it: it keeps it."""
    from unimatch.config import training_differences

    cfg = load_config(path, schema=_shipped_schema(path))
    defaults = _shipped_schema(path)().to_dict()
    stored = {k: v for k, v in cfg.to_dict().items() if k not in NEW_KEYS or v != defaults[k]}
    assert len(stored) < len(cfg.to_dict())
    assert training_differences(stored, cfg) == {}


def test_the_method_settings_are_compared_as_resolved():
    """A run saved before the method settings existed stored weight_decay 0.0001 and no teacher,
    optimizer ... keys: it trained as null does under SGD. The resolved values decide."""
    from unimatch.config import training_differences

    now = load_config(overrides=["partner_from_batch=true"])
    stored = {k: v for k, v in now.to_dict().items() if k not in NEW_KEYS}
    stored["weight_decay"] = 0.0001
    assert training_differences(stored, now) == {}
    assert training_differences(stored, load_config(overrides=["cutmix_partner=previous"])) == {}
    assert training_differences(stored, load_config()) == {"partner_from_batch": (True, False),
                                                           "cutmix_partner": ("previous", "loader")}
    v2 = load_config(overrides=["method=unimatch_v2"]).to_dict()
    assert training_differences(v2, load_config(overrides=["method=unimatch_v2", "weight_decay=0.01"])) == {}
    assert training_differences(v2, load_config(overrides=["method=unimatch_v2", "teacher=student"])) == {
        "teacher": ("ema", "student")}


def test_class_thresh_momentum_of_a_run_saved_before_it_existed_is_its_dist_align_momentum():
    from unimatch.config import training_differences

    stored = load_config(overrides=["class_thresh=true", "dist_align_momentum=0.9"]).to_dict()
    del stored["class_thresh_momentum"]
    now = load_config(overrides=["class_thresh=true", "dist_align_momentum=0.9"])
    assert training_differences(stored, now) == {"class_thresh_momentum": (0.9, 0.99)}
    same = load_config(overrides=["class_thresh=true", "dist_align_momentum=0.9", "class_thresh_momentum=0.9"])
    assert training_differences(stored, same) == {}


def test_predict_window_does_not_shape_the_weights():
    from tasks.change_detection.common import CDConfig
    from unimatch.config import training_differences

    stored = load_config(schema=CDConfig).to_dict()
    assert training_differences(stored, load_config(overrides=["predict_window=512"], schema=CDConfig)) == {}


# ---- keys nothing reads ------------------------------------------------------------------------
@pytest.mark.parametrize("task, overrides, message", [
    ("acdc", ["backbone=resnet50"], "backbone: 'resnet50' is not read: model unet does not use it (used by "
                                    "deeplabv3plus, siamese_deeplabv3plus, siamese_pspnet, dpt, siamese_dpt); "
                                    "leave it out, or at its default 'resnet101'"),
    ("acdc", ["pretrained=pretrained/resnet50.pth"], "^pretrained: .* model unet does not use it"),
    ("acdc", ["dilations=[12, 24, 36]"], "^dilations: .* model unet does not use it"),
    ("acdc", ["replace_stride_with_dilation=[false, true, true]"],
     "^replace_stride_with_dilation: .* model unet does not use it"),
    ("natural", ["feature_channels=[8, 16, 32, 64, 128]"],
     r"^feature_channels: \[8, 16, 32, 64, 128\] is not read: model deeplabv3plus does not use it \(used by unet\)"),
    ("change_detection", ["model=siamese_pspnet", "dilations=[2, 4, 6]"],
     "^dilations: .* model siamese_pspnet does not use it"),
    ("natural", ["model=dpt", "backbone=dinov2_small", "width=32"], r"^width: 32 is not read: model dpt does not use it"),
    ("natural", ["lock_backbone=true"],
     r"^lock_backbone: True is not read: model deeplabv3plus does not use it \(used by dpt, siamese_dpt\)"),
    ("natural", ["eval_batch_size=4"], "^eval_batch_size: 4 is not read: natural images are evaluated one at a time"),
    ("acdc", ["eval_batch_size=4"], "^eval_batch_size: 4 is not read: ACDC evaluates whole volumes"),
    ("acdc", ["eval_mode=sliding_window"], "^eval_mode: 'sliding_window' is not read: ACDC evaluates whole volumes"),
    ("acdc", ["eval_window=128"], "^eval_window: 128 is not read"),
])
def test_a_key_the_model_or_task_does_not_read_is_refused_in_one_line(task, overrides, message):
    with pytest.raises(ConfigError) as error:
        load_config(overrides=overrides, schema=_task_schemas()[task])
    text = str(error.value)
    assert "\n" not in text
    assert text == message if not message.startswith("^") else re.match(message, text), text


def test_an_unread_key_in_a_yaml_file_is_refused_and_one_at_its_default_is_accepted(tmp_path):
    from tasks.acdc.common import AcdcConfig

    official = tmp_path / "acdc.yaml"   # the official medical config, plus the default backbone
    official.write_text("dataset: acdc\nnclass: 4\ncrop_size: 256\ndata_root: Your/ACDC/Path\nepochs: 300\n"
                        "batch_size: 12\nlr: 0.01\nconf_thresh: 0.95\nbackbone: resnet101\n")
    assert load_config(official, schema=AcdcConfig).effective_slice_size == 256
    official.write_text(official.read_text().replace("resnet101", "resnet50"))
    with pytest.raises(ConfigError, match="^backbone: 'resnet50' is not read: model unet"):
        load_config(official, schema=AcdcConfig)


def test_a_key_a_model_is_said_not_to_read_leaves_the_built_model_as_it_is():
    """The registry's ``reads`` is the truth: changing any other model key builds the same weights."""
    import torch

    from unimatch.models import MODEL_KEYS, MODELS, build_model, model_keys_not_read

    other_values = {"backbone": "resnet18", "pretrained": "no/such/file.pth", "deep_stem": False, "width": 4,
                    "multi_grid": True, "replace_stride_with_dilation": [False, True, True], "dilations": [2, 4, 6],
                    "reduce_channels": 4, "decoder_channels": 8, "feature_channels": [2, 4, 4, 8, 8],
                    "lock_backbone": True}
    assert set(other_values) == set(MODEL_KEYS)
    tiny = {"deeplabv3plus": dict(backbone="tiny", width=8, reduce_channels=8, decoder_channels=16),
            "siamese_deeplabv3plus": dict(backbone="tiny", width=8, reduce_channels=8, decoder_channels=16,
                                          in_channels=6),
            "siamese_pspnet": dict(backbone="tiny", width=8, in_channels=6),
            "unet": dict(feature_channels=[4, 8, 8, 16, 16], in_channels=1, mean=[0.0], std=[1.0]),
            "dpt": dict(backbone="vit_tiny"), "siamese_dpt": dict(backbone="vit_tiny", in_channels=6)}
    for name in MODELS:
        base = Config(model=name, nclass=2, **tiny[name])
        torch.manual_seed(0)
        expected = build_model(base).state_dict()
        for key in model_keys_not_read(name):
            torch.manual_seed(0)
            got = build_model(dataclasses.replace(base, **{key: other_values[key]})).state_dict()
            assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got), (name, key)


def test_a_checkpoints_stored_key_its_run_never_read_is_left_out_when_evaluating(tmp_path):
    """A run of an earlier version could store eval_batch_size: 4 for natural images (never read);
    evaluating its checkpoint must not stop on it."""
    import torch

    from tasks.natural.common import TASK
    from unimatch.cli import inference_config

    stored = load_config(schema=TASK.config_class).to_dict()
    stored["eval_batch_size"] = 4
    torch.save({"config": stored}, tmp_path / "best.pth")
    cfg, _ = inference_config(TASK, None, tmp_path / "best.pth")
    assert cfg.eval_batch_size == 1 and cfg.model == stored["model"]


# ---- sections ----------------------------------------------------------------------------------
def test_every_key_of_every_task_config_is_in_exactly_one_section():
    from unimatch.config import SECTIONS

    for schema in _task_schemas().values():
        fields = [f.name for f in dataclasses.fields(schema)]
        listed = [key for klass in schema.__mro__ for keys in vars(klass).get("section_keys", {}).values()
                  for key in keys]
        assert sorted(listed) == sorted(fields), schema.__name__
        assert set(schema.key_sections().values()) <= set(SECTIONS)
        assert not set(SECTIONS) & set(fields), "a section named like a key would hide that key"


def _grouped(flat: dict, schema) -> dict:
    home = schema.key_sections()
    grouped: dict = {}
    for key, value in flat.items():
        grouped.setdefault(home[key], {})[key] = value
    return grouped


@pytest.mark.parametrize("path", _shipped_configs(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_a_file_in_sections_loads_as_the_same_flat_config(path, tmp_path):
    from unimatch.config import flatten_sections

    schema = _shipped_schema(path)
    flat = flatten_sections(schema, yaml.safe_load(path.read_text()), str(path))
    (tmp_path / "flat.yaml").write_text(yaml.safe_dump(flat))
    (tmp_path / "grouped.yaml").write_text(yaml.safe_dump(_grouped(flat, schema)))
    expected = load_config(tmp_path / "flat.yaml", schema=schema)
    assert load_config(tmp_path / "grouped.yaml", schema=schema) == expected == load_config(path, schema=schema)


def test_sections_and_flat_keys_mix_and_overrides_may_name_the_section(tmp_path):
    path = tmp_path / "mixed.yaml"
    path.write_text("nclass: 6\nnetwork:\n  backbone: resnet18\n  dilations: [2, 4, 6]\n"
                    "training:\n  lr: 0.04\n  criterion: {name: OHEM, kwargs: {ignore_index: 255}}\n")
    cfg = load_config(path, ["network.width=16", "training.criterion.kwargs.thresh=0.6", "lr=0.02"])
    assert (cfg.nclass, cfg.backbone, cfg.dilations, cfg.width, cfg.lr) == (6, "resnet18", [2, 4, 6], 16, 0.02)
    assert cfg.criterion == {"name": "OHEM", "kwargs": {"ignore_index": 255, "thresh": 0.6}}


@pytest.mark.parametrize("text, message", [
    ("training:\n  backbone: resnet50\n", r"bad.yaml: backbone belongs in section network, not training$"),
    ("network:\n  backbon: resnet50\n", r"bad.yaml: unknown config key network.backbon. Valid keys in network: model, "),
    ("network: resnet50\n", r"bad.yaml: section network must be a mapping of its keys \(model, backbone, "),
    ("lr: 0.1\ntraining:\n  lr: 0.2\n", r"bad.yaml: lr is given twice \(again as training.lr\)$"),
])
def test_a_key_in_the_wrong_section_is_one_error_naming_its_section(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert "\n" not in str(error.value) and re.search(message, str(error.value)), str(error.value)


def test_an_override_under_the_wrong_section_names_its_section():
    with pytest.raises(ConfigError, match=r"^override 'training.backbone=resnet50': backbone belongs in section "
                                          r"network, not training$"):
        load_config(overrides=["training.backbone=resnet50"])
