#!/usr/bin/env python3
"""stageloop's GRPO objectives against TRL's and verl's own functions on the same inputs.

Random but fixed inputs (log-probabilities, old and reference log-probabilities, advantages,
masks with ragged lengths, entropies) go through

- TRL 1.16's GRPOTrainer._compute_loss (called on a stand-in trainer: the fixed inputs replace
  the model's forward pass), for loss_type grpo / dr_grpo / dapo / cispo, importance sampling
  at token and sequence level (GSPO), beta > 0 (k3), top_entropy_quantile and entropy_coef;
- verl's core_algos: compute_grpo_passk_outcome_advantage (pass@k advantages),
  compute_policy_loss_gspo (its value), kl_penalty ("kl" = k1, "mse" = k2, "low_var_kl" = k3);

and through `stageloop bench objectives` (the training code's tensor loss). Every value must
agree to 1e-5 (relative, f32 arithmetic on stageloop's side).

    python3 benches/objectives_check.py [--stageloop target/release/stageloop]

Needs torch and trl; verl's checks run when `import verl` works (pip install --no-deps verl,
plus ray, tensordict, omegaconf, codetiming).
"""

import argparse
import collections
import json
import os
import subprocess
import sys
import types

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
B, T = 6, 7


def inputs(seed):
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(2, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None, :] < lens[:, None]).float()
    logp = -torch.rand(B, T, generator=g, dtype=torch.float64) * 2 - 0.05
    old = logp + (torch.rand(B, T, generator=g, dtype=torch.float64) - 0.5) * 0.8
    ref = -torch.rand(B, T, generator=g, dtype=torch.float64) * 2 - 0.05
    adv = (torch.rand(B, generator=g, dtype=torch.float64) - 0.5) * 3
    ent = torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    return logp, old, ref, adv, mask, ent


class Stub:
    """What GRPOTrainer._compute_loss reads of its trainer, on one process."""

    def __init__(self, case, logp, ent):
        self.loss_type = case["loss_type"]
        self.importance_sampling_level = case["importance_sampling_level"]
        self.epsilon_low = case["epsilon"]
        self.epsilon_high = case["epsilon_high"]
        self.beta = case["beta"]
        self.top_entropy_quantile = case["top_entropy_quantile"]
        self.entropy_coef = case["entropy_coef"]
        self._entropy_bonus_enabled = case["entropy_coef"] > 0
        self.use_adaptive_entropy = False
        self.off_policy_mask_threshold = None
        self.use_vllm = False
        self.vllm_importance_sampling_correction = False
        self.aux_loss_enabled = False
        self.max_completion_length = case["budget"]
        self.current_gradient_accumulation_steps = 1
        self.model = types.SimpleNamespace(training=True)
        self.args = types.SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1)
        self.accelerator = types.SimpleNamespace(
            num_processes=1, sync_gradients=True, gather=lambda x: x, reduce=lambda x, reduction=None: x,
            pad_across_processes=lambda x, dim=0, pad_index=0: x)
        self._metrics = collections.defaultdict(lambda: collections.defaultdict(list))
        self._logp, self._ent = logp, ent

    def _get_per_token_logps_and_entropies(self, *a, **k):
        return self._logp, self._ent, None

    def get_high_entropy_mask(self, *a):
        from trl import GRPOTrainer
        return GRPOTrainer.get_high_entropy_mask(self, *a)


def trl_loss(case, logp, old, ref, adv, mask, ent):
    from trl import GRPOTrainer
    stub = Stub(case, logp, ent)
    ins = {
        "prompt_ids": torch.zeros(B, 0, dtype=torch.long), "prompt_mask": torch.zeros(B, 0, dtype=torch.long),
        "completion_ids": torch.zeros(B, T, dtype=torch.long), "completion_mask": mask,
        "advantages": adv, "old_per_token_logps": old, "ref_per_token_logps": ref,
        "num_items_in_batch": mask.sum(),
    }
    return float(GRPOTrainer._compute_loss(stub, None, ins))


