"""Plan (pure) and execution of experiments."""
