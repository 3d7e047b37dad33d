"""The tags of a run's independent random streams.

Every random draw of a run comes from ``np.random.default_rng([seed, TAG, ...])`` (``Setup.rng``),
the tag saying what it is for and the rest saying when (round, shard, client), so the same config
and seed give the same numbers in every runtime, whatever ran before.
"""

SAMPLE_STREAM = 11  # which clients take part in a round
TRAIN_STREAM = 12  # a shard's (or a device's) local training in a round; a client's first episodes
EVAL_STREAM = 13  # evaluation episodes (tag 1 after it: the held-out clients')
PERSONAL_STREAM = 14  # personalisation fine-tuning before evaluation
INIT_STREAM = 15  # the initial global policy
RESUME_STREAM = 16  # fresh episodes on resuming a checkpoint without env state
FLEET_STREAM = 17  # the simulated fleet's speeds, latencies and phases
AVAILABILITY_STREAM = 18  # which simulated clients are away
ATTACK_STREAM = 19  # which simulated clients attack, and their noise
PIPELINE_STREAM = 20  # a client's compression and local DP noise
NOISE_STREAM = 21  # the server's central DP noise for a round
SECAGG_STREAM = 22  # a round's secure-aggregation keys and mask seeds (known to anyone who knows the seed)
ADAPT_STREAM = 23  # held-out clients' local adaptation before they are evaluated (eval.adapt_steps)
