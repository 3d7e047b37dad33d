"""A learner of your own for fedrl: ``learner.name: "spo_loss:spo"``.

fedrl runs its on-policy loop (rollouts, GAE, epochs of minibatches, and every federated term:
FedProx, SCAFFOLD, partial federation, gradient clipping) around this loss. It is Simple Policy
Optimization (Xie et al., "Simple Policy Optimization", ICML 2025): PPO's clipped surrogate replaced
by ``r A - |A| / (2 epsilon) (r - 1)^2``, a penalty that keeps the probability ratio ``r`` near 1
with a gradient everywhere, where clipping stops the gradient.
"""

import torch


def spo(out, batch, options: dict) -> torch.Tensor:
    """One loss per client ``(C,)``, each a mean over that client's samples.

    ``out.log_prob(actions)``, ``out.entropy()`` and ``out.value`` are the policy being trained on
    ``batch.obs``; ``batch`` holds what the rollout recorded (``actions``, ``logp``, ``values``,
    ``adv``, ``returns``), every field ``(C, N, ...)``; ``options`` is the config's ``learner.options``.
    """
    epsilon = options.get("epsilon", 0.2)
    ratio = torch.exp(out.log_prob(batch.actions) - batch.logp)
    surrogate = ratio * batch.adv - batch.adv.abs() / (2 * epsilon) * (ratio - 1) ** 2
    value_loss = 0.5 * (out.value - batch.returns).pow(2)
    entropy = out.entropy()
    return (-surrogate + options.get("vf_coef", 0.5) * value_loss - options.get("ent_coef", 0.0) * entropy).mean(1)
