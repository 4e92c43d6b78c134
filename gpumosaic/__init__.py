"""gpumosaic."""
