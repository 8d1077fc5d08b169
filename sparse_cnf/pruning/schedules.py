"""Prune schedules: the target prune ratio of every round, from explicit lists, keep-ratio spacings or presets."""

__all__ = ["PAPER_SCHEDULES", "REWIND_MODES", "SCHEDULE_KINDS", "PruneConfig", "PruneSchedule"]

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sparse_cnf.pruning.methods import METHODS

SCHEDULE_KINDS = ("explicit", "geometric", "linear", "concat", "preset")
REWIND_MODES = ("lr", "weights")

# Ratios are rounded to this many decimals, so that 1 - 0.18 is stored as 0.82.
_DECIMALS = 12


def _is_number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float))


def _check_keep(name: str, value: object) -> float:
    if not _is_number(value) or not 0.0 < value <= 1.0:
        raise ValueError(
            f"`{name}` must be a keep ratio in (0, 1] (the share of parameters left, 1 - prune ratio); "
            f"got {value!r}."
        )

    return float(value)


def _check_num(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`num` must be a positive int, the number of prune rounds; got {value!r}.")

    return value


@dataclass(frozen=True)
class PruneSchedule:
    """Target prune ratios of the rounds after dense training, strictly increasing in [0, 1).

    A prune ratio is 1 - keep ratio, counted over all parameters of the dense model. An empty
    schedule means dense training only.

    Args:
        ratios: target prune ratio of round 1, 2, ...

    Raises:
        ValueError: when a ratio is outside [0, 1) or the ratios do not increase strictly.

    References:
        Sparse Flows: Pruning Continuous-depth Models. L. Liebenwein, 2021, arXiv:2106.12718.
    """

    ratios: tuple[float, ...]

    def __post_init__(self) -> None:
        if isinstance(self.ratios, (str, bytes)) or not isinstance(self.ratios, Sequence):
            raise ValueError(f"`ratios` must be a list of prune ratios in [0, 1); got {self.ratios!r}.")
        ratios = tuple(self.ratios)
        for ratio in ratios:
            if not _is_number(ratio) or not math.isfinite(ratio) or not 0.0 <= ratio < 1.0:
                raise ValueError(
                    f"every prune ratio must be a number in [0, 1) (0.9 removes 90 % of all parameters); "
                    f"got {ratio!r} in {list(ratios)}."
                )
        for previous, ratio in zip(ratios, ratios[1:]):
            if ratio <= previous:
                raise ValueError(
                    f"prune ratios must increase strictly from round to round, because pruned entries "
                    f"cannot grow back; got {ratio!r} after {previous!r} in {list(ratios)}."
                )
        object.__setattr__(self, "ratios", tuple(float(r) for r in ratios))

    def __len__(self) -> int:
        return len(self.ratios)

    def __add__(self, other: "PruneSchedule") -> "PruneSchedule":
        return PruneSchedule(self.ratios + other.ratios)

    @property
    def keep_ratios(self) -> tuple[float, ...]:
        """Keep ratio 1 - prune ratio of every round."""
        return tuple(round(1.0 - r, _DECIMALS) for r in self.ratios)

    @classmethod
    def explicit(cls, ratios: Sequence[float]) -> "PruneSchedule":
        """Build a schedule from a list of prune ratios."""
        return cls(tuple(ratios))

    @classmethod
    def from_keep(cls, keep_ratios: Sequence[float]) -> "PruneSchedule":
        """Build a schedule from keep ratios, prune ratio = 1 - keep ratio."""
        return cls(tuple(round(1.0 - k, _DECIMALS) for k in keep_ratios))

    @classmethod
    def geometric(cls, start: float, stop: float, num: int) -> "PruneSchedule":
        """Space `num` keep ratios geometrically from `start` to `stop`, both included.

        Args:
            start: keep ratio of the first round, in (0, 1].
            stop: keep ratio of the last round, in (0, start); equal to `start` when `num` is 1.
            num: number of rounds.

        Returns:
            Prune ratios 1 - start * (stop / start) ** (i / (num - 1)), i = 0, ..., num - 1.

        Raises:
            ValueError: on keep ratios outside (0, 1], `stop` >= `start` with `num` > 1, or `num` < 1.
        """
        start, stop, num = _check_keep("start", start), _check_keep("stop", stop), _check_num(num)
        _check_spacing(start, stop, num)
        if num == 1:
            return cls.from_keep([start])

        return cls.from_keep([start * (stop / start) ** (i / (num - 1)) for i in range(num)])

    @classmethod
    def linear(cls, start: float, stop: float, num: int) -> "PruneSchedule":
        """Space `num` keep ratios evenly from `start` to `stop`, both included.

        Args:
            start: keep ratio of the first round, in (0, 1].
            stop: keep ratio of the last round, in (0, start); equal to `start` when `num` is 1.
            num: number of rounds.

        Returns:
            Prune ratios 1 - (start + (stop - start) * i / (num - 1)), i = 0, ..., num - 1.

        Raises:
            ValueError: on keep ratios outside (0, 1], `stop` >= `start` with `num` > 1, or `num` < 1.
        """
        start, stop, num = _check_keep("start", start), _check_keep("stop", stop), _check_num(num)
        _check_spacing(start, stop, num)
        if num == 1:
            return cls.from_keep([start])

        return cls.from_keep([start + (stop - start) * i / (num - 1) for i in range(num)])

    @classmethod
    def concat(cls, parts: Sequence["PruneSchedule"]) -> "PruneSchedule":
        """Join schedules one after another; the joined ratios must still increase strictly."""
        ratios: tuple[float, ...] = ()
        for part in parts:
            ratios += part.ratios

        return cls(ratios)

    @classmethod
    def preset(cls, name: str) -> "PruneSchedule":
        """Return the paper schedule `name`, a key of `PAPER_SCHEDULES`.

        Raises:
            ValueError: on an unknown name, listing the valid ones.
        """
        if name not in PAPER_SCHEDULES:
            raise ValueError(
                f"prune schedule preset must be one of {', '.join(PAPER_SCHEDULES)}; got {name!r}."
            )

        return PAPER_SCHEDULES[name]

    @classmethod
    def from_config(cls, config: Mapping | Sequence[float]) -> "PruneSchedule":
        """Build a schedule from plain config values (a Hydra/OmegaConf node works too).

        Accepted forms, keep ratios everywhere except in `ratios`:

        - a list of prune ratios, or `{ratios: [...]}`, or `{kind: explicit, ratios: [...]}`;
        - `{kind: geometric, start: 0.8, stop: 0.2, num: 20}` and the same with `kind: linear`;
        - `{kind: concat, parts: [<schedule>, <schedule>, ...]}`;
        - `{kind: preset, name: toy}` with a key of `PAPER_SCHEDULES`;
        - a whole prune config group (a mapping with a `schedule` key), which is checked by
          `PruneConfig.from_config` and gives its schedule.

        Args:
            config: the schedule description; it is not modified.

        Returns:
            The schedule.

        Raises:
            ValueError: on an unknown kind, a missing or unknown key, or invalid values.
        """
        if isinstance(config, Mapping) and "schedule" in config:
            return PruneConfig.from_config(config).schedule
        if isinstance(config, Mapping):
            return _schedule_from_mapping(config)
        if isinstance(config, Sequence) and not isinstance(config, (str, bytes)):
            return cls.explicit(list(config))

        raise ValueError(
            f"a prune schedule must be a list of prune ratios or a mapping with `kind` in "
            f"{', '.join(SCHEDULE_KINDS)}; got {config!r}."
        )


def _check_spacing(start: float, stop: float, num: int) -> None:
    if num == 1 and stop != start:
        raise ValueError(
            f"with `num`=1 the schedule has one round, so `stop` must equal `start`; got start={start!r}, "
            f"stop={stop!r}. Raise `num` or set stop={start!r}."
        )
    if num > 1 and stop >= start:
        raise ValueError(
            f"keep ratios must fall from `start` to `stop` so that prune ratios rise; got start={start!r}, "
            f"stop={stop!r}. Swap them or lower `stop`."
        )


_KIND_KEYS = {
    "explicit": {"ratios"},
    "geometric": {"start", "stop", "num"},
    "linear": {"start", "stop", "num"},
    "concat": {"parts"},
    "preset": {"name"},
}


def _schedule_from_mapping(config: Mapping) -> PruneSchedule:
    kind = config.get("kind", "explicit")
    if kind not in _KIND_KEYS:
        raise ValueError(f"`schedule.kind` must be one of {', '.join(SCHEDULE_KINDS)}; got {kind!r}.")
    keys = set(config) - {"kind"}
    expected = _KIND_KEYS[kind]
    if keys != expected:
        missing, unknown = sorted(expected - keys), sorted(keys - expected)
        raise ValueError(
            f"a prune schedule of kind {kind!r} takes exactly the keys {', '.join(sorted(expected))}; "
            f"missing: {missing or 'none'}, unknown: {unknown or 'none'}."
        )

    if kind == "explicit":
        ratios = config["ratios"]
        if isinstance(ratios, (str, bytes)) or not isinstance(ratios, Sequence):
            raise ValueError(f"`schedule.ratios` must be a list of prune ratios in [0, 1); got {ratios!r}.")
        return PruneSchedule.explicit(list(ratios))
    if kind == "geometric":
        return PruneSchedule.geometric(config["start"], config["stop"], config["num"])
    if kind == "linear":
        return PruneSchedule.linear(config["start"], config["stop"], config["num"])
    if kind == "preset":
        return PruneSchedule.preset(config["name"])

    parts = config["parts"]
    if isinstance(parts, (str, bytes, Mapping)) or not isinstance(parts, Sequence) or not parts:
        raise ValueError(f"`schedule.parts` must be a non-empty list of schedules; got {parts!r}.")

    return PruneSchedule.concat([PruneSchedule.from_config(part) for part in parts])


# Schedules of the Sparse Flows experiments, as keep ratios (prune ratio = 1 - keep ratio).
PAPER_SCHEDULES: dict[str, PruneSchedule] = {
    # Toy 2-D sets: 20 geometric keep ratios 0.80 -> 0.20, then 9 linear 0.18 -> 0.02.
    "toy": PruneSchedule.geometric(0.80, 0.20, 20) + PruneSchedule.linear(0.18, 0.02, 9),
    # POWER, GAS and BSDS300: 8 geometric keep ratios 0.70 -> 0.10.
    "power_gas_bsds": PruneSchedule.geometric(0.70, 0.10, 8),
    # HEPMASS and MNIST: 12 geometric keep ratios 0.80 -> 0.05.
    "hepmass_mnist": PruneSchedule.geometric(0.80, 0.05, 12),
    # MINIBOONE: the HEPMASS schedule, then 4 linear keep ratios 0.04 -> 0.01.
    "miniboone": PruneSchedule.geometric(0.80, 0.05, 12) + PruneSchedule.linear(0.04, 0.01, 4),
}


@dataclass(frozen=True)
class PruneConfig:
    """The prune config group: method, schedule, fine-tuning epochs per round and rewinding mode.

    Attributes:
        method: "unstructured" (global magnitude) or "structured" (neurons by L1 norm).
        schedule: target prune ratio of every round.
        epochs_per_round: fine-tuning epochs after each prune.
        rewind: "lr" restarts the optimizer and learning-rate schedule each round; "weights"
            also sets the surviving weights back to their values before training.

    References:
        Comparing Rewinding and Fine-tuning in Neural Network Pruning. A. Renda, 2020,
        arXiv:2003.02389.
    """

    method: str
    schedule: PruneSchedule
    epochs_per_round: int
    rewind: str

    @classmethod
    def from_config(cls, config: Mapping) -> "PruneConfig":
        """Check and convert the prune config group, for example `cfg.prune` of a Hydra run.

        Args:
            config: a mapping with exactly the keys method, schedule, epochs_per_round and rewind;
                it is not modified.

        Returns:
            The checked config.

        Raises:
            ValueError: on a missing or unknown key, an unknown method or rewind mode, a
                non-positive `epochs_per_round`, or an invalid schedule.
        """
        expected = {"method", "schedule", "epochs_per_round", "rewind"}
        if not isinstance(config, Mapping):
            raise ValueError(f"the prune config must be a mapping with keys {', '.join(sorted(expected))}; got {config!r}.")
        keys = set(config)
        if keys != expected:
            missing, unknown = sorted(expected - keys), sorted(keys - expected)
            raise ValueError(
                f"the prune config takes exactly the keys {', '.join(sorted(expected))}; "
                f"missing: {missing or 'none'}, unknown: {unknown or 'none'}."
            )
        method, rewind, epochs = config["method"], config["rewind"], config["epochs_per_round"]
        if method not in METHODS:
            raise ValueError(f"`prune.method` must be one of {', '.join(METHODS)}; got {method!r}.")
        if rewind not in REWIND_MODES:
            raise ValueError(f"`prune.rewind` must be one of {', '.join(REWIND_MODES)}; got {rewind!r}.")
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"`prune.epochs_per_round` must be a positive int; got {epochs!r}.")
        schedule = PruneSchedule.from_config(config["schedule"])

        return cls(method=method, schedule=schedule, epochs_per_round=epochs, rewind=rewind)
