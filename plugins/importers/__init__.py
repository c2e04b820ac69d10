"""Importer plugins: checkpoints of other JEM code bases turned into jemkit run directories."""
