"""Tests of prune schedules: spacings, presets, config parsing and the shipped conf/prune files."""

from pathlib import Path

import pytest
from _pruning_fields import TimeMLP
from omegaconf import OmegaConf

from sparse_cnf.pruning import PAPER_SCHEDULES, PruneConfig, PruneSchedule, count_parameters, prune_unstructured

CONF = Path(__file__).resolve().parents[1] / "conf" / "prune"


def test_geometric_known_values():
    schedule = PruneSchedule.geometric(0.80, 0.20, 20)

    assert len(schedule) == 20
    assert schedule.ratios[0] == pytest.approx(0.20, abs=1e-12)
    assert schedule.ratios[1] == pytest.approx(1 - 0.8 * 0.25 ** (1 / 19), abs=1e-12)
    assert schedule.ratios[-1] == pytest.approx(0.80, abs=1e-12)


def test_linear_known_values():
    schedule = PruneSchedule.linear(0.18, 0.02, 9)

    assert schedule.ratios == (0.82, 0.84, 0.86, 0.88, 0.9, 0.92, 0.94, 0.96, 0.98)


def test_toy_preset_percentages():
    percent = [round(100 * r, 1) for r in PAPER_SCHEDULES["toy"].ratios]

    assert len(percent) == 29
    assert percent[:3] == [20.0, 25.6, 30.9]
    assert percent[-1] == 98.0


@pytest.mark.parametrize(
    ("name", "rounds", "first", "last"),
    [("power_gas_bsds", 8, 0.30, 0.90), ("hepmass_mnist", 12, 0.20, 0.95), ("miniboone", 16, 0.20, 0.99)],
)
def test_presets_ends(name, rounds, first, last):
    schedule = PruneSchedule.preset(name)

    assert len(schedule) == rounds
    assert schedule.ratios[0] == pytest.approx(first, abs=1e-12)
    assert schedule.ratios[-1] == pytest.approx(last, abs=1e-12)


def test_keep_ratios_complement():
    assert PruneSchedule((0.2, 0.5)).keep_ratios == (0.8, 0.5)


def test_concat_joins():
    schedule = PruneSchedule.concat([PruneSchedule((0.1,)), PruneSchedule((0.3, 0.4))])

    assert schedule.ratios == (0.1, 0.3, 0.4)


def test_schedule_rejects_decrease():
    with pytest.raises(ValueError, match=r"increase strictly .* got 0.3 after 0.5"):
        PruneSchedule((0.5, 0.3))


@pytest.mark.parametrize("ratio", [1.0, -0.2, True, "0.5"])
def test_schedule_rejects_ratio(ratio):
    with pytest.raises(ValueError, match=r"in \[0, 1\) .* got"):
        PruneSchedule((ratio,))


def test_geometric_rejects_rising_keep():
    with pytest.raises(ValueError, match=r"start=0.2, stop=0.8. Swap them"):
        PruneSchedule.geometric(0.2, 0.8, 3)


def test_geometric_rejects_keep_zero():
    with pytest.raises(ValueError, match=r"`stop` must be a keep ratio in \(0, 1\] .*; got 0"):
        PruneSchedule.geometric(0.5, 0, 3)


def test_single_round_spacing():
    assert PruneSchedule.linear(0.5, 0.5, 1).ratios == (0.5,)


def test_preset_unknown():
    with pytest.raises(ValueError, match=r"one of toy, power_gas_bsds, hepmass_mnist, miniboone; got 'gas'"):
        PruneSchedule.preset("gas")


@pytest.mark.parametrize(
    ("config", "ratios"),
    [
        ([0.2, 0.5], (0.2, 0.5)),
        ({"ratios": [0.2, 0.5]}, (0.2, 0.5)),
        ({"kind": "explicit", "ratios": []}, ()),
        ({"kind": "linear", "start": 0.5, "stop": 0.3, "num": 3}, (0.5, 0.6, 0.7)),
        ({"kind": "concat", "parts": [[0.1], {"kind": "preset", "name": "power_gas_bsds"}]}, None),
    ],
)
def test_from_config_forms(config, ratios):
    schedule = PruneSchedule.from_config(config)

    expected = ratios if ratios is not None else (0.1, *PAPER_SCHEDULES["power_gas_bsds"].ratios)
    assert schedule.ratios == pytest.approx(expected, abs=1e-12)


