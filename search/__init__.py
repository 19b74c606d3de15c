"""Hyper-parameter search for SPAMO: Ray Tune runs the trials, Optuna samples the configurations."""
