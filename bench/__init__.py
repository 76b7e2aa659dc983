"""Cleave's benchmarks, side by side with what users would pick instead. See README.md."""
