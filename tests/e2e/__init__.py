"""End-to-end tier: tests on the real control plane of e2e/ (marker e2e) and its fleet generator."""
