"""The sweep's plan: its arguments parsed, every trial's mechanism, the composed cost per block.

Nothing here writes: :func:`plan_sweep` reads the ledger and returns a :class:`SweepPlan`
that :mod:`dpgov.training.sweep.run` checks and runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dpgov.accounting import (
    AccountingInputError,
    DpSgdMechanism,
    InfeasibleBudget,
    calibrate_noise_multiplier,
    epsilon,
    group,
    rdp_vector,
)
from dpgov.accounting.accountants import quiet_absl
from dpgov.accounting.filters import FILTER_ORDERS, filter_epsilon
from dpgov.contracts import show_spent, within
from dpgov.errors import UsageError
from dpgov.ledger.schema import ACTIVE
from dpgov.training.planning import plan as plan_run

if TYPE_CHECKING:  # pragma: no cover
    from dpgov.ledger import Ledger
    from dpgov.policy import LoadedPolicy
    from dpgov.training.inputs import PreparedLike
    from dpgov.training.params import RunParams

# σ of the probe plan, which only fixes blocks, q and T (it is never reserved or trained).
PROBE_NOISE_MULTIPLIER = 50.0
PROBE_TARGET_EPSILON = 1e9
MAX_SEEDS = 100
MAX_EPSILONS = 20


# --------------------------------------------------------------------------- input


def parse_epsilons(text: str) -> list[float]:
    """``"1,3,8"`` → ``[1.0, 3.0, 8.0]`` (sorted); one line naming the problem otherwise."""
    raw = (text or "").strip()
    if not raw:
        raise UsageError("--epsilons: empty list; give positive values such as 1,3,8")
    values: list[float] = []
    for i, part in enumerate(raw.split(","), start=1):
        item = part.strip()
        if not item:
            raise UsageError(f"--epsilons: item {i} of {raw!r} is empty; give a list like 1,3,8")
        try:
            value = float(item)
        except ValueError:
            raise UsageError(f"--epsilons: {item!r} is not a number (in {raw!r})") from None
        if not math.isfinite(value) or value <= 0:
            raise UsageError(f"--epsilons: every ε must be a finite number > 0, found {item!r}")
        if value in values:
            raise UsageError(f"--epsilons: ε {item} is listed twice; use --seeds for repeats")
        values.append(value)
    if len(values) > MAX_EPSILONS:
        raise UsageError(f"--epsilons: at most {MAX_EPSILONS} values, found {len(values)}")
    return sorted(values)


def parse_seeds(text: str | int) -> int:
    """The number of seeds per ε: an integer from 1 to :data:`MAX_SEEDS`."""
    try:
        n = int(str(text).strip())
    except ValueError:
        raise UsageError(f"--seeds: expected a whole number >= 1, found {text!r}") from None
    if n < 1 or n > MAX_SEEDS:
        raise UsageError(f"--seeds: must be between 1 and {MAX_SEEDS}, found {n}")
    return n


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class Trial:
    """One DP training run of the sweep: its own ε target, seed and calibrated mechanism."""

    index: int  # 1-based, in the order trials run
    epsilon: float  # target ε of this run alone
    seed: int
    mechanism: DpSgdMechanism
    epsilon_run: float  # ε of the mechanism alone at the policy's δ (<= epsilon)

    def to_dict(self) -> dict[str, Any]:
        return {
            "trial": self.index,
            "epsilon": self.epsilon,
            "seed": self.seed,
            "noise_multiplier": self.mechanism.noise_multiplier,
            "sample_rate": self.mechanism.sample_rate,
            "steps": self.mechanism.steps,
            "epsilon_run": self.epsilon_run,
        }


@dataclass(frozen=True)
class BlockCost:
    """What the sweep costs one block, every ε composed at the policy's δ."""

    block: str
    charges: int  # active charges (pending, committed, aborted) before the sweep
    spent: float  # ε the block had spent: its charges composed
    sweep: float  # ε of the sweep's trials alone, composed
    after: float  # ε after the sweep: its charges and every trial composed
    limit: float

    @property
    def fits(self) -> bool:
        return within(self.after, self.limit)

    @property
    def remaining_after(self) -> float:
        return max(0.0, self.limit - self.after)

    def to_dict(self) -> dict[str, Any]:
        return {
            "block": self.block,
            "charges": self.charges,
            "epsilon_spent": self.spent,
            "epsilon_sweep": self.sweep,
            "epsilon_after": self.after,
            "epsilon_limit": self.limit,
            "remaining_after": self.remaining_after,
            "fits": self.fits,
        }


