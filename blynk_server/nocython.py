"""Stands in for Cython's ``cython`` module where Cython is not installed: the sources run as Python."""

compiled = False
