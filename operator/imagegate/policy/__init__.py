"""Policies: the resource models, their compilation, and the pure decision engine."""
