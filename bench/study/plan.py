"""The study's plan: a JSON file (bench/study_plan.json) read into one ``Run`` per training run.

Each run's settings are the plan's ``recipe``, then its group's settings, then its own (later wins); a run
with ``"seeds": [1, 2]`` stands for one run per seed, named ``NAME-s1``, ``NAME-s2``. A shape names the
model (layers, width, heads, FFN) and two figures for ``--list``'s estimate: updates per minute and minutes
of scoring. ``data`` says what is prepared (vocabulary size, and for a smoke plan how many lines) and may
set the budget's ``stop_margin_minutes`` and ``min_train_minutes`` (bench/study/__main__.py has the defaults).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from admin_ds.errors import UserError
from admin_ds.training.config import OPTIMIZERS

BENCH = Path(__file__).resolve().parents[1]
FULL_PLAN = BENCH / "study_plan.json"
QUICK_PLAN = BENCH / "study_plan_quick.json"

# What ``admin-ds train`` takes from a run's settings, as (setting, flag).
TRAIN_FLAGS = (("encoder_layers", "--encoder-layers"), ("decoder_layers", "--decoder-layers"),
               ("d_model", "--d-model"), ("nhead", "--nhead"), ("ffn_dim", "--ffn-dim"),
               ("residual", "--residual"), ("omega_init", "--omega-init"), ("dropout", "--dropout"),
               ("attention_dropout", "--attention-dropout"), ("activation_dropout", "--activation-dropout"),
               ("label_smoothing", "--label-smoothing"), ("lr", "--lr"), ("warmup_updates", "--warmup-updates"),
               ("max_tokens", "--max-tokens"), ("seed", "--seed"), ("log_interval", "--log-interval"),
               ("validate_interval", "--validate-interval"), ("save_interval", "--save-interval"),
               ("keep_last", "--keep-last"))
# Settings passed only where a run gives them (Admin runs only), so that adding one to a probe leaves the
# settings of runs already started, and so their right to resume, unchanged.
ADMIN_FLAGS = (("omega_lr_scale", "--omega-lr-scale"),)
# The same, for any run: a torch optimizer instead of the precision's default (torch Adam either way).
ANY_RUN_FLAGS = (("optimizer", "--optimizer"),)
REQUIRED = tuple(name for name, _ in TRAIN_FLAGS) + ("updates", "precision", "average_last", "beam", "score")
PRECISIONS = {"bf16": "ds_configs/cpu_bf16.json", "fp32": None}  # one process: ZeRO-0 bf16 (docs/speed.md)
# A run that names its optimizer needs a config without an optimizer section (which would replace it).
TORCH_OPTIMIZER_PRECISIONS = {"bf16": "ds_configs/cpu_torchoptim_bf16.json", "fp32": None}


@dataclass(frozen=True)
class Run:
    """One training run of the plan, with every setting resolved."""

    name: str
    group: str
    shape: str
    settings: dict
    give_up: tuple[dict, ...] = ()

    @property
    def updates(self) -> int:
        return int(self.settings["updates"])

    @property
    def score(self) -> bool:
        return bool(self.settings["score"])

    def train_flags(self) -> list[str]:
        """The run's model and recipe as ``admin-ds train`` flags (no paths)."""
        flags = ["--arch", "admin-small"]
        for name, flag in TRAIN_FLAGS:
            if name == "omega_init" and self.settings["residual"] != "admin":
                continue
            flags += [flag, str(self.settings[name])]
        for name, flag in ADMIN_FLAGS:
            if name in self.settings and self.settings["residual"] == "admin":
                flags += [flag, str(self.settings[name])]
        for name, flag in ANY_RUN_FLAGS:
            if name in self.settings:
                flags += [flag, str(self.settings[name])]
        return flags

    def deepspeed_config(self) -> Optional[str]:
        """The DeepSpeed config for the run's precision (a path from the repository root; None: plain fp32)."""
        configs = TORCH_OPTIMIZER_PRECISIONS if "optimizer" in self.settings else PRECISIONS
        return configs[self.settings["precision"]]


