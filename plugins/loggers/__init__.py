"""Logger plugins: what a run logs (metrics, histograms, sample grids) sent to other tools."""
