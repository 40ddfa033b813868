"""Budgeted multi-objective search over compression plans (``python -m search.run``)."""
