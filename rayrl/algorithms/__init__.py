"""Pure maths of RL post-training: advantages, log-probs, losses. No Ray, no actors."""