@dataclass
class SweepPlan:
    params: RunParams
    policy: LoadedPolicy
    dataset: str
    data_version: str
    blocks: list[str]
    epsilons: list[float]
    seeds: list[int]
    trials: list[Trial]
    costs: list[BlockCost]
    prior_charges: dict[str, set[str]]  # block -> active reservation ids at the check
    delta: float
    accountant: str
    sample_rate: float
    steps: int
    epochs: int
    n_train: int
    n_test: int
    epsilon_sum: float  # the naive sum of the trials' ε (what composition improves on)

    @property
    def fits(self) -> bool:
        return all(c.fits for c in self.costs)

    def refusal(self) -> str:
        """One line: the blocks the sweep would overspend, and by how much."""
        over = [c for c in self.costs if not c.fits]
        worst = max(over, key=lambda c: c.after - c.limit)
        names = ", ".join(c.block for c in over)
        return (
            f"sweep refused: its {len(self.trials)} trials compose to "
            f"ε={show_spent(self.costs[0].sweep, 4)} "
            f"on their own and would bring {len(over)} block(s) of dataset {self.dataset!r} "
            f"({names}) over the limit {worst.limit:g} (worst: {worst.block} from "
            f"{show_spent(worst.spent, 4)} to {show_spent(worst.after, 4)}, over by "
            f"{show_spent(worst.after - worst.limit, 4)}); "
            "nothing was charged: use fewer ε values or seeds, or a policy with a larger "
            "budget.epsilon_per_block"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "data_version": self.data_version,
            "blocks": self.blocks,
            "n_train_patients": self.n_train,
            "n_test_patients": self.n_test,
            "epsilons": self.epsilons,
            "seeds": self.seeds,
            "delta": self.delta,
            "accountant": self.accountant,
            "sample_rate": self.sample_rate,
            "steps": self.steps,
            "epochs": self.epochs,
            "model": self.params.model.name,
            "policy": str(self.policy.path),
            "policy_sha256": self.policy.sha256,
            "epsilon_per_block": self.policy.policy.budget.epsilon_per_block,
            "trials": [t.to_dict() for t in self.trials],
            "epsilon_sweep": self.costs[0].sweep if self.costs else 0.0,
            "epsilon_sum_of_trials": self.epsilon_sum,
            "blocks_cost": [c.to_dict() for c in self.costs],
            "fits": self.fits,
        }


def trial_params(
    params: RunParams,
    *,
    epsilon: float,
    noise_multiplier: float,
    seed: int,
    reference: bool,
    blocks: list[str] | None,
) -> RunParams:
    """The params of one trial: the base params with σ, ε, seed and blocks fixed."""
    train = params.train.model_copy(
        update={
            "target_epsilon": float(epsilon),
            "noise_multiplier": float(noise_multiplier),
            "seed": int(seed),
            "reference": reference,
            "blocks": list(blocks) if blocks is not None else None,
        }
    )
    return params.model_copy(update={"train": train})


def block_charges(
    ledger: Ledger, dataset: str, blocks: list[str]
) -> dict[str, list[tuple[str, DpSgdMechanism]]]:
    """Each block's active charges (pending, committed, aborted): (reservation id, mechanism).

    These are what the ledger composes into a block's spent ε.
    """
    wanted = set(blocks)
    out: dict[str, list[tuple[str, DpSgdMechanism]]] = {b: [] for b in blocks}
    for r in ledger.reservations():
        if r.dataset != dataset or r.status not in ACTIVE:
            continue
        for b in r.blocks:
            if b in wanted:
                out[b].append((r.id, r.mechanism))
    return out


