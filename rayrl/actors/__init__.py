"""Ray actors: InferenceActor (replicas), Learner/LearnerGroup, RolloutWorker, and weight publication."""
