"""The simulation engine: a whole federation on one machine, vectorized over clients."""
