"""Metrics: accuracy scores and the statistics used to summarize benchmark measurements."""