@dataclass(frozen=True)
class Plan:
    """The whole plan: data settings, shapes (with their measured rates) and runs in order."""

    data: dict
    shapes: dict
    runs: list[Run] = field(default_factory=list)

    def run(self, name: str) -> Run:
        for run in self.runs:
            if run.name == name:
                return run
        raise UserError(f"no run named {name!r} in the plan; --list shows the names")

    def estimate_minutes(self, run: Run) -> Optional[float]:
        """Training at the shape's measured rate plus its scoring; None when the shape has no rate yet."""
        shape = self.shapes[run.shape]
        rates = {int(tokens): rate for tokens, rate in (shape.get("updates_per_minute") or {}).items()}
        if not rates:
            return None
        tokens = int(run.settings["max_tokens"])
        if tokens in rates:
            rate = rates[tokens]
        else:  # not measured at this batch: the nearest measured one, time taken as proportional to tokens
            nearest = min(rates, key=lambda measured: abs(measured - tokens))
            rate = rates[nearest] * nearest / tokens
        scoring = (shape.get("eval_minutes") or 0.0) if run.score else 0.0
        return run.updates / rate + scoring


def _expand(entry: dict, recipe: dict, groups: dict, shapes: dict) -> list[Run]:
    group = entry.get("group")
    if group not in groups:
        raise UserError(f"run {entry.get('name')!r}: group {group!r} is not one of {sorted(groups)}")
    if entry.get("shape") not in shapes:
        raise UserError(f"run {entry.get('name')!r}: shape {entry.get('shape')!r} is not one of {sorted(shapes)}")
    shape = {key: value for key, value in shapes[entry["shape"]].items()
             if key not in ("updates_per_minute", "eval_minutes")}
    own = {key: value for key, value in entry.items() if key not in ("name", "group", "shape", "seeds", "give_up")}
    settings = {**recipe, **shape, **groups[group], **own}
    rules = _give_up_rules(entry, int(settings.get("updates", 0)))
    seeds = entry.get("seeds")
    if seeds is None:
        return [Run(entry["name"], group, entry["shape"], settings, rules)]
    return [Run(f"{entry['name']}-s{seed}", group, entry["shape"], {**settings, "seed": seed}, rules)
            for seed in seeds]


def _give_up_rules(entry: dict, updates: int) -> tuple[dict, ...]:
    """A run's early stops (one rule or a list), each checked, all before its last update (``updates``):
    bench/study/runner.py's ``gives_up`` reads them."""
    rules = entry.get("give_up") or []
    rules = [rules] if isinstance(rules, dict) else rules
    for rule in rules:
        if (not isinstance(rule, dict) or not isinstance(rule.get("at_update"), int)
                or not {"if_best_dev_loss_above", "if_best_fell_less_than"} & set(rule)):
            raise UserError(f"run {entry.get('name')!r}: each give_up rule needs an integer at_update and "
                            "if_best_dev_loss_above or if_best_fell_less_than")
        if "if_best_fell_less_than" in rule and not 0 <= rule.get("since_update", -1) < rule["at_update"]:
            raise UserError(f"run {entry.get('name')!r}: a give_up rule with if_best_fell_less_than needs a "
                            "since_update before its at_update")
    if len({rule["at_update"] for rule in rules}) != len(rules):
        raise UserError(f"run {entry.get('name')!r}: two give_up rules at the same update")
    if any(rule["at_update"] >= updates for rule in rules):
        raise UserError(f"run {entry.get('name')!r}: a give_up rule's at_update must come before its last update")
    return tuple(rules)


def load_plan(path: Path) -> Plan:
    """Read and check a plan file; UserError naming the first problem."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"cannot read the study plan {path}: {err}") from None
    runs: list[Run] = []
    for entry in raw.get("runs", []):
        runs += _expand(entry, raw.get("recipe", {}), raw.get("groups", {}), raw.get("shapes", {}))
    names = [run.name for run in runs]
    if len(set(names)) != len(names):
        raise UserError(f"the study plan {path} names a run twice")
    for run in runs:
        missing = [key for key in REQUIRED if key not in run.settings]
        if missing:
            raise UserError(f"run {run.name!r} of {path} has no {', '.join(missing)}")
        if run.settings["precision"] not in PRECISIONS:
            raise UserError(f"run {run.name!r}: precision must be one of {sorted(PRECISIONS)}")
        if "optimizer" in run.settings and run.settings["optimizer"] not in OPTIMIZERS:
            raise UserError(f"run {run.name!r}: optimizer must be one of {', '.join(OPTIMIZERS)}")
    return Plan(raw.get("data", {}), raw.get("shapes", {}), runs)
