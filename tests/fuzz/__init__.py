"""Fuzzing: strategies, oracle and harness shared by the slice (test_fuzz.py) and bench/fuzz.py."""
