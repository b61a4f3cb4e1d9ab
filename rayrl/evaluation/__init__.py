"""Evaluation of checkpoints on held-out data: statistics (``stats``, pure functions), running a model
directory on the cluster (``runner.evaluate_model``), the files of ``rayrl eval`` (``report``) and the
promotion gate (``gate``)."""
