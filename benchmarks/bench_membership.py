"""Membership-inference risk per subgroup (issue 18 item 3, Measure): the loss-threshold
attack and offline LiRA against DP models and the non-private reference on the bundled cohort.

The bundled flchain cohort's training split, split as a governed run splits it (keyed
validation split, fraction 0.2): members are the patients the models train on, non-members
the validation split (same population, never trained on). Models: the default params (MLP
[64, 32], batch 512, 10 epochs, C = 5, SGD lr 0.2): the non-private reference, DP-SGD at
ε = 1 and 8 (σ calibrated, PLD, δ = 1e-5), and an overfit reference (``--overfit-epochs``, no
DP, MLP [256, 256], batch 64) to show what the attack finds when there is something to find.

For each model: AUC and TPR at the lowest FPR with at least 10 expected false positives
(10 / n non-members: about 0.8 % overall, 10-30 % per subgroup here), with Clopper–Pearson
intervals, overall and per judged subgroup (≥ 30 members and non-members). TPR at 0.1 % FPR
is not measurable here: 0.1 % of the non-members is about one patient.

Offline LiRA (Carlini et al. 2022): K shadow models trained the way the target was (DP at the
same σ, batch and epochs for a DP target; non-private for the references) on halves of the
pool (members ∪ non-members), each patient in exactly K/2; each patient's target logit
confidence scored against the Gaussian of its OUT shadows. Shadow wall time is reported
apart from the targets'. Shadow models are non-private uses of patient data.

    .venv/bin/python benchmarks/bench_membership.py [--shadows 4] [--overfit-epochs 200]
        [--out benchmarks/RESULTS_membership.md] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")

from _machine import machine, stamp

DELTA = 1e-5
BATCH, EPOCHS, CLIP, LR = 512, 10, 5.0, 0.2
MIN_GROUP_N = 30  # the default policy's fairness.min_group_size


def _flchain(home: Path) -> Any:
    from dpgov.data import load_prepared, prepare
    from dpgov.training.inputs import arrays

    out = home / "prepared" / "flchain"
    prepare(None, None, out=out, register=False)
    data = load_prepared(out)
    return data, arrays(data, "train")


def _model(meta: dict[str, Any], seed: int, hidden: list[int] | None = None) -> Any:
    import torch

    from dpgov.training.models import build_model, input_spec
    from dpgov.training.params import ModelParams

    torch.manual_seed(seed)
    return build_model(ModelParams(name="mlp", hidden=hidden or [64, 32]), input_spec(meta))


def _cfg(seed: int) -> Any:
    return SimpleNamespace(
        optimizer="sgd",
        learning_rate=LR,
        momentum=0.0,
        seed=seed,
        secure_rng=False,
        reproducible_noise=False,
        max_physical_batch_size=4 * BATCH,
        precision="fp32",
    )


def _train(kind: dict[str, Any], meta: dict[str, Any], x: Any, y: Any, seed: int) -> Any:
    """Train one model of ``kind`` (``sigma`` None: non-private) on (x, y)."""
    from dpgov.training.trainer import (
        choose_grad_sample_mode,
        resolve_device,
        sampling_plan,
        train_nonprivate,
        train_private,
    )

    model = _model(meta, seed, kind.get("hidden"))
    dev = resolve_device("cpu")
    if kind["sigma"] is None:
        return train_nonprivate(
            model, x, y, batch_size=kind["batch"], epochs=kind["epochs"], cfg=_cfg(seed), device=dev
        ).model
    plan = sampling_plan(n=len(y), batch_size=BATCH, epochs=EPOCHS)
    return train_private(
        model,
        x,
        y,
        plan=plan,
        noise_multiplier=kind["sigma"],
        max_grad_norm=CLIP,
        cfg=_cfg(seed),
        device=dev,
        grad_sample_mode=choose_grad_sample_mode("auto", model),
    ).model


def _rows(rows: list[Any]) -> list[dict[str, Any]]:
    return [r.__dict__ for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shadows", type=int, default=4)
    ap.add_argument("--overfit-epochs", type=int, default=200)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/RESULTS_membership.md"))
    args = ap.parse_args()
    if args.shadows < 4 or args.shadows % 2:
        raise SystemExit("--shadows: an even number >= 4 (each patient OUT of K/2 >= 2)")

    import torch

    torch.set_num_threads(1)  # the shared 2-core machine is oversubscribed
    from dpgov.accounting import calibrate_noise_multiplier
    from dpgov.training.inputs import subset
    from dpgov.training.membership_attack import (
        attack_table,
        lira_offline_scores,
        logit_confidence,
        loss_scores,
        predict_logits,
    )
    from dpgov.training.trainer import sampling_plan
    from dpgov.training.validation_split import validation_mask

    started = stamp()
    with tempfile.TemporaryDirectory() as tmp:
        data, train = _flchain(Path(tmp))
    is_non = validation_mask(train.patient_id, 0.2, 0)
    members, nonmembers = subset(train, ~is_non), subset(train, is_non)
    plan = sampling_plan(n=len(members.y), batch_size=BATCH, epochs=EPOCHS)
    kinds: dict[str, dict[str, Any]] = {
        "reference": {"sigma": None, "batch": BATCH, "epochs": EPOCHS},
        f"reference, overfit (MLP [256, 256], {args.overfit_epochs} epochs, batch 64)": {
            "sigma": None,
            "batch": 64,
            "epochs": args.overfit_epochs,
            "hidden": [256, 256],
        },
    }
    for eps in (1.0, 8.0):
        sigma = calibrate_noise_multiplier(
            target_epsilon=eps, delta=DELTA, sample_rate=plan.sample_rate, steps=plan.steps
        )
        kinds[f"DP ε={eps:g}"] = {"sigma": sigma, "batch": BATCH, "epochs": EPOCHS}

    # the shadow design: each pool patient IN exactly K/2 of the K shadows
    k = args.shadows
    rng = np.random.default_rng(12345)
    n_pool = len(train.y)
    in_shadow = np.zeros((k, n_pool), dtype=bool)
    for j in range(n_pool):
        in_shadow[rng.permutation(k)[: k // 2], j] = True
    pool_is_member = ~is_non

    results: list[dict[str, Any]] = []
    for name, kind in kinds.items():
        t0 = time.perf_counter()
        target = _train(kind, data.meta, members.x, members.y, seed=0)
        train_s = time.perf_counter() - t0
        ta = time.perf_counter()  # the in-run attack's work: scores, then the table
        z = predict_logits(target, train.x)
        ls = loss_scores(z, train.y)
        attack_table(
            ls[pool_is_member],
            ls[is_non],
            members.sensitive,
            nonmembers.sensitive,
            min_group_n=MIN_GROUP_N,
        )
        attack_s = time.perf_counter() - ta
        t1 = time.perf_counter()
        shadow_stats = []
        for s in range(k):
            sm = _train(kind, data.meta, train.x[in_shadow[s]], train.y[in_shadow[s]], seed=100 + s)
            shadow_stats.append(logit_confidence(predict_logits(sm, train.x), train.y))
        shadow_s = time.perf_counter() - t1
        lira = lira_offline_scores(logit_confidence(z, train.y), np.stack(shadow_stats), ~in_shadow)
        attacks = {}
        for attack, scores in (("loss-threshold", ls), ("lira-offline", lira)):
            attacks[attack] = _rows(
                attack_table(
                    scores[pool_is_member],
                    scores[is_non],
                    members.sensitive,
                    nonmembers.sensitive,
                    min_group_n=MIN_GROUP_N,
                )
            )
        results.append(
            {
                "model": name,
                "sigma": kind["sigma"],
                "train_seconds": train_s,
                "loss_attack_seconds": attack_s,
                "shadow_seconds": shadow_s,
                "attacks": attacks,
            }
        )
        print(name, f"train {train_s:.1f}s attack {attack_s:.2f}s shadows {shadow_s:.1f}s")
        for attack, rows in attacks.items():
            r = rows[0]
            print(f"  {attack}: AUC {r['auc']:.3f} TPR {r['tpr']:.3f} at FPR {r['fpr']:.4f}")

    report = {
        "date": started,
        "machine": machine(),
        "members": len(members.y),
        "nonmembers": len(nonmembers.y),
        "shadows": k,
        "results": results,
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=float))
    args.out.write_text(_markdown(report, args))


def _ci(r: dict[str, Any]) -> str:
    return f"{r['tpr']:.3f} [{r['tpr_lo']:.3f}, {r['tpr_hi']:.3f}]"


def _markdown(rep: dict[str, Any], args: Any) -> str:
    lines = [
        "## Membership inference per subgroup (issue 18 item 3)",
        "",
        f"{rep['date']}; {rep['machine']}; one torch thread; shared machine.",
        f"`.venv/bin/python benchmarks/bench_membership.py --shadows {args.shadows} "
        f"--overfit-epochs {args.overfit_epochs}`",
        "",
        f"Bundled flchain cohort, training split: {rep['members']} members (trained on), "
        f"{rep['nonmembers']} non-members (the keyed validation split, fraction 0.2). "
        "TPR at the FPR that lets 10 non-members through (10 / non-members in the row), "
        "[95 % Clopper–Pearson]; AUC of members against non-members. TPR at 0.1 % FPR is not "
        f"measurable with {rep['nonmembers']} non-members (about one expected false positive). "
        f"Offline LiRA with {rep['shadows']} shadow models (each patient OUT of "
        f"{rep['shadows'] // 2}), trained like the target.",
        "",
        "### Overall",
        "",
        "| model | attack | AUC | FPR | TPR [95 % CI] | target train s | loss attack s | "
        "shadows s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for res in rep["results"]:
        for attack, rows in res["attacks"].items():
            r = rows[0]
            lines.append(
                f"| {res['model']} | {attack} | {r['auc']:.3f} | {r['fpr']:.4f} | {_ci(r)} | "
                f"{res['train_seconds']:.1f} | {res['loss_attack_seconds']:.2f} | "
                f"{res['shadow_seconds']:.1f} |"
            )
    lines += [
        "",
        "### Per subgroup (judged: ≥ 30 members and non-members)",
        "",
        "| model | attack | subgroup | mem/non | AUC | FPR | TPR [95 % CI] |",
        "|---|---|---|---|---|---|---|",
    ]
    for res in rep["results"]:
        for attack, rows in res["attacks"].items():
            for r in rows[1:]:
                lines.append(
                    f"| {res['model']} | {attack} | {r['attribute']}={r['group']} | "
                    f"{r['members']}/{r['nonmembers']} | {r['auc']:.3f} | {r['fpr']:.3f} | "
                    f"{_ci(r)} |"
                )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
