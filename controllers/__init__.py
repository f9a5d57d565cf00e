"""Decide and act: the power-capping controller and its safety rules."""
