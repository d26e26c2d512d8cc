"""Efficiency measurements: time, throughput and memory against sequence length."""

from ssmlab.bench.efficiency import Measurement, crossover, measure, scaling_exponent, store_measurements, summarise

__all__ = ["Measurement", "crossover", "measure", "scaling_exponent", "store_measurements", "summarise"]
