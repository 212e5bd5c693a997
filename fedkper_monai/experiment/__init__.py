"""The comparison runner: several algorithms on one prepared partition, seeds, bounds and resumption."""
