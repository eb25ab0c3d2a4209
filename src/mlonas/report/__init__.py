"""Reporting: result tables, figures and audits rebuilt from versioned artifacts.

Submodules are imported explicitly (``from mlonas.report import tables``) so that
importing the package does not pull in every reporting dependency (matplotlib, ...)
at once.
"""
