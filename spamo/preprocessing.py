"""Per-data-type preprocessing into model-ready features (model.md section 1). Recipes register on the data types."""