def test_from_config_does_not_mutate():
    config = {"kind": "geometric", "start": 0.8, "stop": 0.2, "num": 4}
    copy = dict(config)

    PruneSchedule.from_config(config)

    assert config == copy


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"kind": "cosine"}, r"`schedule.kind` must be one of explicit, geometric, linear, concat, preset; got 'cosine'"),
        ({"kind": "geometric", "start": 0.8, "stop": 0.2}, r"missing: \['num'\], unknown: none"),
        ({"kind": "linear", "start": 0.8, "stop": 0.2, "num": 3, "nmu": 3}, r"unknown: \['nmu'\]"),
        ({"kind": "concat", "parts": []}, r"non-empty list of schedules"),
        ({"kind": "geometric", "start": 0.8, "stop": 0.2, "num": 0}, r"`num` must be a positive int, .*; got 0"),
        ("0.5", r"list of prune ratios or a mapping"),
    ],
)
def test_from_config_errors(config, message):
    with pytest.raises(ValueError, match=message):
        PruneSchedule.from_config(config)


def test_prune_config_errors():
    base = OmegaConf.to_container(OmegaConf.load(CONF / "demo.yaml"))
    cases = [
        ({"method": "magnitude"}, r"`prune.method` must be one of unstructured, structured; got 'magnitude'"),
        ({"rewind": "init"}, r"`prune.rewind` must be one of lr, weights; got 'init'"),
        ({"epochs_per_round": 0}, r"`prune.epochs_per_round` must be a positive int; got 0"),
        ({"ratio": 0.5}, r"unknown: \['ratio'\]"),
    ]
    for change, message in cases:
        with pytest.raises(ValueError, match=message):
            PruneConfig.from_config({**base, **change})


def test_from_config_whole_group():
    config = OmegaConf.load(CONF / "demo.yaml")

    assert PruneSchedule.from_config(config).ratios == (0.2, 0.52, 0.75, 0.9)


def test_conf_mode_collapse_ratios():
    config = PruneConfig.from_config(OmegaConf.load(CONF / "mode_collapse.yaml"))

    assert config.schedule.ratios == (0.2, 0.256, 0.52, 0.712, 0.751, 0.98)


def test_conf_files_present():
    names = sorted(path.stem for path in CONF.glob("*.yaml"))

    assert names == ["default", "demo", "hepmass_mnist", "miniboone", "mode_collapse", "power_gas_bsds", "toy"]


def test_conf_default_dense_only():
    config = PruneConfig.from_config(OmegaConf.load(CONF / "default.yaml"))

    assert len(config.schedule) == 0
    assert config.rewind == "lr"


@pytest.mark.parametrize("name", ["toy", "power_gas_bsds", "hepmass_mnist", "miniboone"])
def test_conf_matches_preset(name):
    config = PruneConfig.from_config(OmegaConf.load(CONF / f"{name}.yaml"))

    assert config.schedule.ratios == pytest.approx(PAPER_SCHEDULES[name].ratios, abs=1e-12)


@pytest.mark.parametrize("name", ["demo", "mode_collapse", "toy", "power_gas_bsds", "hepmass_mnist", "miniboone"])
def test_conf_exact_nonzero_counts(name):
    schedule = PruneConfig.from_config(OmegaConf.load(CONF / f"{name}.yaml")).schedule
    model = TimeMLP(hidden=(64, 64, 64))
    dense_total = count_parameters(model).total

    # The 194 biases are 2.2 % of this field, so ratios above 97.8 % are met only because hidden
    # neurons that lose all their weights count as removed, biases included.
    for ratio in schedule.ratios:
        counts = prune_unstructured(model, ratio, dense_total=dense_total)
        assert counts.nonzero == round((1 - ratio) * dense_total), ratio


def test_toy_counts_concatsquash():
    from sparse_cnf.flows.fields import build_field

    model = build_field("concatsquash", 2, (64, 64, 64))
    dense_total = count_parameters(model).total

    for ratio in PAPER_SCHEDULES["toy"].ratios:
        counts = prune_unstructured(model, ratio, dense_total=dense_total)
        assert counts.nonzero == round((1 - ratio) * dense_total), ratio
