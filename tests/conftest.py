"""Fixtures shared by the whole test tree."""
