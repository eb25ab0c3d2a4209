"""The fault-injection suite (issue 6, "Faults and bad input"); see conftest.py for the list."""
