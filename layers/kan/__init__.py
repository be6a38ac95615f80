"""Kolmogorov-Arnold layers: B-spline KAN (KANLinear), Fourier KAN, GR-KAN feed-forward (KAT), Fourier-KArAt.

`functional` holds the pure math; the modules and registry constructors live one concept per file.
"""