def tolist(x):
    return x.tolist()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stageloop", default=os.path.join(ROOT, "target", "release", "stageloop"))
    args = ap.parse_args()

    cases, tensors = [], []
    seed = 0
    for loss_type in ["grpo", "dr_grpo", "dapo", "cispo"]:
        for level in ["token", "sequence"]:
            for beta, q, coef in [(0.0, 1.0, 0.0), (0.04, 1.0, 0.0), (0.0, 0.4, 0.0), (0.0, 1.0, 0.02), (0.04, 0.3, 0.01)]:
                seed += 1
                logp, old, ref, adv, mask, ent = inputs(seed)
                case = {"loss_type": loss_type, "importance_sampling_level": level,
                        "epsilon": 0.2, "epsilon_high": 5.0 if loss_type == "cispo" else 0.28,
                        "beta": beta, "kl_estimator": "k3", "top_entropy_quantile": q,
                        "entropy_coef": coef, "budget": T + 2}
                cases.append(case)
                tensors.append((logp, old, ref, adv, mask, ent))
    losses = []
    for case, (logp, old, ref, adv, mask, ent) in zip(cases, tensors):
        c = dict(case, logp=tolist(logp), old_logp=tolist(old), ref_logp=tolist(ref) if case["beta"] else None,
                 adv=tolist(adv), mask=tolist(mask), entropy=tolist(ent))
        losses.append(c)

    g = torch.Generator().manual_seed(99)
    adv_cases = []
    for scale in ["group", "none"]:
        rewards = (torch.rand(4 * 8, generator=g, dtype=torch.float64) > 0.6).double() + torch.rand(4 * 8, generator=g, dtype=torch.float64) * 0.1
        adv_cases.append({"rewards": rewards.tolist(), "group_size": 8, "adv_estimator": "grpo_passk", "scale_rewards": scale})
    kl_lp = (-torch.rand(20, generator=g, dtype=torch.float64) * 2).tolist()
    kl_ref = (-torch.rand(20, generator=g, dtype=torch.float64) * 2).tolist()
    kl_cases = [{"logp": kl_lp, "ref_logp": kl_ref, "kl_estimator": e} for e in ["k1", "k2", "k3"]]

    out = subprocess.run([args.stageloop, "bench", "objectives"], capture_output=True, text=True,
                         input=json.dumps({"losses": losses, "advantages": adv_cases, "kl": kl_cases}))
    if out.returncode != 0:
        sys.exit(out.stderr)
    ours = json.loads(out.stdout)

    worst, rows = 0.0, []
    for case, t, got in zip(cases, tensors, ours["losses"]):
        want = trl_loss(case, *t)
        rel = abs(got - want) / max(1e-3, abs(want))
        worst = max(worst, rel)
        rows.append((f"TRL {case['loss_type']:7} {case['importance_sampling_level']:8} beta={case['beta']:<4} "
                     f"top_entropy={case['top_entropy_quantile']:<3} entropy_coef={case['entropy_coef']}", want, got, rel))

    try:
        import numpy as np
        import verl.trainer.ppo.core_algos as ca
        from verl.workers.config import ActorConfig
    except Exception as e:  # noqa: BLE001
        print(f"verl not importable ({type(e).__name__}: {e}); its checks are skipped")
        ca = None
    if ca is not None:
        for a, got in zip(adv_cases, ours["advantages"]):
            r = torch.tensor(a["rewards"], dtype=torch.float64)
            idx = np.repeat(np.arange(len(r) // 8), 8)
            want, _ = ca.compute_grpo_passk_outcome_advantage(
                r[:, None], torch.ones(len(r), 1, dtype=torch.float64), idx,
                config={"norm_adv_by_std_in_grpo": a["scale_rewards"] != "none"})
            d = max(abs(x - y) / max(1e-3, abs(x)) for x, y in zip(want[:, 0].tolist(), got))
            worst = max(worst, d)
            rows.append((f"verl grpo_passk advantages, scale_rewards={a['scale_rewards']}", want.abs().sum().item(), sum(map(abs, got)), d))
        for k, got in zip(kl_cases, ours["kl"]):
            name = {"k1": "kl", "k2": "mse", "k3": "low_var_kl"}[k["kl_estimator"]]
            want = ca.kl_penalty(torch.tensor(k["logp"], dtype=torch.float64),
                                 torch.tensor(k["ref_logp"], dtype=torch.float64), name).tolist()
            d = max(abs(x - y) / max(1e-3, abs(x)) for x, y in zip(want, got))
            worst = max(worst, d)
            rows.append((f"verl kl_penalty {name} ({k['kl_estimator']})", sum(want), sum(got), d))
        # GSPO's value: verl's token-mean over the batch equals the sequence-level ratio with
        # the dapo normaliser (their gradients differ by design: GSPO-token).
        for case, (logp, old, ref, adv, mask, ent), got in zip(cases, tensors, ours["losses"]):
            if case["loss_type"] != "dapo" or case["importance_sampling_level"] != "sequence" or case["beta"] or case["top_entropy_quantile"] < 1 or case["entropy_coef"]:
                continue
            cfg = ActorConfig(clip_ratio_low=0.2, clip_ratio_high=0.28, strategy="fsdp", ppo_mini_batch_size=1,
                              ppo_micro_batch_size_per_gpu=1, use_dynamic_bsz=False, rollout_n=1)
            try:
                want, _ = ca.compute_policy_loss_gspo(old, logp, adv[:, None].expand(B, T), mask, "token-mean", cfg)
            except Exception as e:  # noqa: BLE001
                print(f"verl GSPO skipped ({type(e).__name__}: {e})")
                break
            d = abs(float(want) - got) / max(1e-3, abs(float(want)))
            worst = max(worst, d)
            rows.append(("verl compute_policy_loss_gspo (token-mean)", float(want), got, d))
    for name, want, got, rel in rows:
        print(f"{name:75} peer {want:+.6f}  stageloop {got:+.6f}  rel.diff {rel:.1e}")
    print(f"{len(rows)} checks, worst relative difference {worst:.1e}")
    sys.exit(0 if worst < 1e-5 else 1)


if __name__ == "__main__":
    main()
