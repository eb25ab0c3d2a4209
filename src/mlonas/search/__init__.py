"""Architecture search = a base (supernet + schedule + derivation) x an order x a scheme."""
