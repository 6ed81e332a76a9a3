"""Benchmarks: speed figures and evaluation protocols. Scripts print tables; tests never assert timings."""
