"""Search engines: who proposes the next plan and keeps the study's state (Optuna now, Ray next)."""
