"""Experiment tracking of searches: MLflow runs, Pareto fronts, hypervolume, plots."""
