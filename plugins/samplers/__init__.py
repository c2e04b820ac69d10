"""Sampler plugins: chain initialisers and transitions (the SGLD family, MCMC, JEM++, informative starts)."""