def compose_costs(
    charges: dict[str, list[tuple[str, DpSgdMechanism]]],
    trials: list[DpSgdMechanism],
    *,
    limit: float,
    delta: float,
    accountant: str,
    composition: str = "fixed",
    orders: Sequence[float] = FILTER_ORDERS,
) -> list[BlockCost]:
    """Per block: ε spent, ε of ``trials`` alone and ε of both, each composed (not summed):
    under ``composition`` fixed with ``accountant`` (tight: the sweep is a schedule committed
    in advance), under adaptive by the RDP filter over ``orders`` (what the ledger enforces)."""
    cache: dict[Any, float] = {}
    rdp: dict[Any, list[float]] = {}

    def filtered(key: tuple[tuple[DpSgdMechanism, int], ...]) -> float:
        total = [0.0] * len(orders)
        for m, n in key:
            if (m, n) not in rdp:
                with quiet_absl():
                    rdp[(m, n)] = rdp_vector(m, orders, n)
            total = [a + b for a, b in zip(total, rdp[(m, n)], strict=True)]
        return filter_epsilon(total, delta, orders)

    def eps(mechs: list[DpSgdMechanism]) -> float:
        key = tuple((m, n) for m, n in group(mechs))
        if key not in cache:
            if not key:
                cache[key] = 0.0
            elif composition == "adaptive":
                cache[key] = filtered(key)
            else:
                cache[key] = epsilon(mechs, delta=delta, accountant=accountant)
        return cache[key]

    alone = eps(trials)
    out = []
    for b, held in charges.items():
        prior = [m for _, m in held]
        out.append(
            BlockCost(
                block=b,
                charges=len(prior),
                spent=eps(prior),
                sweep=alone,
                after=eps(prior + trials),
                limit=limit,
            )
        )
    return out


def plan_sweep(
    params: RunParams,
    policy: LoadedPolicy,
    data: PreparedLike,
    *,
    ledger: Ledger,
    epsilons: list[float],
    seeds: int,
    data_version: str | None = None,
) -> SweepPlan:
    """Every trial's mechanism and the whole sweep's composed cost per block. Writes nothing."""
    if not epsilons:
        raise UsageError("--epsilons: empty list; give positive values such as 1,3,8")
    n_seeds = parse_seeds(seeds)
    budget = policy.policy.budget
    probe_params = trial_params(
        params,
        epsilon=PROBE_TARGET_EPSILON,
        noise_multiplier=PROBE_NOISE_MULTIPLIER,
        seed=params.train.seed,
        reference=False,
        blocks=params.train.blocks,
    )
    probe = plan_run(probe_params, policy, data, ledger=ledger, data_version=data_version)
    q, steps = probe.sampling.sample_rate, probe.sampling.steps

    mechanisms: dict[float, tuple[DpSgdMechanism, float]] = {}
    for eps in epsilons:
        try:
            sigma = calibrate_noise_multiplier(
                target_epsilon=eps,
                delta=budget.delta,
                sample_rate=q,
                steps=steps,
                accountant=budget.accountant,
            )
            mech = DpSgdMechanism(noise_multiplier=sigma, sample_rate=q, steps=steps)
            mechanisms[eps] = (
                mech,
                epsilon([mech], delta=budget.delta, accountant=budget.accountant),
            )
        except InfeasibleBudget as err:
            raise UsageError(
                f"--epsilons: ε={eps:g} is too small for {steps} steps at sample rate {q:.4g} "
                f"(δ={budget.delta:g}): no noise multiplier up to the calibration's limit "
                "reaches it"
            ) from err
        except AccountingInputError as err:
            raise UsageError(f"--epsilons: ε={eps:g}: {err}") from err

    base_seed = params.train.seed
    seed_list = [base_seed + i for i in range(n_seeds)]
    trials: list[Trial] = []
    for seed in seed_list:  # seed-major: a stopped sweep keeps whole curves
        for eps in epsilons:
            mech, eps_run = mechanisms[eps]
            trials.append(
                Trial(
                    index=len(trials) + 1,
                    epsilon=eps,
                    seed=seed,
                    mechanism=mech,
                    epsilon_run=eps_run,
                )
            )

    held = block_charges(ledger, probe.dataset, probe.blocks)
    costs = compose_costs(
        held,
        [t.mechanism for t in trials],
        limit=budget.epsilon_per_block,
        delta=budget.delta,
        accountant=budget.accountant,
        composition=budget.mode_for(probe.dataset),
        orders=budget.orders,
    )
    return SweepPlan(
        params=params,
        policy=policy,
        dataset=probe.dataset,
        data_version=probe.data_version,
        blocks=list(probe.blocks),
        epsilons=list(epsilons),
        seeds=seed_list,
        trials=trials,
        costs=costs,
        prior_charges={b: {rid for rid, _ in v} for b, v in held.items()},
        delta=budget.delta,
        accountant=budget.accountant,
        sample_rate=q,
        steps=steps,
        epochs=probe.sampling.epochs,
        n_train=len(probe.train.y),
        n_test=len(probe.test.y),
        epsilon_sum=sum(t.epsilon_run for t in trials),
    )
