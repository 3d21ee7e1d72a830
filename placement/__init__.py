"""Pure placement core of chipfit: catalogs, performance model, solver (numpy and scipy only)."""
