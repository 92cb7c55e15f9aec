"""Tests of the per-op numerics (hwsim/ops/<op>.py)."""
