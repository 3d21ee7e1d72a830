"""The chipfit.io API: pydantic types (v1alpha1) and the CRDs generated from them (crd)."""
