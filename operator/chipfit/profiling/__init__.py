"""Measure an OpenAI-compatible serving endpoint and turn the measurements into a PerformanceProfile."""
